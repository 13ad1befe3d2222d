"""virtio-blk end to end through the virtio-mmio transport, a real backing file and guest memory."""

from __future__ import annotations

import os
import struct

import pytest

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.block.io import CacheType, DiskBackend
from sparkler.ratelimit import RateLimiter
from sparkler.testing.mock_driver import MockDriver, readable, writable
from tests.devices.virtio.block.helpers import DATA, UNTOUCHED, BlockRig, make_disk

OK, IOERR, UNSUPP = spec.VIRTIO_BLK_S_OK, spec.VIRTIO_BLK_S_IOERR, spec.VIRTIO_BLK_S_UNSUPP
SECTORS = 64


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    content = make_disk(path, SECTORS)
    return path, content


@pytest.fixture
def rig(disk):
    r = BlockRig(disk[0])
    yield r
    r.close()


def features(rig):
    return rig.mmio.device_features()


def test_block_offers_firecracker_features_unsafe_rw(rig):
    assert features(rig) == (1 << spec.VIRTIO_F_VERSION_1) | (1 << spec.VIRTIO_RING_F_EVENT_IDX)


def test_block_writeback_offers_flush_and_read_only_offers_ro(disk):
    r = BlockRig(disk[0], read_only=True, cache_type=CacheType.WRITEBACK, probe=False)
    f = r.mmio.device_features()
    assert f & (1 << spec.VIRTIO_BLK_F_FLUSH) and f & (1 << spec.VIRTIO_BLK_F_RO)
    assert not f & (1 << spec.VIRTIO_BLK_F_SEG_MAX)
    r.close()


def test_spec_5_2_4_config_capacity_in_sectors(rig):
    assert struct.unpack("<Q", rig.mmio.read_config(0, 8))[0] == SECTORS


def test_block_capacity_ignores_unaligned_tail(tmp_path):
    path = tmp_path / "odd.img"
    path.write_bytes(bytes(512 * 3 + 100))
    r = BlockRig(path)
    assert r.device.capacity_sectors == 3
    r.close()


def test_block_read_returns_file_content(rig, disk):
    done, data = rig.read(2, 1024)
    assert done.status == OK and done.used_len == 1024 + 1
    assert data == disk[1][1024:2048]


def test_block_read_scatter_gather_segments(rig, disk):
    slot = rig.add(spec.VIRTIO_BLK_T_IN, 1, [writable(DATA, 100), writable(DATA + 0x1000, 412), writable(DATA + 0x2000, 512)])
    done = rig.run()[slot]
    assert done.status == OK
    got = rig.memory.read(DATA, 100) + rig.memory.read(DATA + 0x1000, 412) + rig.memory.read(DATA + 0x2000, 512)
    assert got == disk[1][512:1536]


def test_block_write_lands_in_file(rig, disk):
    payload = os.urandom(1536)
    assert rig.write(5, payload).status == OK
    assert disk[0].read_bytes()[5 * 512 : 5 * 512 + 1536] == payload
    assert rig.write(5, payload).used_len == 1  # only the status byte goes to the guest


def test_block_flush_on_writeback_fsyncs(disk, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    r = BlockRig(disk[0], cache_type=CacheType.WRITEBACK)
    r.write(0, b"x" * 512)
    slot = r.add(spec.VIRTIO_BLK_T_FLUSH)
    assert r.run()[slot].status == OK
    assert synced == [r.backend.fd]
    assert r.device.statistics().flush_count == 1
    r.close()


def test_block_flush_on_unsafe_does_not_fsync(rig, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("fsync on an Unsafe drive"))
    slot = rig.add(spec.VIRTIO_BLK_T_FLUSH)
    assert rig.run()[slot].status == OK


def test_spec_5_2_6_1_read_only_drive_refuses_writes(disk):
    r = BlockRig(disk[0], read_only=True)
    assert r.write(0, b"\0" * 512).status == IOERR
    assert disk[0].read_bytes() == disk[1]
    r.close()


def test_block_out_of_range_request_fails_with_ioerr(rig):
    done, _ = rig.read(SECTORS - 1, 1024)
    assert done.status == IOERR and done.used_len == 1
    assert rig.device.statistics().invalid_reqs_count == 1
    assert not rig.device.broken


def test_spec_5_2_6_1_unsupported_type_is_unsupp(rig):
    slot = rig.add(spec.VIRTIO_BLK_T_DISCARD, 0, [readable(DATA, 16)])
    assert rig.run()[slot].status == UNSUPP


def test_block_get_id_returns_kvmtool_style_id(rig):
    slot = rig.add(spec.VIRTIO_BLK_T_GET_ID, 0, [writable(DATA, 20)])
    done = rig.run()[slot]
    st = os.fstat(rig.backend.fd)
    expected = f"{st.st_dev}{st.st_rdev}{st.st_ino}".encode()[:20].ljust(20, b"\0")
    assert done.status == OK and done.used_len == 21
    assert rig.memory.read(DATA, 20) == expected


def test_block_request_without_status_byte_is_returned_with_zero_length(rig):
    rig.memory.fill(DATA, 512, UNTOUCHED)
    slot = rig.add_raw([readable(rig.header(spec.VIRTIO_BLK_T_OUT, 0), 16), readable(DATA, 512)])
    done = rig.run()[slot]
    assert done.used_len == 0
    assert rig.memory.read(DATA, 512) == bytes([UNTOUCHED]) * 512  # nothing written anywhere
    assert rig.device.statistics().invalid_reqs_count == 1


def test_block_batch_raises_one_interrupt(rig):
    slots = [rig.add(spec.VIRTIO_BLK_T_IN, i, [writable(DATA + i * 512, 512)]) for i in range(8)]
    results = rig.run()
    assert sorted(results) == slots and all(d.status == OK for d in results.values())
    assert rig.line.count == 1


def test_block_malformed_chain_breaks_device_and_needs_reset(rig):
    rig.queue.publish_head(999)  # head index beyond the queue
    rig.mmio.kick(0)
    assert rig.device.broken
    assert rig.mmio.read32(spec.VIRTIO_MMIO_STATUS) & spec.VIRTIO_CONFIG_S_NEEDS_RESET
    assert rig.device.statistics().event_fails == 1


def test_block_resize_is_visible_through_config_change(rig, tmp_path):
    bigger = tmp_path / "bigger.img"
    make_disk(bigger, 128)
    generation = rig.mmio.read32(spec.VIRTIO_MMIO_CONFIG_GENERATION)
    rig.device.update_backend(DiskBackend.open(str(bigger)))
    assert struct.unpack("<Q", rig.mmio.read_config(0, 8))[0] == 128
    assert rig.mmio.read32(spec.VIRTIO_MMIO_CONFIG_GENERATION) == generation + 1
    assert rig.mmio.interrupt_status() & spec.VIRTIO_MMIO_INT_CONFIG
    done, _ = rig.read(100, 512)  # now in range
    assert done.status == OK


def test_block_rate_limited_ops_wait_for_timer(disk):
    clock = [0]
    limiter = RateLimiter.from_limits(ops=(2, 0, 1000), clock=lambda: clock[0])
    r = BlockRig(disk[0], rate_limiter=limiter)
    slots = [r.add(spec.VIRTIO_BLK_T_IN, i, [writable(DATA + i * 512, 512)]) for i in range(3)]
    first = r.run()
    assert sorted(first) == slots[:2]  # the third is throttled and stays in the ring
    assert limiter.is_blocked
    clock[0] += 10**9
    r.device.process_rate_limiter_event()
    assert [head for head, _ in r.queue.take_used()] and not limiter.is_blocked
    stats = r.device.statistics()
    assert stats.read_count == 3 and stats.rate_limiter_throttled_events >= 1
    r.close()


def test_block_rate_limited_bytes_refund_op(disk):
    limiter = RateLimiter.from_limits(bandwidth=(1024, 0, 1000), ops=(10, 0, 1000), clock=lambda: 0)
    r = BlockRig(disk[0], rate_limiter=limiter)
    r.add(spec.VIRTIO_BLK_T_IN, 0, [writable(DATA, 1024)])
    r.add(spec.VIRTIO_BLK_T_IN, 2, [writable(DATA + 1024, 512)])
    assert len(r.run()) == 1
    assert limiter.ops.budget == 9  # the refused request's op was refunded
    r.close()


def test_block_reset_and_reprobe_keeps_serving(rig, disk):
    rig.mmio.write32(spec.VIRTIO_MMIO_STATUS, 0)
    rig.queue = MockDriver(rig.memory, 0x8000, 16)
    assert rig.mmio.probe([rig.queue]) & spec.VIRTIO_CONFIG_S_DRIVER_OK
    done, data = rig.read(0, 512)
    assert done.status == OK and data == disk[1][:512]




def test_block_mmio_reads_from_another_thread_while_serving(rig, disk):
    """vCPU threads read registers while the VMM thread serves the queue: both go through the lock."""
    import threading

    stop = threading.Event()
    errors = []

    def vcpu():
        try:
            while not stop.is_set():
                rig.mmio.read32(spec.VIRTIO_MMIO_STATUS)
                rig.mmio.read_config(0, 8)
                rig.mmio.ack_interrupt()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    thread = threading.Thread(target=vcpu)
    thread.start()
    try:
        for i in range(200):
            done, data = rig.read(i % SECTORS, 512)
            assert done.status == OK and data == disk[1][(i % SECTORS) * 512 : (i % SECTORS + 1) * 512]
    finally:
        stop.set()
        thread.join()
    assert errors == []


def test_spec_2_7_7_block_event_idx_suppresses_interrupt_until_used_event(rig):
    assert rig.device.queues[0].event_idx  # negotiated by probe (Firecracker offers it)
    rig.queue.set_used_event(2)  # interrupt only once used.idx moves past 2
    rig.read(0, 512)
    rig.read(1, 512)
    assert rig.line.count == 0
    rig.read(2, 512)
    assert rig.line.count == 1
    assert rig.queue.avail_event() == 3  # the device asks to be kicked for the next chain
