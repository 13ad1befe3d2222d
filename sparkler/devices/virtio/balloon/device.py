"""virtio-balloon device (virtio 1.2 section 5.5) with Firecracker's behaviour (catalog 5.5).

Queues, in order: inflate, deflate, then ``stats`` when statistics are enabled
(``stats_polling_interval_s > 0``, feature VIRTIO_BALLOON_F_STATS_VQ) and ``reporting`` when
free page reporting is (VIRTIO_BALLOON_F_FREE_PAGE_REPORTING). VIRTIO_BALLOON_F_DEFLATE_ON_OOM is
offered when configured. Free page hinting is not offered.

Configuration space (12 bytes, little-endian): ``num_pages`` (the host's target, 4 KiB pages, set
by :meth:`set_target` with a configuration-change interrupt), ``actual`` (written by the driver:
the pages it holds now) and ``free_page_hint_cmd_id`` (always 0 here). Only ``actual`` is
writable by the driver.

Inflate: each chain carries device-readable arrays of le32 page frame numbers. Every PFN is checked
against guest RAM (PFNs outside it are skipped and counted), the rest are sorted, de-duplicated and
coalesced into contiguous runs that never cross a RAM region, and each run is given back to the
host with ``madvise(MADV_DONTNEED)`` (:meth:`GuestMemory.zero`), so the VMM's RSS drops and the
pages read as zeros when the guest touches them again. A chain with a device-writable buffer, a
buffer length that is not a multiple of 4 or more than :data:`MAX_PFNS_PER_CHAIN` PFNs is malformed:
returned unprocessed and counted in ``event_fails``. Deflate chains are only acknowledged.

Statistics (spec 5.5.6.3): the driver posts one buffer of ``{le16 tag; le64 val}`` entries; the
device reads it and *keeps* the chain. Every ``stats_polling_interval_s`` seconds the device returns
the kept chain (used length 0) with an interrupt, which asks the driver for a fresh buffer. The
deadline is served through :meth:`timer_deadline_ns` (the builder's per-device timerfd);
:meth:`set_stats_interval` (PATCH /balloon/statistics) asks for a refresh at once.

Free page reporting (spec 5.5.6.5): each chain lists free ranges of guest RAM (any direction);
every range is discarded like an inflated page and the chain returned.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, make_dataclass
from typing import Any

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.device import VirtioDevice
from sparkler.devices.virtio.queue import DescriptorChain, Queue
from sparkler.memory import GuestMemory

QUEUE_SIZE = 256
PAGE_SHIFT = 12  # VIRTIO_BALLOON_PFN_SHIFT: balloon pages are 4 KiB whatever the guest's page size
PAGE_SIZE = 1 << PAGE_SHIFT
PAGES_PER_MIB = 256
MAX_PFNS_PER_CHAIN = 256  # Linux's VIRTIO_BALLOON_ARRAY_PFNS_MAX, Firecracker's MAX_PAGES_IN_DESC

VIRTIO_BALLOON_F_MUST_TELL_HOST = 0
VIRTIO_BALLOON_F_STATS_VQ = 1
VIRTIO_BALLOON_F_DEFLATE_ON_OOM = 2
VIRTIO_BALLOON_F_FREE_PAGE_HINT = 3
VIRTIO_BALLOON_F_FREE_PAGE_REPORTING = 5

CONFIG = struct.Struct("<III")  # num_pages, actual, free_page_hint_cmd_id
ACTUAL_OFFSET = 4
STAT = struct.Struct("<HQ")  # virtio_balloon_stat: le16 tag, le64 val (packed, 10 bytes)

# Stat tags (spec 5.5.6.3 and Linux's uapi/linux/virtio_balloon.h) -> Firecracker's BalloonStats names.
STAT_NAMES = {
    0: "swap_in",
    1: "swap_out",
    2: "major_faults",
    3: "minor_faults",
    4: "free_memory",
    5: "total_memory",
    6: "available_memory",
    7: "disk_caches",
    8: "hugetlb_allocations",
    9: "hugetlb_failures",
    10: "oom_kill",
    11: "alloc_stall",
    12: "async_scan",
    13: "direct_scan",
    14: "async_reclaim",
    15: "direct_reclaim",
}

NANOS_PER_S = 1_000_000_000


@dataclass
class BalloonCounters:
    """Cumulative counters (Firecracker's ``balloon`` metric names)."""

    activate_fails: int = 0
    inflate_count: int = 0
    stats_updates_count: int = 0
    stats_update_fails: int = 0
    deflate_count: int = 0
    event_fails: int = 0
    free_page_report_count: int = 0
    free_page_report_freed: int = 0
    free_page_report_fails: int = 0
    free_page_hint_count: int = 0
    free_page_hint_freed: int = 0
    free_page_hint_fails: int = 0


BalloonStatistics = make_dataclass(
    "BalloonStatistics", [(f.name, int, f.default) for f in fields(BalloonCounters)], frozen=True
)


def coalesce(pfns: list[int]) -> list[tuple[int, int]]:
    """Sorted, de-duplicated PFNs as ``(first_pfn, count)`` runs of consecutive frames."""
    runs: list[tuple[int, int]] = []
    for pfn in sorted(set(pfns)):
        if runs and runs[-1][0] + runs[-1][1] == pfn:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((pfn, 1))
    return runs


def discard_range(memory: GuestMemory, gpa: int, length: int) -> int:
    """Give ``[gpa, gpa+length)`` back to the host, region by region; the bytes discarded.

    The range has been checked to lie in guest RAM page by page; a run of frames may still straddle
    two adjacent regions, so it is split at region ends.
    """
    done = 0
    while done < length:
        start = gpa + done
        end = min(gpa + length, memory.region_end(start))
        memory.zero(start, end - start)
        done += end - start
    return done


class BalloonDevice(VirtioDevice):
    device_type = spec.VIRTIO_ID_BALLOON

    def __init__(
        self,
        amount_mib: int,
        deflate_on_oom: bool = False,
        stats_polling_interval_s: int = 0,
        free_page_reporting: bool = False,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        features = 0
        if deflate_on_oom:
            features |= 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM
        if stats_polling_interval_s > 0:
            features |= 1 << VIRTIO_BALLOON_F_STATS_VQ
        if free_page_reporting:
            features |= 1 << VIRTIO_BALLOON_F_FREE_PAGE_REPORTING
        names = ["inflate", "deflate"]
        if stats_polling_interval_s > 0:
            names.append("stats")
        if free_page_reporting:
            names.append("reporting")
        super().__init__(features, [Queue(QUEUE_SIZE) for _ in names], CONFIG.pack(0, 0, 0))
        self.queue_index = {name: i for i, name in enumerate(names)}
        self.deflate_on_oom = deflate_on_oom
        self.free_page_reporting = free_page_reporting
        self.stats_polling_interval_s = stats_polling_interval_s
        self.clock = clock
        self.counters = BalloonCounters()
        self.target_pages = 0
        self.actual_pages = 0
        self.inflated_pages = 0  # frames the device has discarded (for tests and logs)
        self.invalid_pfns = 0
        self.latest_stats: dict[str, int] = {}
        self._stats_head: int | None = None
        self._stats_deadline_ns: int | None = None
        self._host: Any = None
        self.set_target(amount_mib * PAGES_PER_MIB)

    def statistics(self):  # noqa: ANN201 - BalloonStatistics (a make_dataclass type)
        return BalloonStatistics(**{f.name: getattr(self.counters, f.name) for f in fields(BalloonCounters)})

    # --- configuration space ------------------------------------------------------------------------
    def _store_config(self) -> None:
        self.config_space[:] = CONFIG.pack(self.target_pages, self.actual_pages, 0)

    def write_config(self, offset: int, data: bytes) -> None:
        """Only ``actual`` (bytes 4..7) is the driver's to write; other writes are ignored."""
        with self.lock:
            if offset < ACTUAL_OFFSET or offset + len(data) > ACTUAL_OFFSET + 4:
                return
            raw = bytearray(self.config_space[ACTUAL_OFFSET : ACTUAL_OFFSET + 4])
            raw[offset - ACTUAL_OFFSET : offset - ACTUAL_OFFSET + len(data)] = data
            self.actual_pages = int.from_bytes(raw, "little")
            self._store_config()

    def set_target(self, pages: int) -> None:
        """A new ``num_pages`` (PUT/PATCH /balloon); an active driver hears of it by interrupt."""
        with self.lock:
            self.target_pages = pages
            self._store_config()
            self.config_changed()

    @property
    def target_mib(self) -> int:
        return self.target_pages // PAGES_PER_MIB

    @property
    def stats_enabled(self) -> bool:
        return "stats" in self.queue_index

    def balloon_stats(self) -> dict[str, int]:
        """GET /balloon/statistics: target/actual in pages and MiB, then what the guest reported."""
        with self.lock:
            out = {
                "target_pages": self.target_pages,
                "actual_pages": self.actual_pages,
                "target_mib": self.target_pages // PAGES_PER_MIB,
                "actual_mib": self.actual_pages // PAGES_PER_MIB,
            }
            out.update(self.latest_stats)
            return out

    def set_stats_interval(self, seconds: int) -> None:
        """PATCH /balloon/statistics (the caller checked it stays non-zero): refresh at once."""
        with self.lock:
            self.stats_polling_interval_s = seconds
            if self.is_activated:
                self._stats_deadline_ns = self.clock()
        if self._host is not None:
            self._host.rearm()

    # --- life cycle -------------------------------------------------------------------------------
    def on_activate(self) -> None:
        if self.stats_enabled:
            self._stats_deadline_ns = self.clock() + self.stats_polling_interval_s * NANOS_PER_S

    def on_reset(self) -> None:
        self._stats_head = None
        self._stats_deadline_ns = None

    def attach_host(self, host: Any) -> None:
        self._host = host

    # --- queue processing ---------------------------------------------------------------------------
    def on_queue_fault(self) -> None:
        self.counters.event_fails += 1

    def process_queue(self, index: int) -> None:
        handlers = {
            "inflate": self._inflate,
            "deflate": self._deflate,
            "stats": self._stats,
            "reporting": self._report,
        }
        name = next(n for n, i in self.queue_index.items() if i == index)
        queue = self.queues[index]
        completed = 0
        while (chain := queue.pop()) is not None:
            used = handlers[name](chain)
            if used is None:
                continue  # kept (the statistics buffer)
            queue.add_used(chain.head, used)
            completed += 1
        if completed:
            self.signal_used_queue(index)

    def _inflate(self, chain: DescriptorChain) -> int:
        memory = self.memory
        assert memory is not None
        descriptors = chain.descriptors
        if (
            any(d.is_write_only or d.len % 4 for d in descriptors)
            or sum(d.len for d in descriptors) > MAX_PFNS_PER_CHAIN * 4
        ):
            self.counters.event_fails += 1
            return 0
        self.counters.inflate_count += 1
        pfns: list[int] = []
        for d in descriptors:
            for (pfn,) in struct.iter_unpack("<I", memory.slice(d.addr, d.len)):
                if memory.contains(pfn << PAGE_SHIFT, PAGE_SIZE):
                    pfns.append(pfn)
                else:
                    self.invalid_pfns += 1
        for first, count in coalesce(pfns):
            self.inflated_pages += discard_range(memory, first << PAGE_SHIFT, count << PAGE_SHIFT) >> PAGE_SHIFT
        return 0

    def _deflate(self, chain: DescriptorChain) -> int:
        self.counters.deflate_count += 1
        return 0

    def _stats(self, chain: DescriptorChain) -> int | None:
        memory = self.memory
        assert memory is not None
        readable = chain.readable()
        if chain.writable() or any(d.len % STAT.size for d in readable):
            self.counters.stats_update_fails += 1
            return 0
        update: dict[str, int] = {}
        for d in readable:
            for tag, value in STAT.iter_unpack(memory.slice(d.addr, d.len)):
                name = STAT_NAMES.get(tag)
                if name is not None:  # tags newer than this table are ignored
                    update[name] = value
        self.latest_stats.update(update)
        self.counters.stats_updates_count += 1
        if self._stats_head is not None:
            # A second buffer without our asking: give the older one back, keep the newer.
            self.queues[self.queue_index["stats"]].add_used(self._stats_head, 0)
        self._stats_head = chain.head
        return None

    def _report(self, chain: DescriptorChain) -> int:
        memory = self.memory
        assert memory is not None
        self.counters.free_page_report_count += 1
        for d in chain.descriptors:
            self.counters.free_page_report_freed += discard_range(memory, d.addr, d.len)
        return 0

    # --- statistics timer -----------------------------------------------------------------------
    def timer_deadline_ns(self) -> int | None:
        return self._stats_deadline_ns

    def process_rate_limiter_event(self) -> None:
        """The device timer fired: when statistics are due, hand the kept buffer back."""
        with self.lock:
            deadline = self._stats_deadline_ns
            now = self.clock()
            if deadline is None or now < deadline or not self.is_activated:
                return
            self._stats_deadline_ns = now + self.stats_polling_interval_s * NANOS_PER_S
            if self.broken or self._stats_head is None:
                return
            index = self.queue_index["stats"]
            self.queues[index].add_used(self._stats_head, 0)
            self._stats_head = None
            self.signal_used_queue(index)


__all__ = ["BalloonDevice", "BalloonStatistics", "MAX_PFNS_PER_CHAIN", "STAT_NAMES", "coalesce", "discard_range"]
