"""The one ioctl entry point: libc ``ioctl`` through ctypes.

Why not ``fcntl.ioctl``: it passes integer arguments as a signed C int (KVM_SET_TSS_ADDR takes
0xfffbd000), it holds the GIL for buffers over 1024 bytes (KVM_GET_SUPPORTED_CPUID) and it is slower
for integer arguments. ctypes releases the GIL around every foreign call, so KVM_RUN blocks only
its own thread.
"""

from __future__ import annotations

import ctypes
import os

from sparkler.errors import KvmError
from sparkler.kvm.uapi import IOCTL_NAMES

_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
_ioctl.restype = ctypes.c_int


def ioctl_raw(fd: int, request: int, arg: int = 0) -> int:
    """ioctl returning the result, or raising OSError with the errno."""
    result = _ioctl(fd, request, arg)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def ioctl(fd: int, request: int, arg: int | ctypes._CData | None = None) -> int:  # type: ignore[name-defined]
    """ioctl with an integer argument or a pointer to a ctypes object; failures raise KvmError."""
    if arg is None:
        value = 0
    elif isinstance(arg, int):
        value = arg
    else:
        value = ctypes.addressof(arg)
    try:
        return ioctl_raw(fd, request, value)
    except OSError as e:
        name = IOCTL_NAMES.get(request, hex(request))
        raise KvmError(f"{name} failed: {e.strerror}") from e
