"""Firecracker's signal handlers (catalog section 10.4). Stdlib + ctypes only.

==========  =========  ==========================================================
signal      exit code  what happens
==========  =========  ==========================================================
SIGSYS      148        seccomp violation: ``seccomp.num_faults = 1``
SIGBUS      149        ``signals.sigbus = 1``
SIGSEGV     150        ``signals.sigsegv = 1``
SIGXFSZ     151        ``signals.sigxfsz = 1``
SIGXCPU     154        ``signals.sigxcpu = 1``
SIGHUP      156        ``signals.sighup = 1``
SIGILL      157        ``signals.sigill = 1``
SIGPIPE     (none)     ``signals.sigpipe += 1``; the process continues (writers get EPIPE)
==========  =========  ==========================================================

A fatal handler logs ``Shutting down VM after intercepting signal <n>, code <si_code>.`` (Error),
stores its metric, flushes the metrics and ends the process with ``os._exit(code)`` (no clean-up, as
Firecracker's ``_exit``). SIGPIPE logs ``Received signal 13, code <si_code>.`` and counts.

Limitations of a Python VMM (documented on purpose):

* Python's ``signal`` module runs handlers on the **main thread**, between bytecodes, and gives
  no ``siginfo_t``: the logged ``code`` is always 0 (``SI_USER``, right for ``kill(1)``), and the
  SIGSYS handler cannot read the offending syscall number from it. Instead it asks
  ``find_bad_syscall`` (the seccomp module's reader of the kernel audit record that every trapped
  syscall leaves, see ``sparkler.seccomp.install``) and logs Firecracker's
  ``Shutting down VM after intercepting a bad syscall (<nr>).`` plus the syscall's name and thread;
  when the record cannot be read (no CAP_SYSLOG, inside a jail) it logs where to look instead.
* SIGSEGV, SIGBUS and SIGILL raised by a real fault (a bad pointer in ctypes) cannot be handled in
  Python: the C-level handler only sets a flag and returns to the faulting instruction, which would
  fault again forever. So these three are installed with ``SA_RESETHAND`` (set through ``sigaction``
  via ctypes on top of Python's handler): a signal sent with ``kill(1)`` runs the Python handler
  (exit 149/150/157 like Firecracker), while a real fault re-faults with the default action and the
  process dies by the signal (a core dump), instead of hanging.
* The handlers run when the main thread next executes Python code. A process-directed signal is
  delivered to *any* thread (often a vCPU or the API thread), which does not interrupt the main
  thread's ``epoll_wait``. So ``install`` also sets ``signal.set_wakeup_fd``: the C-level handler
  writes the signal number to a pipe whose read end (:func:`wakeup_fd`) every main-thread event loop
  selects on, with :func:`drain_wakeup` as the callback; the Python handlers then run at once.

``install(metrics, log)`` must be called on the main thread (``signal.signal`` requires it).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

EXIT_BAD_SYSCALL = 148

# signal -> (exit code, metrics group, key)
FATAL_SIGNALS: dict[int, tuple[int, str, str]] = {
    signal.SIGSYS: (EXIT_BAD_SYSCALL, "seccomp", "num_faults"),
    signal.SIGBUS: (149, "signals", "sigbus"),
    signal.SIGSEGV: (150, "signals", "sigsegv"),
    signal.SIGXFSZ: (151, "signals", "sigxfsz"),
    signal.SIGXCPU: (154, "signals", "sigxcpu"),
    signal.SIGHUP: (156, "signals", "sighup"),
    signal.SIGILL: (157, "signals", "sigill"),
}
SYNCHRONOUS_FAULTS = (signal.SIGBUS, signal.SIGSEGV, signal.SIGILL)
SI_USER = 0
SA_RESETHAND = 0x80000000


class SignalHandlers:
    """The installed handlers; ``exit_fn`` is ``os._exit`` in production (replaceable in tests)."""

    def __init__(
        self,
        metrics: Any,
        log_error: Callable[[str], None],
        log_info: Callable[[str], None] | None = None,
        exit_fn: Callable[[int], Any] = os._exit,
        find_bad_syscall: Callable[[], Any] | None = None,
    ) -> None:
        self.metrics = metrics
        self.log_error = log_error
        self.log_info = log_info or log_error
        self.exit_fn = exit_fn
        # () -> an object with ``nr`` and ``describe()`` (sparkler.seccomp.install.find_bad_syscall), or None
        self.find_bad_syscall = find_bad_syscall

    def on_fatal(self, signum: int, _frame: object = None) -> None:
        code, group, key = FATAL_SIGNALS[signum]
        try:
            self.metrics.store(group, key, 1)
            self.log_error(f"Shutting down VM after intercepting signal {signum}, code {SI_USER}.")
            if signum == signal.SIGSYS:
                self._log_bad_syscall()
            self.metrics.flush_for_signal()
        finally:
            self.exit_fn(code)

    def _log_bad_syscall(self) -> None:
        found = None
        if self.find_bad_syscall is not None:
            try:
                found = self.find_bad_syscall()
            except Exception:  # noqa: BLE001 - diagnostics only: the process exits either way
                found = None
        if found is not None:
            self.log_error(f"Shutting down VM after intercepting a bad syscall ({found.nr}).")
            self.log_error(f"The bad syscall was {found.describe()} (from the kernel audit log).")
        else:
            self.log_error("Shutting down VM after intercepting a bad syscall.")
            self.log_error(
                "The kernel audit log names it: dmesg | grep 'type=1326' (syscall=<nr>, comm=<thread>); "
                "or rerun under strace -f."
            )

    def on_sigpipe(self, signum: int, _frame: object = None) -> None:
        self.metrics.inc("signals", "sigpipe")
        self.log_info(f"Received signal {signum}, code {SI_USER}.")


def install(
    metrics: Any,
    log_error: Callable[[str], None],
    log_info: Callable[[str], None] | None = None,
    *,
    exit_fn: Callable[[int], Any] = os._exit,
    find_bad_syscall: Callable[[], Any] | None = None,
) -> SignalHandlers:
    """Install Firecracker's handlers for the whole process (call on the main thread)."""
    handlers = SignalHandlers(metrics, log_error, log_info, exit_fn, find_bad_syscall)
    global _wakeup_r
    if _wakeup_r is None:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        _wakeup_r = r
    for signum in FATAL_SIGNALS:
        signal.signal(signum, handlers.on_fatal)
    signal.signal(signal.SIGPIPE, handlers.on_sigpipe)
    for signum in SYNCHRONOUS_FAULTS:
        _add_resethand(signum)
    return handlers


_wakeup_r: int | None = None


def wakeup_fd() -> int | None:
    """Readable when a signal arrived (on any thread); None before :func:`install`."""
    return _wakeup_r


def drain_wakeup() -> None:
    """Event-loop callback for :func:`wakeup_fd`: empty the pipe (the handlers run by themselves)."""
    if _wakeup_r is None:
        return
    try:
        while os.read(_wakeup_r, 512):
            pass
    except BlockingIOError:
        pass


def _add_resethand(signum: int) -> None:
    """Add SA_RESETHAND to the current disposition (best effort; see the module docstring)."""
    try:
        import ctypes

        class sigaction_t(ctypes.Structure):  # glibc x86_64 ``struct sigaction``
            _fields_ = [
                ("sa_handler", ctypes.c_void_p),
                ("sa_mask", ctypes.c_ulong * 16),
                ("sa_flags", ctypes.c_uint),
                ("sa_restorer", ctypes.c_void_p),
            ]

        libc = ctypes.CDLL(None, use_errno=True)
        current = sigaction_t()
        if libc.sigaction(signum, None, ctypes.byref(current)) != 0:
            return
        current.sa_flags |= SA_RESETHAND
        libc.sigaction(signum, ctypes.byref(current), None)
    except (OSError, AttributeError):
        pass


__all__ = ["FATAL_SIGNALS", "SignalHandlers", "drain_wakeup", "install", "wakeup_fd"]
