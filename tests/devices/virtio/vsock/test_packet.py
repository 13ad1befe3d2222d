"""The vsock packet layer (virtio 1.2 5.10.6): header layout and chain validation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkler.devices.virtio.queue import Descriptor, DescriptorChain
from sparkler.devices.virtio.spec import VRING_DESC_F_WRITE
from sparkler.devices.virtio.vsock import packet as P
from sparkler.testing.fake_memory import guest_memory

MEM = 1 << 20


@pytest.fixture(scope="module")
def memory():
    m = guest_memory(MEM)
    yield m
    m.close()


def chain(*bufs, write=False):
    flags = VRING_DESC_F_WRITE if write else 0
    return DescriptorChain(0, tuple(Descriptor(a, n, flags) for a, n in bufs))


def header(length=0, op=P.VIRTIO_VSOCK_OP_RW):
    return P.Header(3, 2, 1000, 52, length, P.VIRTIO_VSOCK_TYPE_STREAM, op, 0, 4096, 7)


def test_spec_5_10_6_header_is_44_bytes_little_endian():
    raw = header(5).pack()
    assert len(raw) == P.HDR_SIZE == 44
    assert raw[:8] == (3).to_bytes(8, "little") and raw[16:20] == (1000).to_bytes(4, "little")
    assert P.Header.unpack(raw) == header(5)


def test_parse_tx_header_and_payload_in_one_buffer(memory):
    memory.write(0x1000, header(5).pack() + b"hello")
    pkt = P.parse_tx(chain((0x1000, 49)), memory)
    assert pkt.header == header(5)
    assert b"".join(bytes(v) for v in pkt.payload) == b"hello"


def test_parse_tx_header_split_over_descriptors(memory):
    raw = header(4).pack() + b"abcd"
    memory.write(0x2000, raw[:10])
    memory.write(0x3000, raw[10:30])
    memory.write(0x4000, raw[30:])
    pkt = P.parse_tx(chain((0x2000, 10), (0x3000, 20), (0x4000, 18)), memory)
    assert pkt.header.len == 4
    assert b"".join(bytes(v) for v in pkt.payload) == b"abcd"


def test_parse_tx_payload_is_zero_copy(memory):
    memory.write(0x5000, header(3).pack() + b"xyz")
    pkt = P.parse_tx(chain((0x5000, 47)), memory)
    memory.write(0x5000 + 44, b"XYZ")
    assert bytes(pkt.payload[0]) == b"XYZ"


@pytest.mark.parametrize(
    "what, bufs, length",
    [
        ("short header", [(0x1000, 43)], 0),
        ("len beyond the chain", [(0x1000, 44 + 10)], 11),
        ("len beyond 64 KiB", [(0x1000, 44 + 70000)], 70000),
    ],
)
def test_parse_tx_rejects(memory, what, bufs, length):
    memory.write(0x1000, header(length).pack())
    with pytest.raises(P.BadPacket):
        P.parse_tx(chain(*bufs), memory)


def test_parse_tx_rejects_device_writable_descriptor(memory):
    memory.write(0x1000, header(0).pack())
    with pytest.raises(P.BadPacket):
        P.parse_tx(chain((0x1000, 44), write=True), memory)


def test_parse_rx_capacity_capped_at_64k(memory):
    buf = P.parse_rx(chain((0x10000, 44 + 100000), write=True), memory)
    assert buf.capacity == P.MAX_PKT_BUF_SIZE


def test_parse_rx_rejects_readable_or_short(memory):
    with pytest.raises(P.BadPacket):
        P.parse_rx(chain((0x1000, 100)), memory)
    with pytest.raises(P.BadPacket):
        P.parse_rx(chain((0x1000, 20), write=True), memory)


def test_rx_buffer_writes_header_across_descriptors(memory):
    buf = P.parse_rx(chain((0x6000, 20), (0x7000, 30), (0x8000, 100), write=True), memory)
    assert buf.capacity == 106
    views = buf.payload(10)
    views[0][:] = b"0123456789"[: len(views[0])]
    used = buf.write_header(header(10))
    assert used == 54
    assert memory.read(0x6000, 20) + memory.read(0x7000, 24) == header(10).pack()
    assert memory.read(0x7000 + 24, 6) == b"012345"


@settings(max_examples=300, deadline=None)
@given(
    lens=st.lists(st.integers(0, 200), min_size=1, max_size=6),
    claimed=st.integers(0, 0xFFFF_FFFF),
    noise=st.binary(min_size=44, max_size=44),
    write=st.booleans(),
)
def test_parse_tx_any_chain_is_a_packet_or_bad_packet(memory, lens, claimed, noise, write):
    # Arbitrary header bytes and descriptor shapes: a valid packet never reads past the chain.
    raw = bytearray(noise)
    raw[24:28] = claimed.to_bytes(4, "little")
    bufs, addr = [], 0x20000
    data = bytes(raw) + bytes(sum(lens))
    offset = 0
    for n in lens:
        memory.write(addr, data[offset : offset + n])
        bufs.append((addr, n))
        offset += n
        addr += 0x1000
    try:
        pkt = P.parse_tx(chain(*bufs, write=write), memory)
    except P.BadPacket:
        return
    assert not write
    assert pkt.header.len == claimed <= sum(lens) - 44
    assert sum(len(v) for v in pkt.payload) == claimed
