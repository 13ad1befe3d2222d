"""A guest virtio-blk driver in miniature, for the block tests."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.block.device import BlockDevice
from sparkler.devices.virtio.block.io import CacheType, DiskBackend
from sparkler.devices.virtio.mmio import MmioTransport
from sparkler.testing.fake_memory import guest_memory
from sparkler.testing.mock_driver import Buffer, MmioDriver, MockDriver, readable, writable
from tests.devices.virtio.helpers import counting_irq

MEM_SIZE = 4 << 20
RING = 0x1000
HEADER = 0x10000  # request headers, 16 bytes each
STATUS = 0x18000  # status bytes
DATA = 0x100000  # data buffers
UNTOUCHED = 0xA5  # status bytes start as this, so "not written" is visible


@dataclass
class Done:
    status: int
    used_len: int


class BlockRig:
    def __init__(self, path, *, read_only=False, cache_type=CacheType.UNSAFE, rate_limiter=None, probe=True) -> None:
        self.memory = guest_memory(MEM_SIZE)
        self.backend = DiskBackend.open(str(path), read_only=read_only, cache_type=cache_type)
        self.device = BlockDevice("drive0", self.backend, rate_limiter)
        self.irq, self.line = counting_irq()
        self.transport = MmioTransport(self.device, self.memory, self.irq)
        self.mmio = MmioDriver(self.transport)
        self.queue = MockDriver(self.memory, RING, 256)
        self._slot = 0
        self.heads: dict[int, int] = {}
        if probe:
            assert self.mmio.probe([self.queue]) & spec.VIRTIO_CONFIG_S_DRIVER_OK

    def close(self) -> None:
        self.device.close()
        self.memory.close()

    def header(self, kind: int, sector: int) -> int:
        gpa = HEADER + 16 * self._slot
        self.memory.write(gpa, struct.pack("<IIQ", kind, 0, sector))
        return gpa

    def status_gpa(self) -> int:
        gpa = STATUS + self._slot
        self.memory.write_u8(gpa, UNTOUCHED)
        return gpa

    def add(self, kind: int, sector: int = 0, data: list[Buffer] | None = None, status_len: int = 1) -> int:
        """Queue one well-formed request; returns the request slot (to read its status later)."""
        slot = self._slot
        chain = [readable(self.header(kind, sector), 16), *(data or []), writable(self.status_gpa(), status_len)]
        self.heads[self.queue.add_chain(chain)] = slot
        self._slot += 1
        return slot

    def add_raw(self, buffers: list[Buffer]) -> int:
        slot = self._slot
        self.heads[self.queue.add_chain(buffers)] = slot
        self._slot += 1
        return slot

    def run(self) -> dict[int, Done]:
        """Kick and collect completions by request slot."""
        self.mmio.kick(0)
        out = {}
        for head, used_len in self.queue.take_used():
            slot = self.heads.pop(head)
            out[slot] = Done(self.memory.read_u8(STATUS + slot), used_len)
        return out

    def read(self, sector: int, length: int, gpa: int = DATA) -> tuple[Done, bytes]:
        slot = self.add(spec.VIRTIO_BLK_T_IN, sector, [writable(gpa, length)])
        done = self.run()[slot]
        return done, self.memory.read(gpa, length)

    def write(self, sector: int, payload: bytes, gpa: int = DATA) -> Done:
        self.memory.write(gpa, payload)
        slot = self.add(spec.VIRTIO_BLK_T_OUT, sector, [readable(gpa, len(payload))])
        return self.run()[slot]


def make_disk(path, sectors: int = 64, pattern: bool = True) -> bytes:
    content = bytes((i * 7 + i // 512) & 0xFF for i in range(sectors * 512)) if pattern else bytes(sectors * 512)
    path.write_bytes(content)
    return content
