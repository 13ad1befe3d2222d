"""IrqTrigger: InterruptStatus bits plus the irqfd doorbell (a real eventfd by default)."""

from __future__ import annotations

import os

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.interrupt import IrqTrigger


def test_interrupt_trigger_sets_status_and_rings_eventfd():
    irq = IrqTrigger()
    irq.trigger_vring()
    irq.trigger_config()
    assert irq.irq_status == spec.VIRTIO_MMIO_INT_VRING | spec.VIRTIO_MMIO_INT_CONFIG
    assert os.eventfd_read(irq.irq_evt.fd) == 2
    irq.close()


def test_interrupt_ack_clears_only_acknowledged_bits():
    irq = IrqTrigger()
    irq.trigger_vring()
    irq.trigger_config()
    irq.ack(spec.VIRTIO_MMIO_INT_VRING)
    assert irq.irq_status == spec.VIRTIO_MMIO_INT_CONFIG
    irq.reset()
    assert irq.irq_status == 0
    irq.close()
