"""virtio-vsock packets (virtio 1.2 section 5.10.6), sans-I/O.

Every packet starts with a 44-byte little-endian header::

    struct virtio_vsock_hdr {
        le64 src_cid; le64 dst_cid; le32 src_port; le32 dst_port;
        le32 len;            /* payload bytes after the header (RW only) */
        le16 type;           /* VIRTIO_VSOCK_TYPE_STREAM = 1 (SEQPACKET = 2 is not offered) */
        le16 op;             /* REQUEST, RESPONSE, RST, SHUTDOWN, RW, CREDIT_UPDATE, CREDIT_REQUEST */
        le32 flags;          /* SHUTDOWN: VIRTIO_VSOCK_SHUTDOWN_RCV | _SEND */
        le32 buf_alloc;      /* sender's receive buffer for this connection */
        le32 fwd_cnt;        /* bytes the sender has consumed from it */
    };

The header and payload may be spread over any number of descriptors: a driver may use one buffer
for both (Linux >= 6.2) or one for the header and one for the payload (older Linux, Firecracker's
own tests). So a chain is treated as one byte stream: its first 44 bytes are the header, the next
``len`` bytes the payload, kept as zero-copy ``memoryview`` slices of guest RAM.

* A TX chain (driver -> device) must be all device-readable, hold a whole header and at least
  ``len`` payload bytes, and ``len`` must not exceed 64 KiB (Firecracker's ``MAX_PKT_BUF_SIZE``).
* An RX chain (device -> driver) must be all device-writable and hold at least a header; its
  payload room is capped at 64 KiB.

Anything else is a :class:`BadPacket` (the chain is returned unused and counted; a hostile
packet never breaks the device or the VMM). Descriptor addresses were checked by the queue.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sparkler.devices.virtio.queue import DescriptorChain
from sparkler.memory import GuestMemory

HDR = struct.Struct("<QQIIIHHIII")
HDR_SIZE = HDR.size  # 44
MAX_PKT_BUF_SIZE = 64 * 1024

# <linux/virtio_vsock.h>
VIRTIO_VSOCK_TYPE_STREAM = 1
VIRTIO_VSOCK_TYPE_SEQPACKET = 2

VIRTIO_VSOCK_OP_INVALID = 0
VIRTIO_VSOCK_OP_REQUEST = 1
VIRTIO_VSOCK_OP_RESPONSE = 2
VIRTIO_VSOCK_OP_RST = 3
VIRTIO_VSOCK_OP_SHUTDOWN = 4
VIRTIO_VSOCK_OP_RW = 5
VIRTIO_VSOCK_OP_CREDIT_UPDATE = 6
VIRTIO_VSOCK_OP_CREDIT_REQUEST = 7

VIRTIO_VSOCK_SHUTDOWN_RCV = 1
VIRTIO_VSOCK_SHUTDOWN_SEND = 2
VIRTIO_VSOCK_SHUTDOWN_ALL = VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND

VIRTIO_VSOCK_EVENT_TRANSPORT_RESET = 0
EVENT_SIZE = 4  # struct virtio_vsock_event { le32 id; }

OP_NAMES = {
    VIRTIO_VSOCK_OP_INVALID: "INVALID",
    VIRTIO_VSOCK_OP_REQUEST: "REQUEST",
    VIRTIO_VSOCK_OP_RESPONSE: "RESPONSE",
    VIRTIO_VSOCK_OP_RST: "RST",
    VIRTIO_VSOCK_OP_SHUTDOWN: "SHUTDOWN",
    VIRTIO_VSOCK_OP_RW: "RW",
    VIRTIO_VSOCK_OP_CREDIT_UPDATE: "CREDIT_UPDATE",
    VIRTIO_VSOCK_OP_CREDIT_REQUEST: "CREDIT_REQUEST",
}


class BadPacket(Exception):
    """A chain that is not a valid vsock packet buffer (the guest's fault, not fatal)."""


@dataclass(frozen=True, slots=True)
class Header:
    src_cid: int
    dst_cid: int
    src_port: int
    dst_port: int
    len: int
    type: int
    op: int
    flags: int = 0
    buf_alloc: int = 0
    fwd_cnt: int = 0

    def pack(self) -> bytes:
        return HDR.pack(
            self.src_cid, self.dst_cid, self.src_port, self.dst_port, self.len,
            self.type, self.op, self.flags, self.buf_alloc, self.fwd_cnt,
        )

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> Header:
        if len(data) < HDR_SIZE:
            raise BadPacket(f"vsock header needs {HDR_SIZE} bytes, got {len(data)}")
        return cls(*HDR.unpack_from(data, 0))

    def describe(self) -> str:
        op = OP_NAMES.get(self.op, str(self.op))
        return f"{op} {self.src_cid}:{self.src_port} -> {self.dst_cid}:{self.dst_port} len={self.len}"


def _split(views: list[memoryview], offset: int, length: int) -> list[memoryview]:
    """The slices of the concatenation of ``views`` covering ``[offset, offset + length)``."""
    out: list[memoryview] = []
    for view in views:
        if length <= 0:
            break
        n = len(view)
        if offset >= n:
            offset -= n
            continue
        take = min(n - offset, length)
        out.append(view[offset : offset + take])
        length -= take
        offset = 0
    return out


def _gather(views: list[memoryview], length: int) -> bytes:
    return b"".join(bytes(v) for v in _split(views, 0, length))


@dataclass(frozen=True, slots=True)
class TxPacket:
    """A packet the driver sent: its header and ``header.len`` payload bytes in guest RAM."""

    head: int
    header: Header
    payload: tuple[memoryview, ...]


def parse_tx(chain: DescriptorChain, memory: GuestMemory) -> TxPacket:
    """Validate a TX chain; BadPacket when it is not a packet."""
    views: list[memoryview] = []
    total = 0
    for desc in chain.descriptors:
        if desc.is_write_only:
            raise BadPacket("vsock TX chain has a device-writable descriptor")
        if desc.len:
            views.append(memory.slice(desc.addr, desc.len))
            total += desc.len
    if total < HDR_SIZE:
        raise BadPacket(f"vsock TX chain of {total} bytes is shorter than a header ({HDR_SIZE})")
    header = Header.unpack(_gather(views, HDR_SIZE))
    if header.len > MAX_PKT_BUF_SIZE:
        raise BadPacket(f"vsock TX packet len {header.len} exceeds {MAX_PKT_BUF_SIZE}")
    if header.len > total - HDR_SIZE:
        raise BadPacket(f"vsock TX packet len {header.len} exceeds its {total - HDR_SIZE} payload bytes")
    payload = tuple(_split(views, HDR_SIZE, header.len)) if header.len else ()
    return TxPacket(chain.head, header, payload)


class RxBuffer:
    """A chain the driver posted for the device to write one packet into."""

    __slots__ = ("head", "_views", "capacity")

    def __init__(self, head: int, views: list[memoryview], capacity: int) -> None:
        self.head = head
        self._views = views
        self.capacity = capacity  # payload room (bytes after the header), at most 64 KiB

    def payload(self, length: int) -> list[memoryview]:
        """Writable views of the first ``length`` payload bytes (``length <= capacity``)."""
        if not 0 <= length <= self.capacity:
            raise ValueError(f"payload length {length} outside 0..{self.capacity}")
        return _split(self._views, HDR_SIZE, length)

    def write_header(self, header: Header) -> int:
        """Store the header; the chain's used length (header plus payload)."""
        data = header.pack()
        offset = 0
        for view in _split(self._views, 0, HDR_SIZE):
            view[:] = data[offset : offset + len(view)]
            offset += len(view)
        return HDR_SIZE + header.len


def parse_rx(chain: DescriptorChain, memory: GuestMemory) -> RxBuffer:
    """Validate an RX chain; BadPacket when it cannot hold a packet."""
    views: list[memoryview] = []
    total = 0
    for desc in chain.descriptors:
        if not desc.is_write_only:
            raise BadPacket("vsock RX chain has a device-readable descriptor")
        if desc.len:
            views.append(memory.slice(desc.addr, desc.len))
            total += desc.len
    if total < HDR_SIZE:
        raise BadPacket(f"vsock RX chain of {total} bytes is shorter than a header ({HDR_SIZE})")
    return RxBuffer(chain.head, views, min(total - HDR_SIZE, MAX_PKT_BUF_SIZE))


__all__ = [
    "BadPacket",
    "EVENT_SIZE",
    "HDR_SIZE",
    "Header",
    "MAX_PKT_BUF_SIZE",
    "RxBuffer",
    "TxPacket",
    "parse_rx",
    "parse_tx",
]
