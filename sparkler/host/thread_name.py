"""Kernel-visible thread names (``/proc/<pid>/task/<tid>/comm``), as Firecracker's threads have.

Python 3.11's ``threading.Thread(name=...)`` does not reach the kernel, so each Sparkler thread calls
``prctl_set_name`` first thing (``PR_SET_NAME``; the kernel keeps at most 15 bytes plus a NUL and
silently truncates longer names). ``current_name`` is what the logger prints as ``<thread>``: it is
read once per thread (``/proc/thread-self/comm``, no ctypes) and cached; ``prctl_set_name`` refreshes
the cache of the calling thread.
"""

from __future__ import annotations

import threading
from typing import Any

PR_SET_NAME = 15  # linux/prctl.h
PR_GET_NAME = 16
TASK_COMM_LEN = 16  # including the terminating NUL

_cache = threading.local()
_libc: Any = None


def _prctl() -> Any:
    global _libc
    if _libc is None:
        import ctypes

        # The process's own symbols include libc's; ctypes.util.find_library costs 5-18 ms of start-up.
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc.prctl


def prctl_set_name(name: str) -> None:
    """Set the calling thread's kernel name (truncated to 15 bytes, at a UTF-8 boundary)."""
    raw = name.encode()[: TASK_COMM_LEN - 1]
    while raw:
        try:
            raw.decode()
            break
        except UnicodeDecodeError:
            raw = raw[:-1]
    import ctypes

    if _prctl()(PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NAME, {name!r}) failed")
    _cache.name = raw.decode()


def kernel_name() -> str:
    """The calling thread's kernel name, read from /proc (not cached)."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode(errors="replace")
    except OSError:
        return ""


def current_name() -> str:
    """The calling thread's kernel name, cached per thread."""
    try:
        return _cache.name  # type: ignore[no-any-return]
    except AttributeError:
        name = _cache.name = kernel_name()
        return name


__all__ = ["prctl_set_name", "kernel_name", "current_name"]
