"""A guest virtio driver in miniature: builds split virtqueues in guest memory and plays the guest.

Modelled on vm-virtio's ``virtio-queue/src/mock.rs``. :class:`MockDriver` lays out a descriptor
table, an available ring and a used ring for one queue, hands their addresses to a device-side
:class:`~sparkler.devices.virtio.queue.Queue`, and then does what a guest driver does: allocate
descriptors, chain them, publish heads in the available ring, and read back used entries. Raw
writers (``write_descriptor``, ``publish_head``, ``set_avail_idx``) let tests break every rule.

``MmioDriver`` plays the register side (virtio_mmio.c): probe, feature negotiation, queue
setup, kicks and interrupt acknowledgement against any BusDevice.

Layout (all inside ``[base, base + MockDriver.footprint(size))``): descriptor table at ``base``,
available ring right after it, used ring at the next 4-byte boundary.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.queue import Queue
from sparkler.memory import GuestMemory

_DESC = struct.Struct("<QIHH")
_USED_ELEM = struct.Struct("<II")


@dataclass(frozen=True)
class Buffer:
    """One buffer of a chain the mock driver adds: ``length`` bytes at ``addr``."""

    addr: int
    length: int
    writable: bool = False


def readable(addr: int, length: int) -> Buffer:
    return Buffer(addr, length, False)


def writable(addr: int, length: int) -> Buffer:
    return Buffer(addr, length, True)


class MockDriver:
    """The guest side of one split virtqueue."""

    def __init__(self, memory: GuestMemory, base: int, size: int = 256) -> None:
        self.memory = memory
        self.size = size
        self.desc_table = base
        self.avail_ring = base + spec.vring_desc_table_size(size)
        used = self.avail_ring + spec.vring_avail_size(size)
        self.used_ring = (used + spec.VRING_USED_ALIGN_SIZE - 1) & ~(spec.VRING_USED_ALIGN_SIZE - 1)
        memory.fill(base, self.footprint(size))
        self.avail_idx = 0
        self.last_used = 0
        self._next_desc = 0

    @staticmethod
    def footprint(size: int) -> int:
        """Bytes the three areas of a queue of ``size`` take (with alignment padding)."""
        desc_and_avail = spec.vring_desc_table_size(size) + spec.vring_avail_size(size)
        padded = (desc_and_avail + 3) & ~3
        return padded + spec.vring_used_size(size)

    # --- transport side --------------------------------------------------------------------------
    def configure(self, queue: Queue) -> Queue:
        """Write our addresses and size into the device's queue registers and mark it ready."""
        queue.size = self.size
        queue.desc_table = self.desc_table
        queue.avail_ring = self.avail_ring
        queue.used_ring = self.used_ring
        queue.ready = True
        return queue

    # --- descriptors -----------------------------------------------------------------------------
    def write_descriptor(self, index: int, addr: int, length: int, flags: int = 0, next_index: int = 0) -> None:
        self.memory.write(self.desc_table + spec.VRING_DESC_SIZE * index, _DESC.pack(addr, length, flags, next_index))

    def build_chain(self, buffers: list[Buffer]) -> int:
        """Write ``buffers`` as a chain in free descriptor slots (round robin); returns the head."""
        if not 0 < len(buffers) <= self.size:
            raise ValueError("a chain needs 1..size buffers")
        indices = [(self._next_desc + i) % self.size for i in range(len(buffers))]
        self._next_desc = (self._next_desc + len(buffers)) % self.size
        for i, (index, buf) in enumerate(zip(indices, buffers, strict=True)):
            flags = spec.VRING_DESC_F_WRITE if buf.writable else 0
            last = i == len(buffers) - 1
            if not last:
                flags |= spec.VRING_DESC_F_NEXT
            self.write_descriptor(index, buf.addr, buf.length, flags, 0 if last else indices[i + 1])
        return indices[0]

    # --- available ring --------------------------------------------------------------------------
    def publish_head(self, head: int) -> None:
        """Put ``head`` in the next available slot and bump avail.idx (what virtqueue_add does)."""
        self.memory.write_u16(self.avail_ring + 4 + 2 * (self.avail_idx % self.size), head)
        self.set_avail_idx(self.avail_idx + 1)

    def add_chain(self, buffers: list[Buffer]) -> int:
        head = self.build_chain(buffers)
        self.publish_head(head)
        return head

    def set_avail_idx(self, value: int) -> None:
        self.avail_idx = value & 0xFFFF
        self.memory.write_u16(self.avail_ring + 2, self.avail_idx)

    def set_avail_flags(self, flags: int) -> None:
        self.memory.write_u16(self.avail_ring, flags)

    def set_used_event(self, value: int) -> None:
        self.memory.write_u16(self.avail_ring + 4 + 2 * self.size, value & 0xFFFF)

    # --- used ring -------------------------------------------------------------------------------
    def used_idx(self) -> int:
        return self.memory.read_u16(self.used_ring + 2)

    def avail_event(self) -> int:
        return self.memory.read_u16(self.used_ring + 4 + spec.VRING_USED_ELEM_SIZE * self.size)

    def used_flags(self) -> int:
        return self.memory.read_u16(self.used_ring)

    def take_used(self) -> list[tuple[int, int]]:
        """The (head, written length) entries the device added since the last call."""
        out = []
        end = self.used_idx()
        while self.last_used != end:
            slot = self.last_used % self.size
            out.append(_USED_ELEM.unpack(self.memory.read(self.used_ring + 4 + 8 * slot, 8)))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out


class MmioDriver:
    """The guest's virtio_mmio.c in miniature: register accesses on a transport (any BusDevice)."""

    def __init__(self, transport) -> None:  # noqa: ANN001 - any object with read/write (BusDevice)
        self.transport = transport

    def read32(self, offset: int) -> int:
        buf = bytearray(4)
        self.transport.read(offset, memoryview(buf))
        return int.from_bytes(buf, "little")

    def write32(self, offset: int, value: int) -> None:
        self.transport.write(offset, (value & 0xFFFF_FFFF).to_bytes(4, "little"))

    def read_config(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.transport.read(spec.VIRTIO_MMIO_CONFIG + offset, memoryview(buf))
        return bytes(buf)

    def device_features(self) -> int:
        self.write32(spec.VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1)
        high = self.read32(spec.VIRTIO_MMIO_DEVICE_FEATURES)
        self.write32(spec.VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0)
        return high << 32 | self.read32(spec.VIRTIO_MMIO_DEVICE_FEATURES)

    def add_status(self, bit: int) -> int:
        self.write32(spec.VIRTIO_MMIO_STATUS, self.read32(spec.VIRTIO_MMIO_STATUS) | bit)
        return self.read32(spec.VIRTIO_MMIO_STATUS)

    def write_features(self, features: int) -> None:
        self.write32(spec.VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1)
        self.write32(spec.VIRTIO_MMIO_DRIVER_FEATURES, features >> 32)
        self.write32(spec.VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0)
        self.write32(spec.VIRTIO_MMIO_DRIVER_FEATURES, features & 0xFFFF_FFFF)

    def setup_queue(self, index: int, queue: MockDriver) -> None:
        self.write32(spec.VIRTIO_MMIO_QUEUE_SEL, index)
        self.write32(spec.VIRTIO_MMIO_QUEUE_NUM, queue.size)
        for low, value in (
            (spec.VIRTIO_MMIO_QUEUE_DESC_LOW, queue.desc_table),
            (spec.VIRTIO_MMIO_QUEUE_AVAIL_LOW, queue.avail_ring),
            (spec.VIRTIO_MMIO_QUEUE_USED_LOW, queue.used_ring),
        ):
            self.write32(low, value & 0xFFFF_FFFF)
            self.write32(low + 4, value >> 32)
        self.write32(spec.VIRTIO_MMIO_QUEUE_READY, 1)

    def probe(self, queues: list[MockDriver], features: int | None = None) -> int:
        """The whole initialization sequence (spec 3.1.1); returns the final status register.

        ``features`` defaults to everything the device offers.
        """
        self.write32(spec.VIRTIO_MMIO_STATUS, 0)
        self.add_status(spec.VIRTIO_CONFIG_S_ACKNOWLEDGE)
        self.add_status(spec.VIRTIO_CONFIG_S_DRIVER)
        self.write_features(self.device_features() if features is None else features)
        if not self.add_status(spec.VIRTIO_CONFIG_S_FEATURES_OK) & spec.VIRTIO_CONFIG_S_FEATURES_OK:
            return self.read32(spec.VIRTIO_MMIO_STATUS)
        for i, queue in enumerate(queues):
            self.setup_queue(i, queue)
        return self.add_status(spec.VIRTIO_CONFIG_S_DRIVER_OK)

    def kick(self, index: int = 0) -> None:
        self.write32(spec.VIRTIO_MMIO_QUEUE_NOTIFY, index)

    def interrupt_status(self) -> int:
        return self.read32(spec.VIRTIO_MMIO_INTERRUPT_STATUS)

    def ack_interrupt(self) -> int:
        status = self.interrupt_status()
        self.write32(spec.VIRTIO_MMIO_INTERRUPT_ACK, status)
        return status
