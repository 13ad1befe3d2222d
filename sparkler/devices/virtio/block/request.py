"""Parse a virtio-blk descriptor chain into a Request (virtio 1.2 section 5.2.6), without I/O.

A request is one chain (Linux's virtio_blk builds exactly this shape)::

    [header: readable, >= 16 bytes: le32 type, le32 ioprio, le64 sector]
    [data: 0..n buffers, device-writable for IN/GET_ID, device-readable for OUT]
    [status: device-writable, >= 1 byte]

:func:`parse` returns either a frozen :class:`Request` -- type, sector, data segments as
``(gpa, len)`` and the status byte's address, all checked against the disk's capacity -- or a
:class:`Rejected` that says which status to write (``VIRTIO_BLK_S_UNSUPP`` for an unknown type,
``VIRTIO_BLK_S_IOERR`` for everything else, as the spec and Firecracker do) and where, if the chain
has a usable status byte at all. A malformed request is the driver's problem, not a broken queue:
the device completes it and carries on. The chain itself (addresses inside guest RAM, no loops)
was validated by the virtqueue, so parsing raises nothing for guest input.

Executing a Request is :mod:`sparkler.devices.virtio.block.io`'s job (rule R6).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import NamedTuple

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.queue import Descriptor, DescriptorChain
from sparkler.memory import GuestMemory

_OUTHDR = struct.Struct("<IIQ")


class RequestType(enum.IntEnum):
    IN = spec.VIRTIO_BLK_T_IN
    OUT = spec.VIRTIO_BLK_T_OUT
    FLUSH = spec.VIRTIO_BLK_T_FLUSH
    GET_ID = spec.VIRTIO_BLK_T_GET_ID


class Request(NamedTuple):
    """A valid request: what to do, where in the disk, which guest buffers, where the status goes.

    A NamedTuple (immutable; cheap to build: one per request on the VMM thread)."""

    head: int
    type: RequestType
    sector: int
    segments: tuple[tuple[int, int], ...]
    status_gpa: int

    @property
    def data_len(self) -> int:
        return sum(length for _, length in self.segments)

    @property
    def offset(self) -> int:
        return self.sector << spec.SECTOR_SHIFT


@dataclass(frozen=True, slots=True)
class Rejected:
    """A request to complete without I/O: write ``status`` at ``status_gpa`` (if there is one)."""

    head: int
    status: int
    status_gpa: int | None
    reason: str


_TYPES = {t.value: t for t in RequestType}
_WRITE = spec.VRING_DESC_F_WRITE


def _all(descriptors: tuple[Descriptor, ...], writable: bool) -> bool:
    want = _WRITE if writable else 0
    return all(d.flags & _WRITE == want for d in descriptors)


def parse(chain: DescriptorChain, memory: GuestMemory, capacity_sectors: int) -> Request | Rejected:
    """Turn ``chain`` into a Request, or say how to reject it."""
    descriptors = chain.descriptors
    status = descriptors[-1]
    status_gpa = status.addr if status.flags & _WRITE and status.len >= 1 and len(descriptors) >= 2 else None

    def reject(reason: str, code: int = spec.VIRTIO_BLK_S_IOERR) -> Rejected:
        return Rejected(chain.head, code, status_gpa, reason)

    if len(descriptors) < 2:
        return reject("chain too short for header and status")
    if status_gpa is None:
        return reject("last descriptor is not a writable status byte")
    header = descriptors[0]
    if header.flags & _WRITE or header.len < spec.VIRTIO_BLK_OUTHDR_SIZE:
        return reject("first descriptor is not a readable 16-byte header")
    raw_type, _ioprio, sector = _OUTHDR.unpack(memory.slice(header.addr, spec.VIRTIO_BLK_OUTHDR_SIZE))
    kind = _TYPES.get(raw_type)
    if kind is None:
        return reject(f"unsupported request type {raw_type}", spec.VIRTIO_BLK_S_UNSUPP)
    data = descriptors[1:-1]
    if len(data) == 1:  # the common shape: one data buffer
        segments: tuple[tuple[int, int], ...] = ((data[0].addr, data[0].len),)
        data_len = data[0].len
    else:
        segments = tuple((d.addr, d.len) for d in data)
        data_len = sum(d.len for d in data)

    if kind is RequestType.IN or kind is RequestType.OUT:
        if not data:
            return reject("read/write request without data")
        if not _all(data, writable=kind is RequestType.IN):
            return reject("data buffer has the wrong direction")
        if data_len % spec.SECTOR_SIZE:
            return reject(f"data length {data_len} is not a multiple of {spec.SECTOR_SIZE}")
        if sector + (data_len >> spec.SECTOR_SHIFT) > capacity_sectors:
            return reject(f"sectors {sector}+{data_len >> spec.SECTOR_SHIFT} are beyond the disk ({capacity_sectors})")
    elif kind is RequestType.GET_ID:
        if not _all(data, writable=True):
            return reject("get-id buffer is not writable")
        if data_len < spec.VIRTIO_BLK_ID_BYTES:
            return reject(f"get-id buffer of {data_len} bytes is shorter than {spec.VIRTIO_BLK_ID_BYTES}")
    else:  # FLUSH: a flush carries no data; any buffers are ignored
        segments = ()
    return Request(chain.head, kind, sector, segments, status_gpa)
