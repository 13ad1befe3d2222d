"""virtio-balloon through the virtio-mmio transport with real (anonymous) guest memory."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.balloon.device import (
    MAX_PFNS_PER_CHAIN,
    VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
    VIRTIO_BALLOON_F_FREE_PAGE_REPORTING,
    VIRTIO_BALLOON_F_STATS_VQ,
    BalloonDevice,
    coalesce,
)
from sparkler.devices.virtio.mmio import MmioTransport
from sparkler.testing.fake_memory import guest_memory
from sparkler.testing.mock_driver import MmioDriver, MockDriver, readable, writable
from tests.devices.virtio.helpers import counting_irq

MEM = 8 << 20
GAP_AT = 6 << 20  # a hole of 4 pages at 6 MiB, like the 32-bit MMIO gap
RINGS = (0x1000, 0x8000, 0x10000, 0x18000)
PFN_BUF = 0x40000
STATS_BUF = 0x48000
PAGES = 0x200000  # pages the tests inflate start here


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now


class Rig:
    def __init__(self, amount_mib=0, *, deflate_on_oom=False, stats_s=0, reporting=False) -> None:
        self.memory = guest_memory(MEM, gap_at=GAP_AT)
        self.clock = Clock()
        self.device = BalloonDevice(
            amount_mib, deflate_on_oom=deflate_on_oom, stats_polling_interval_s=stats_s,
            free_page_reporting=reporting, clock=self.clock,
        )
        self.irq, self.line = counting_irq()
        self.transport = MmioTransport(self.device, self.memory, self.irq)
        self.mmio = MmioDriver(self.transport)
        self.queues = [MockDriver(self.memory, RINGS[i], 256) for i in range(len(self.device.queues))]
        assert self.mmio.probe(self.queues) & spec.VIRTIO_CONFIG_S_DRIVER_OK

    def send_pfns(self, queue: int, pfns: list[int], at: int = PFN_BUF) -> list[tuple[int, int]]:
        self.memory.write(at, struct.pack(f"<{len(pfns)}I", *pfns))
        self.queues[queue].add_chain([readable(at, 4 * len(pfns))])
        self.mmio.kick(queue)
        return self.queues[queue].take_used()

    def config(self) -> tuple[int, int, int]:
        return struct.unpack("<III", self.mmio.read_config(0, 12))

    def close(self) -> None:
        self.memory.close()


@pytest.fixture
def rig():
    r = Rig(amount_mib=4)
    yield r
    r.close()


def test_balloon_features_and_queues_follow_the_config():
    plain = Rig()
    assert plain.mmio.device_features() == 1 << spec.VIRTIO_F_VERSION_1
    assert len(plain.device.queues) == 2
    full = Rig(deflate_on_oom=True, stats_s=1, reporting=True)
    f = full.mmio.device_features()
    for bit in (VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_STATS_VQ, VIRTIO_BALLOON_F_FREE_PAGE_REPORTING):
        assert f >> bit & 1
    assert not f >> 3 & 1  # no free page hinting
    assert full.device.queue_index == {"inflate": 0, "deflate": 1, "stats": 2, "reporting": 3}
    assert full.mmio.read32(spec.VIRTIO_MMIO_DEVICE_ID) == spec.VIRTIO_ID_BALLOON
    plain.close()
    full.close()


def test_balloon_config_num_pages_and_actual(rig):
    assert rig.config() == (4 * 256, 0, 0)
    rig.mmio.write32(spec.VIRTIO_MMIO_CONFIG + 4, 300)  # the driver reports what it holds
    rig.mmio.write32(spec.VIRTIO_MMIO_CONFIG + 0, 7)  # num_pages is the host's: ignored
    assert rig.config() == (1024, 300, 0)
    assert rig.device.actual_pages == 300


def test_balloon_set_target_raises_config_interrupt(rig):
    generation = rig.mmio.read32(spec.VIRTIO_MMIO_CONFIG_GENERATION)
    rig.device.set_target(2048)
    assert rig.config()[0] == 2048
    assert rig.mmio.read32(spec.VIRTIO_MMIO_CONFIG_GENERATION) != generation
    assert rig.mmio.interrupt_status() & spec.VIRTIO_MMIO_INT_CONFIG
    stats = rig.device.balloon_stats()
    assert stats == {"target_pages": 2048, "actual_pages": 0, "target_mib": 8, "actual_mib": 0}


def test_balloon_inflate_discards_pages_and_they_read_back_zero(rig):
    pages = [PAGES // 4096 + i for i in (0, 1, 2, 5)]
    keep = (PAGES // 4096 + 3) << 12
    rig.memory.fill(PAGES, 6 * 4096, 0xAB)
    assert rig.send_pfns(0, pages) == [(0, 0)]
    for pfn in pages:
        assert rig.memory.read(pfn << 12, 4096) == bytes(4096)
    assert rig.memory.read(keep, 4096) == b"\xab" * 4096  # not in the list: untouched
    assert rig.device.inflated_pages == 4
    assert rig.device.statistics().inflate_count == 1
    assert rig.line.count == 1


def test_balloon_inflate_skips_pfns_outside_ram(rig):
    inside = PAGES // 4096
    rig.memory.fill(inside << 12, 4096, 0x5A)
    gap_pfn = (GAP_AT >> 12) + 1
    used = rig.send_pfns(0, [0xFFFF_FFFF, gap_pfn, (MEM >> 12) + 100, inside])
    assert used == [(0, 0)]
    assert rig.device.invalid_pfns == 3 and rig.device.inflated_pages == 1
    assert rig.memory.read(inside << 12, 4096) == bytes(4096)
    assert not rig.device.broken


def test_balloon_malformed_inflate_chains_are_refused(rig):
    rig.memory.fill(PAGES, 4096, 1)
    rig.memory.write(PFN_BUF, struct.pack("<I", PAGES >> 12) + b"\x00\x00")
    rig.queues[0].add_chain([readable(PFN_BUF, 6)])  # not a multiple of 4
    rig.queues[0].add_chain([writable(PFN_BUF, 4)])  # device-writable
    rig.queues[0].add_chain([readable(PFN_BUF, 4 * (MAX_PFNS_PER_CHAIN + 1))])  # too many
    rig.mmio.kick(0)
    assert [u for _, u in rig.queues[0].take_used()] == [0, 0, 0]
    assert rig.device.statistics().event_fails == 3
    assert rig.memory.read(PAGES, 4096) == b"\x01" * 4096
    assert not rig.device.broken


def test_balloon_deflate_is_acknowledged(rig):
    assert rig.send_pfns(1, [PAGES >> 12]) == [(0, 0)]
    assert rig.device.statistics().deflate_count == 1


def test_balloon_descriptor_outside_ram_breaks_device_only(rig):
    rig.queues[0].add_chain([readable(MEM + (1 << 20), 16)])
    rig.mmio.kick(0)
    assert rig.device.broken
    assert rig.device.statistics().event_fails == 1


def test_coalesce_runs():
    assert coalesce([5, 3, 4, 4, 10, 12, 11, 1]) == [(1, 1), (3, 3), (10, 3)]
    assert coalesce([]) == []


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(st.lists(st.integers(0, 0xFFFF_FFFF) | st.integers(0, MEM >> 12), max_size=MAX_PFNS_PER_CHAIN))
def test_balloon_any_pfn_list_only_discards_ram(pfns):
    r = Rig()
    try:
        # the rings and the PFN buffer live below 0x40000 + 1 KiB; keep the PFNs off them
        pfns = [p for p in pfns if p >= 0x50]
        assert r.send_pfns(0, pfns) == [(0, 0)] if pfns else True
        valid = {p for p in pfns if r.memory.contains(p << 12, 4096)}
        assert r.device.inflated_pages == len(valid)
        assert not r.device.broken
    finally:
        r.close()


def _stats_entries(pairs):
    return b"".join(struct.pack("<HQ", tag, value) for tag, value in pairs)


def test_balloon_statistics_round_trip():
    r = Rig(stats_s=2)
    q = r.queues[2]
    r.memory.write(STATS_BUF, _stats_entries([(4, 111 << 20), (5, 256 << 20), (2, 7), (99, 1)]))
    head = q.add_chain([readable(STATS_BUF, 40)])
    r.mmio.kick(2)
    assert q.take_used() == []  # the device keeps the buffer
    stats = r.device.balloon_stats()
    assert stats["free_memory"] == 111 << 20 and stats["total_memory"] == 256 << 20 and stats["major_faults"] == 7
    assert r.device.statistics().stats_updates_count == 1
    deadline = r.device.timer_deadline_ns()
    assert deadline == r.clock.now + 2_000_000_000
    r.device.process_rate_limiter_event()  # too early: nothing
    assert q.take_used() == []
    r.clock.now = deadline
    r.device.process_rate_limiter_event()
    assert q.take_used() == [(head, 0)]  # handed back: the driver refreshes it
    assert r.device.timer_deadline_ns() == deadline + 2_000_000_000
    r.memory.write(STATS_BUF, _stats_entries([(4, 99)]))
    q.add_chain([readable(STATS_BUF, 10)])
    r.mmio.kick(2)
    assert r.device.balloon_stats()["free_memory"] == 99
    r.device.set_stats_interval(5)  # PATCH: first refresh at once
    assert r.device.timer_deadline_ns() == r.clock.now
    r.close()


def test_balloon_malformed_stats_buffer_counts_a_failure():
    r = Rig(stats_s=1)
    r.queues[2].add_chain([readable(STATS_BUF, 7)])
    r.mmio.kick(2)
    assert r.queues[2].take_used() == [(0, 0)]
    assert r.device.statistics().stats_update_fails == 1
    r.close()


def test_balloon_free_page_reporting_discards_ranges():
    r = Rig(reporting=True)
    r.memory.fill(PAGES, 3 * 4096, 0x77)
    q = r.queues[2]
    q.add_chain([writable(PAGES, 2 * 4096), writable(PAGES + 2 * 4096, 4096)])
    r.mmio.kick(2)
    assert q.take_used() == [(0, 0)]
    assert r.memory.read(PAGES, 3 * 4096) == bytes(3 * 4096)
    s = r.device.statistics()
    assert s.free_page_report_count == 1 and s.free_page_report_freed == 3 * 4096
    r.close()
