"""Property tests: arbitrary guest requests and rings against virtio-blk never crash the device.

Whatever the guest puts in the ring, a kick either completes every published chain (with a
virtio status where the chain has a status byte) or breaks the device (DEVICE_NEEDS_RESET);
no exception escapes, and the backing file never grows or changes outside the disk's capacity.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sparkler.devices.virtio import spec
from sparkler.testing.mock_driver import Buffer
from tests.devices.virtio.block.helpers import DATA, MEM_SIZE, BlockRig, make_disk

SECTORS = 16
TYPES = [spec.VIRTIO_BLK_T_IN, spec.VIRTIO_BLK_T_OUT, spec.VIRTIO_BLK_T_FLUSH, spec.VIRTIO_BLK_T_GET_ID]

lengths = st.one_of(st.sampled_from([0, 1, 16, 20, 511, 512, 1024, 4096]), st.integers(0, 1 << 16))
addresses = st.one_of(
    st.integers(DATA, DATA + 0x20000),
    st.integers(DATA, DATA + 0x20000),
    st.integers(DATA, DATA + 0x20000),
    st.sampled_from([MEM_SIZE - 1, MEM_SIZE, 2**64 - 8, 0x18000]),
)
buffers = st.builds(Buffer, addresses, lengths, st.booleans())


@st.composite
def requests(draw):
    kind = draw(st.one_of(st.sampled_from(TYPES), st.integers(0, 2**32 - 1)))
    sector = draw(st.one_of(st.integers(0, SECTORS + 2), st.integers(0, 2**64 - 1)))
    header_len = draw(st.sampled_from([16, 16, 16, 8, 64]))
    header_writable = draw(st.integers(0, 9)) == 0  # now and then a device-writable header
    data = draw(st.lists(buffers, max_size=4))
    status = draw(st.one_of(st.just(Buffer(0, 1, True)), st.builds(Buffer, st.just(0), st.integers(0, 4), st.booleans())))
    return kind, sector, header_len, header_writable, data, status


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    path = tmp_path_factory.mktemp("blk") / "disk.img"
    make_disk(path, SECTORS)
    return path


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    st.lists(requests(), min_size=1, max_size=12),
    st.one_of(st.none(), st.integers(0, 0xFFFF)),
    st.booleans(),
)
def test_block_arbitrary_requests_complete_or_break_device(disk, reqs, avail_idx_override, read_only):
    rig = BlockRig(disk, read_only=read_only)
    try:
        published = 0
        for kind, sector, header_len, header_writable, data, status in reqs:
            header = rig.header(kind % 2**32, sector % 2**64)
            status_gpa = rig.status_gpa()
            chain = [Buffer(header, header_len, header_writable), *data, Buffer(status_gpa, status.length, status.writable)]
            rig.add_raw(chain[: rig.queue.size])
            published += 1
        if avail_idx_override is not None:
            rig.queue.set_avail_idx(avail_idx_override)
        rig.mmio.kick(0)  # must not raise
        used = rig.queue.take_used()
        event("broken" if rig.device.broken else "served")
        if rig.device.broken:
            assert rig.mmio.read32(spec.VIRTIO_MMIO_STATUS) & spec.VIRTIO_CONFIG_S_NEEDS_RESET
        else:
            assert len(used) == (published if avail_idx_override is None else avail_idx_override)
            for _head, used_len in used:
                assert 0 <= used_len <= 1 + 4 * (1 << 16)
        assert disk.stat().st_size == SECTORS * 512
    finally:
        rig.device.backend.close()
        rig.memory.close()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0x1000), st.sampled_from([1, 2, 4, 8]), st.integers(0, 2**32 - 1)), max_size=60))
def test_mmio_arbitrary_register_writes_never_raise(tmp_path_factory, writes):
    path = tmp_path_factory.mktemp("mmio") / "disk.img"
    make_disk(path, 4)
    rig = BlockRig(path, probe=False)
    try:
        for offset, width, value in writes:
            rig.transport.write(offset, struct.pack("<Q", value)[:width])
            rig.transport.read(offset, memoryview(bytearray(width)))
        rig.mmio.kick(0)
    finally:
        rig.device.backend.close()
        rig.memory.close()
