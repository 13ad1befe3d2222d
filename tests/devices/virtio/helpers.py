"""Shared test doubles for the virtio tests."""

from __future__ import annotations

from sparkler.devices.virtio.device import VirtioDevice
from sparkler.devices.virtio.interrupt import IrqTrigger
from sparkler.devices.virtio.queue import Queue


class CountingTrigger:
    """A Trigger that counts edges instead of writing an eventfd."""

    def __init__(self) -> None:
        self.count = 0

    def trigger(self) -> None:
        self.count += 1


def counting_irq() -> tuple[IrqTrigger, CountingTrigger]:
    line = CountingTrigger()
    return IrqTrigger(line), line


class EchoDevice(VirtioDevice):
    """A minimal device: returns every chain with the total length of its writable buffers."""

    device_type = 42

    def __init__(self, num_queues: int = 1, features: int = 0, config: bytes = b"\x11\x22\x33\x44") -> None:
        super().__init__(features, [Queue(256) for _ in range(num_queues)], config)
        self.chains = []

    def process_queue(self, index: int) -> None:
        queue = self.queues[index]
        while (chain := queue.pop_or_enable_notification()) is not None:
            self.chains.append(chain)
            queue.add_used(chain.head, sum(d.len for d in chain.writable()))
        self.signal_used_queue(index)
