"""Machine: a built microVM (Firecracker's ``Vmm``).

It owns the VM fd, guest memory, the vCPUs, the buses and the devices, and it is the only place
that decides the VM is over. Any thread may call :meth:`Machine.request_exit` (the i8042 on a guest
reset, a vCPU on a KVM failure); the first call wins, every vCPU is told to stop, and ``exit_fd``
becomes readable so the VMM thread's event loop notices.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from sparkler import logger as log
from sparkler.memory import GuestMemory
from sparkler.vmm.bus import Bus
from sparkler.vmm.vcpu import Vcpu


class MachineState:
    NOT_STARTED = "Not started"
    RUNNING = "Running"
    PAUSED = "Paused"


@dataclass
class Machine:
    vm: Any
    memory: GuestMemory
    pio_bus: Bus
    mmio_bus: Bus
    vcpus: list[Vcpu] = field(default_factory=list)
    devices: dict[str, Any] = field(default_factory=dict)
    # Host resources closed in stop(): fds of eventfds, files, the VM and vCPU fds.
    closeables: list[Any] = field(default_factory=list)
    # (fd, callback) pairs the VMM thread's event loop serves: device queue kicks, device timers.
    event_handlers: list[tuple[int, Any]] = field(default_factory=list)
    # The VMM thread's loop (sparkler.vmm.event_loop.EventLoop); devices add their host fds to it.
    event_loop: Any = None

    def __post_init__(self) -> None:
        self.state = MachineState.NOT_STARTED
        self.exit_code: int | None = None
        self.exit_reason = ""
        self._exit_lock = threading.Lock()
        self._exit_r, self._exit_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopped = False

    # --- lifecycle -----------------------------------------------------------------------------
    @property
    def exit_fd(self) -> int:
        """Readable once the VM has stopped."""
        return self._exit_r

    def start(self) -> None:
        for vcpu in self.vcpus:
            vcpu.start()
        self.state = MachineState.RUNNING

    def pause(self) -> None:
        for vcpu in self.vcpus:
            vcpu.pause()
        self.state = MachineState.PAUSED

    def resume(self) -> None:
        for vcpu in self.vcpus:
            vcpu.resume()
        self.state = MachineState.RUNNING

    def send_ctrl_alt_del(self) -> None:
        self.devices["i8042"].trigger_ctrl_alt_del()

    def request_exit(self, code: int, reason: str = "") -> None:
        """End the VM with ``code``; safe from any thread, only the first request counts."""
        with self._exit_lock:
            if self.exit_code is not None:
                return
            self.exit_code = code
            self.exit_reason = reason
        if reason:
            (log.error if code else log.info)(reason)
        os.write(self._exit_w, b"x")

    def stop(self) -> None:
        """Stop every vCPU and release all host resources. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for vcpu in self.vcpus:
            vcpu.exit()
        for res in reversed(self.closeables):
            try:
                res.close()
            except Exception:  # noqa: BLE001 - best effort on teardown
                pass
        self.memory.close()
        os.close(self._exit_r)
        os.close(self._exit_w)

    def statistics(self) -> dict[str, Any]:
        return {f"vcpu{v.index}": v.stats for v in self.vcpus}
