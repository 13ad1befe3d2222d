"""vCPU threads: one OS thread per vCPU, named ``fc_vcpu N``, looping on KVM_RUN.

State machine (one method per state)::

    Created --start()--> Running --pause()--> Paused --resume()--> Running
       Running/Paused --exit()--> Exited (thread ends)

A vCPU leaves KVM_RUN when the guest exits to us (port or MMIO access, reset, failure) or when it
is *kicked*: ``immediate_exit`` is set in ``kvm_run`` and the thread is sent a signal, so a
``KVM_RUN`` in progress returns EINTR and one about to start returns at once. After each
interruption the thread looks at the command it was kicked for.

Exits are decoded once by :mod:`sparkler.kvm.exits` into typed values and dispatched through a
table from exit type to handler; a handler returns ``None`` to continue or an exit code to stop
the whole machine.
"""

from __future__ import annotations

import enum
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sparkler import logger as log
from sparkler.host.thread_name import prctl_set_name
from sparkler.kvm import exits, uapi
from sparkler.seccomp.install import install_thread_filter
from sparkler.vmm.bus import Bus

# Signal used to kick a vCPU out of KVM_RUN. Firecracker uses SIGRTMIN; any signal works as long as
# a (no-op) handler is installed, which install_kick_handler() does from the main thread.
KICK_SIGNAL = signal.SIGRTMIN

EXIT_OK = 0
EXIT_ERROR = 1

# Value read from a port no device claims: an absent ISA device floats its data lines high.
UNCLAIMED_PIO_BYTE = 0xFF


def install_kick_handler() -> None:
    """Install the no-op handler for the kick signal. Must run on the main thread."""
    signal.signal(KICK_SIGNAL, lambda _signum, _frame: None)


class VcpuState(enum.Enum):
    CREATED = "Created"
    RUNNING = "Running"
    PAUSED = "Paused"
    EXITED = "Exited"


@dataclass
class VcpuStatistics:
    exits: int = 0
    pio_exits: int = 0
    mmio_exits: int = 0
    kicks: int = 0
    failures: int = 0
    reflected: int = 0  # INT3 / INT n reflected into the guest (PVM compatibility mode)


class Vcpu:
    """One vCPU: its fd, the buses its exits go to, and the thread that runs it."""

    def __init__(
        self,
        index: int,
        fd: object,
        pio_bus: Bus,
        mmio_bus: Bus,
        on_exit: Callable[[int, str], None],
        reflect_soft_interrupt: Callable[[], object] | None = None,
    ) -> None:
        """``reflect_soft_interrupt`` (PVM compatibility mode only) is tried on every emulation
        failure: it injects the INT3/INT n at RIP into the guest, or raises saying why not."""
        self.index = index
        self._reflect = reflect_soft_interrupt
        self.fd = fd
        self._pio = pio_bus
        self._mmio = mmio_bus
        self._on_exit = on_exit
        self.stats = VcpuStatistics()
        self.state = VcpuState.CREATED
        self._cond = threading.Condition()
        self._want: VcpuState = VcpuState.RUNNING
        self._thread: threading.Thread | None = None
        self._handlers: dict[type, Callable[[object], int | None]] = {
            exits.IoOut: self._io_out,
            exits.IoIn: self._io_in,
            exits.MmioWrite: self._mmio_write,
            exits.MmioRead: self._mmio_read,
            exits.Interrupted: self._interrupted,
            exits.Hlt: self._hlt,
            exits.Shutdown: self._shutdown,
            exits.SystemEvent: self._system_event,
            exits.InternalError: self._internal_error,
            exits.FailEntry: self._fail_entry,
            exits.Unknown: self._unknown,
        }

    # --- control, called from other threads ---------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name=f"fc_vcpu {self.index}", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        """Ask the vCPU to pause; returns once it is parked (or has exited)."""
        with self._cond:
            if self.state is VcpuState.EXITED:
                return
            self._want = VcpuState.PAUSED
        self._kick()
        with self._cond:
            self._cond.wait_for(lambda: self.state in (VcpuState.PAUSED, VcpuState.EXITED), timeout=5.0)

    def resume(self) -> None:
        with self._cond:
            if self._want is VcpuState.PAUSED:
                self._want = VcpuState.RUNNING
                self._cond.notify_all()

    def exit(self) -> None:
        """Ask the thread to end; returns once it has (or after a grace period)."""
        with self._cond:
            self._want = VcpuState.EXITED
            self._cond.notify_all()
        self._kick()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def _kick(self) -> None:
        thread = self._thread
        if thread is None or thread.ident is None or not thread.is_alive():
            return
        self.stats.kicks += 1
        self.fd.set_immediate_exit(True)  # type: ignore[attr-defined]
        try:
            signal.pthread_kill(thread.ident, KICK_SIGNAL)
        except ProcessLookupError:
            pass

    # --- the thread ------------------------------------------------------------------------------
    def _main(self) -> None:
        prctl_set_name(f"fc_vcpu {self.index}")
        with self._cond:
            self.state = VcpuState.RUNNING
        code, reason = EXIT_OK, ""
        try:
            # The vcpu filter before the first KVM_RUN (a no-op unless the process configured seccomp).
            install_thread_filter("vcpu")
            code, reason = self._run()
        except Exception as e:  # noqa: BLE001 - any escape here must stop the VM, not hang it
            code, reason = EXIT_ERROR, f"vCPU {self.index} failed: {e!r}"
        finally:
            with self._cond:
                self.state = VcpuState.EXITED
                self._cond.notify_all()
        if self._want is not VcpuState.EXITED:
            self._on_exit(code, reason)

    def _run(self) -> tuple[int, str]:
        fd = self.fd
        handlers = self._handlers
        while True:
            want = self._want
            if want is not VcpuState.RUNNING:
                if want is VcpuState.EXITED:
                    return EXIT_OK, ""
                self._park()
                continue
            try:
                exit_value = fd.run()  # type: ignore[attr-defined]
            except BlockingIOError:
                # An application processor woken by INIT/SIPI returns EAGAIN once: run it again.
                continue
            self.stats.exits += 1
            result = handlers[type(exit_value)](exit_value)
            if result is not None:
                return result, self._last_reason

    def _park(self) -> None:
        with self._cond:
            self.state = VcpuState.PAUSED
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._want is not VcpuState.PAUSED)
            if self._want is VcpuState.RUNNING:
                self.state = VcpuState.RUNNING

    # --- exit handlers -------------------------------------------------------------------------
    _last_reason = ""

    def _stop(self, code: int, reason: str) -> int:
        self._last_reason = reason
        return code

    def _io_out(self, e: exits.IoOut) -> None:  # type: ignore[override]
        self.stats.pio_exits += 1
        size = e.size
        data = e.data
        for i in range(0, size * e.count, size):
            self._pio.write(e.port, data[i : i + size])

    def _io_in(self, e: exits.IoIn) -> None:  # type: ignore[override]
        self.stats.pio_exits += 1
        size = e.size
        buf = e.buf
        for i in range(0, size * e.count, size):
            chunk = buf[i : i + size]
            if not self._pio.read(e.port, chunk):
                chunk[:] = bytes([UNCLAIMED_PIO_BYTE]) * size

    def _mmio_write(self, e: exits.MmioWrite) -> None:  # type: ignore[override]
        self.stats.mmio_exits += 1
        self._mmio.write(e.addr, e.data)

    def _mmio_read(self, e: exits.MmioRead) -> None:  # type: ignore[override]
        self.stats.mmio_exits += 1
        if not self._mmio.read(e.addr, e.buf):
            e.buf[:] = bytes(len(e.buf))  # unclaimed MMIO reads as zeros (and never stale kvm_run bytes)

    def _interrupted(self, _e: object) -> None:
        self.fd.set_immediate_exit(False)  # type: ignore[attr-defined]

    def _hlt(self, _e: object) -> int:
        log.info(f"Received KVM_EXIT_HLT signal on vCPU {self.index}")
        return self._stop(EXIT_OK, "guest halted")

    def _shutdown(self, _e: object) -> int:
        self.stats.failures += 1
        return self._stop(EXIT_ERROR, f"vCPU {self.index}: KVM_EXIT_SHUTDOWN (triple fault)")

    def _system_event(self, e: exits.SystemEvent) -> int:  # type: ignore[override]
        return self._stop(EXIT_OK, f"vCPU {self.index}: guest requested system event {e.type}")

    def _internal_error(self, e: exits.InternalError) -> int | None:  # type: ignore[override]
        refused = ""
        if self._reflect is not None and e.suberror == uapi.KVM_INTERNAL_ERROR_EMULATION:
            try:
                soft = self._reflect()
            except Exception as exc:  # noqa: BLE001 - ReflectRefused or a KVM error: report, stop
                refused = f" (not reflected: {exc})"
            else:
                self.stats.reflected += 1
                log.debug(f"vCPU {self.index}: PVM compatibility: {soft.describe()}")  # type: ignore[attr-defined]
                return None
        self.stats.failures += 1
        insn = e.insn.hex(" ") if e.insn else "none"
        regs = ""
        try:
            r = self.fd.get_regs()  # type: ignore[attr-defined]
            regs = f" rip={r.rip:#x}"
        except Exception:  # noqa: BLE001 - diagnostics only
            pass
        return self._stop(
            EXIT_ERROR,
            f"vCPU {self.index}: KVM_EXIT_INTERNAL_ERROR suberror={e.suberror}{regs} instruction bytes: {insn}"
            f"{refused}",
        )

    def _fail_entry(self, e: exits.FailEntry) -> int:  # type: ignore[override]
        self.stats.failures += 1
        return self._stop(EXIT_ERROR, f"vCPU {self.index}: KVM_EXIT_FAIL_ENTRY reason={e.reason:#x}")

    def _unknown(self, e: exits.Unknown) -> int:  # type: ignore[override]
        self.stats.failures += 1
        return self._stop(EXIT_ERROR, f"vCPU {self.index}: unexpected KVM exit reason {e.reason}")
