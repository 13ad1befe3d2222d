"""The virtio-mmio interrupt: InterruptStatus bits plus one irqfd doorbell.

A virtio-mmio device has one interrupt line. Before raising it the device sets a reason bit in
``InterruptStatus`` -- ``VIRTIO_MMIO_INT_VRING`` (1, used buffers) or ``VIRTIO_MMIO_INT_CONFIG``
(2, configuration change) -- and the driver's handler reads the register, acts on each bit and
writes the bits back to ``InterruptACK`` (spec 4.2.2). The line itself is an eventfd registered
with ``KVM_IRQFD``: each :meth:`IrqTrigger.trigger` is an edge on the device's GSI, delivered by
the kernel without waking a vCPU thread in Python.

The status is written by the VMM thread (device work) and read/acknowledged by vCPU threads
(MMIO exits), so it sits behind a lock.
"""

from __future__ import annotations

import threading

from sparkler.devices.base import Trigger
from sparkler.devices.virtio import spec
from sparkler.host.eventfd import EventFdTrigger


class IrqTrigger:
    """Interrupt status bits + the irqfd (``irq_evt``) that raises the line."""

    def __init__(self, irq_evt: Trigger | None = None) -> None:
        self.irq_evt: Trigger = irq_evt if irq_evt is not None else EventFdTrigger()
        self._status = 0
        self._lock = threading.Lock()

    @property
    def irq_status(self) -> int:
        with self._lock:
            return self._status

    def trigger(self, reason: int) -> None:
        """Set ``reason`` (VIRTIO_MMIO_INT_VRING/CONFIG) in InterruptStatus and raise the line."""
        with self._lock:
            self._status |= reason
        self.irq_evt.trigger()

    def trigger_vring(self) -> None:
        self.trigger(spec.VIRTIO_MMIO_INT_VRING)

    def trigger_config(self) -> None:
        self.trigger(spec.VIRTIO_MMIO_INT_CONFIG)

    def ack(self, bits: int) -> None:
        """InterruptACK: clear the acknowledged reason bits."""
        with self._lock:
            self._status &= ~bits

    def reset(self) -> None:
        with self._lock:
            self._status = 0

    def close(self) -> None:
        close = getattr(self.irq_evt, "close", None)
        if close is not None:
            close()
