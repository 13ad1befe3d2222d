"""libc calls the Python 3.11 stdlib lacks: unshare, setns, mount, umount2, pivot_root, close_range.

All go through one ``ctypes.CDLL`` loaded at import time: after ``pivot_root`` the host's libc path is
gone, so nothing here may load a library lazily. Errors raise ``OSError`` with errno.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

CLONE_NEWNS = 0x00020000  # linux/sched.h
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1  # linux/mount.h
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_SLAVE = 1 << 19
MNT_DETACH = 2
CLOSE_RANGE_UNSHARE = 1 << 1  # linux/close_range.h
SYS_PIVOT_ROOT = 155  # x86_64 syscall numbers
SYS_CLOSE_RANGE = 436

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    def enc(value: str | None) -> bytes | None:
        return None if value is None else os.fsencode(value)

    result = _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), None)
    _check(result, f"mount {target}")


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(os.fsencode(target), ctypes.c_int(flags)), f"umount2 {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    result = _libc.syscall(ctypes.c_long(SYS_PIVOT_ROOT), os.fsencode(new_root), os.fsencode(put_old))
    _check(result, "pivot_root")


def close_range_unshare(first: int) -> None:
    """Close every fd >= first (``close_range(first, ~0U, CLOSE_RANGE_UNSHARE)``; kernel >= 5.9)."""
    result = _libc.syscall(
        ctypes.c_long(SYS_CLOSE_RANGE),
        ctypes.c_uint(first),
        ctypes.c_uint(0xFFFFFFFF),
        ctypes.c_uint(CLOSE_RANGE_UNSHARE),
    )
    if result != 0:  # older kernel: close them one by one
        os.closerange(first, os.sysconf("SC_OPEN_MAX"))


__all__ = ["unshare", "setns", "mount", "umount2", "pivot_root", "close_range_unshare"]
