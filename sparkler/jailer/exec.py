"""The last steps: daemonize, new PID namespace, pid file, uid/gid drop, exec.

* ``--daemonize``: fork (parent exits 0), ``setsid``, fork again (the session leader exits 0), then
  ``/dev/null`` (opened before pivot_root) is dup'ed onto fds 0, 1, 2.
* ``--new-pid-ns``: ``unshare(CLONE_NEWPID)`` then ``fork``: the kernel puts the *next* child of the
  caller in the new namespace, as its PID 1 (Firecracker uses a raw ``clone(CLONE_NEWPID)``). The
  parent writes the child's host pid to ``/<exec-name>.pid`` (``O_EXCL``) and exits 0; the child
  calls ``setsid`` if the jailer was a session leader (so the jailer's exit does not SIGHUP it).
  Without it the jailer writes its own pid and execs in place.
* exec: ``setgroups([])``, ``setgid``, ``setuid``, then ``execve`` of ``/<exec-name>`` with an empty
  environment and stdio inherited.
"""

from __future__ import annotations

import os
import time

from sparkler.jailer import JailerError
from sparkler.jailer import namespaces as ns


def cpu_time_us() -> int:
    return time.clock_gettime_ns(time.CLOCK_PROCESS_CPUTIME_ID) // 1000


def daemonize(dev_null: int) -> int:
    """Double fork + setsid; returns the CPU µs spent by the intermediate (exiting) process.

    (A forked child's process CPU clock starts at 0, so the caller adds this to what it measured
    before calling, as Firecracker accumulates the CPU time of each stage.)
    """
    if os.fork() != 0:
        os._exit(0)
    try:
        os.setsid()
    except OSError as e:
        raise JailerError(f"Failed to daemonize: setsid: {e}") from e
    spent = cpu_time_us()
    if os.fork() != 0:
        os._exit(0)
    try:
        for fd in (0, 1, 2):
            os.dup2(dev_null, fd)
        os.close(dev_null)
    except OSError as e:
        raise JailerError(f"Failed to duplicate fd: {e}") from e
    return spent


def write_pid_file(path: str, pid: int) -> None:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise JailerError(f"Failed to write to {path}: {e}") from e


def enter_new_pid_ns(pid_file: str) -> None:
    """Fork into a new PID namespace; only the child (PID 1 there) returns."""
    session_leader = os.getsid(0) == os.getpid()
    try:
        ns.unshare(ns.CLONE_NEWPID)
        child = os.fork()
    except OSError as e:
        raise JailerError(f"Failed cloning into a new child process: {e}") from e
    if child == 0:
        if session_leader:
            os.setsid()
        return
    write_pid_file(pid_file, child)
    os._exit(0)


def drop_and_exec(path: str, argv: list[str], uid: int, gid: int) -> None:
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        os.execve(path, argv, {})
    except OSError as e:
        raise JailerError(f"Failed to exec into Firecracker: {e}") from e


__all__ = ["cpu_time_us", "daemonize", "write_pid_file", "enter_new_pid_ns", "drop_and_exec"]
