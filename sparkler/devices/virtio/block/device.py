"""virtio-blk device (virtio 1.2 section 5.2) with Firecracker's feature set (catalog 5.1).

One request queue of 256 entries. Features: VIRTIO_F_VERSION_1 and VIRTIO_RING_F_EVENT_IDX always,
VIRTIO_BLK_F_FLUSH with ``cache_type = Writeback``, VIRTIO_BLK_F_RO for a read-only drive; no
SEG_MAX, BLK_SIZE, topology, discard or multi-queue. Config space: ``capacity`` only (le64, in
512-byte sectors).

``process_queue`` drains the available ring: pop a chain, parse it (``request.py``), charge the
rate limiter (one op, then the data bytes for IN/OUT, refunding the op if the bytes are refused),
execute it on the backend (``io.py``), write the status byte, return the chain with the number of
bytes written into guest buffers (data + status), and after the batch raise at most one vring
interrupt (subject to notification suppression). A throttled chain is given back to the ring
(``undo_pop``) and the queue waits for the limiter's timer (:meth:`process_rate_limiter_event`).

``update_backend`` is PATCH /drives with ``path_on_host``: swap the file, recompute capacity and
disk id, and tell an active guest through a configuration-change interrupt.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, fields, make_dataclass

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.block.io import CacheType, DiskBackend, Outcome
from sparkler.devices.virtio.block.request import Rejected, Request, RequestType, parse
from sparkler.devices.virtio.device import VirtioDevice
from sparkler.devices.virtio.queue import Queue
from sparkler.ratelimit import RateLimiter, TokenType

QUEUE_SIZE = 256
REQUEST_QUEUE = 0
NUM_QUEUES = 1

_CAPACITY = struct.Struct("<Q")


@dataclass
class BlockCounters:
    """Cumulative per-drive counters (Firecracker's ``block_<id>`` metric names)."""

    activate_fails: int = 0
    cfg_fails: int = 0
    no_avail_buffer: int = 0
    event_fails: int = 0
    execute_fails: int = 0
    invalid_reqs_count: int = 0
    flush_count: int = 0
    queue_event_count: int = 0
    rate_limiter_event_count: int = 0
    update_count: int = 0
    update_fails: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    read_count: int = 0
    write_count: int = 0
    rate_limiter_throttled_events: int = 0


# A frozen copy of the counters, for metrics (same fields, immutable).
BlockStatistics = make_dataclass(
    "BlockStatistics", [(f.name, int, f.default) for f in fields(BlockCounters)], frozen=True
)


class BlockDevice(VirtioDevice):
    device_type = spec.VIRTIO_ID_BLOCK
    metrics_group = "block"  # metrics: "block_<drive_id>" groups plus the "block" aggregate

    def __init__(self, drive_id: str, backend: DiskBackend, rate_limiter: RateLimiter | None = None) -> None:
        features = 1 << spec.VIRTIO_RING_F_EVENT_IDX
        if backend.cache_type is CacheType.WRITEBACK:
            features |= 1 << spec.VIRTIO_BLK_F_FLUSH
        if backend.read_only:
            features |= 1 << spec.VIRTIO_BLK_F_RO
        super().__init__(features, [Queue(QUEUE_SIZE)], _CAPACITY.pack(backend.capacity_sectors))
        self.drive_id = drive_id
        self.backend = backend
        self.rate_limiter = rate_limiter
        self.counters = BlockCounters()

    @property
    def metrics_id(self) -> str:
        return self.drive_id

    @property
    def capacity_sectors(self) -> int:
        return self.backend.capacity_sectors

    def statistics(self):  # noqa: ANN201 - BlockStatistics (a make_dataclass type)
        return BlockStatistics(**{f.name: getattr(self.counters, f.name) for f in fields(BlockCounters)})

    # --- queue processing ---------------------------------------------------------------------------
    def queue_notify(self, index: int) -> None:
        with self.lock:
            self.counters.queue_event_count += 1
            super().queue_notify(index)

    def on_queue_fault(self) -> None:
        self.counters.event_fails += 1

    def process_queue(self, index: int) -> None:
        queue = self.queues[index]
        memory = self.memory
        assert memory is not None  # activated
        completed = 0
        while True:
            if self.rate_limiter is not None and self.rate_limiter.is_blocked:
                self.counters.rate_limiter_throttled_events += 1
                break
            chain = queue.pop_or_enable_notification()
            if chain is None:
                if completed == 0:
                    self.counters.no_avail_buffer += 1
                break
            parsed = parse(chain, memory, self.backend.capacity_sectors)
            if isinstance(parsed, Request) and not self._charge(parsed):
                queue.undo_pop()
                self.counters.rate_limiter_throttled_events += 1
                break
            used_len = self._complete(parsed)
            queue.add_used(chain.head, used_len)
            completed += 1
        if completed:
            self.signal_used_queue(index)

    def _charge(self, request: Request) -> bool:
        limiter = self.rate_limiter
        if limiter is None:
            return True
        if not limiter.consume(1, TokenType.OPS):
            return False
        if request.type in (RequestType.IN, RequestType.OUT) and not limiter.consume(request.data_len, TokenType.BYTES):
            limiter.manual_replenish(1, TokenType.OPS)
            return False
        return True

    def _complete(self, parsed: Request | Rejected) -> int:
        """Execute (or reject), write the status byte; the used length for the chain."""
        memory = self.memory
        assert memory is not None
        if isinstance(parsed, Rejected):
            self.counters.invalid_reqs_count += 1
            if parsed.status_gpa is None:
                return 0  # nowhere to put a status: returned with nothing written
            memory.write_u8(parsed.status_gpa, parsed.status)
            return 1
        outcome = self.backend.execute(parsed, memory)
        self._count(parsed, outcome)
        memory.write_u8(parsed.status_gpa, outcome.status)
        return outcome.bytes_to_guest + 1

    def _count(self, request: Request, outcome: Outcome) -> None:
        c = self.counters
        if outcome.status != spec.VIRTIO_BLK_S_OK:
            c.execute_fails += 1
            return
        match request.type:
            case RequestType.IN:
                c.read_count += 1
                c.read_bytes += outcome.bytes_to_guest
            case RequestType.OUT:
                c.write_count += 1
                c.write_bytes += outcome.bytes_from_guest
            case RequestType.FLUSH:
                c.flush_count += 1

    def timer_deadline_ns(self) -> int | None:
        return self.rate_limiter.timer_deadline_ns if self.rate_limiter is not None else None

    def process_rate_limiter_event(self) -> None:
        """The limiter's timer fired: unblock and retry the queue."""
        with self.lock:
            self.counters.rate_limiter_event_count += 1
            if self.rate_limiter is not None:
                self.rate_limiter.on_timer()
        self.queue_notify(REQUEST_QUEUE)

    # --- live updates (PATCH /drives) -----------------------------------------------------------------
    def update_backend(self, backend: DiskBackend) -> None:
        """Swap the backing file (new size, new disk id); the guest hears of it by a config interrupt."""
        with self.lock:
            old = self.backend
            self.backend = backend
            self.config_space[:] = _CAPACITY.pack(backend.capacity_sectors)
            self.counters.update_count += 1
            self.config_changed()
            if old is not backend:
                old.close()

    def update_rate_limiter(self, rate_limiter: RateLimiter | None) -> None:
        with self.lock:
            self.rate_limiter = rate_limiter

    def close(self) -> None:
        """Teardown: a Writeback drive is synced (catalog 5.1), then the file is closed."""
        with self.lock:
            if self.backend.cache_type is CacheType.WRITEBACK and self.backend.fd >= 0:
                try:
                    os.fsync(self.backend.fd)
                except OSError:
                    pass
            self.backend.close()
