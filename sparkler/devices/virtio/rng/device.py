"""virtio-rng device (virtio 1.2 section 5.4) with Firecracker's behaviour (catalog 5.4).

One request queue of 256 entries, no device-specific features, no configuration space. The driver
posts chains of device-writable buffers; the device fills them with random bytes and returns each
chain with the number of bytes written. Bytes come from the host kernel's CSPRNG: ``readv(2)`` on
``/dev/urandom`` straight into ``memoryview`` slices of guest RAM (zero-copy, one system call per
request), or ``getrandom(2)`` and one copy where ``/dev/urandom`` cannot be opened (a jail); a request is filled with at most :data:`MAX_ENTROPY_BYTES` (64 KiB, Firecracker's cap).

Per chain:

* a chain with a device-readable buffer is malformed: returned with length 0, counted in
  ``entropy_event_fails`` (the device keeps serving);
* a zero-length request is returned with length 0 and costs nothing;
* the rate limiter is charged one op, then the bytes; if the bytes are refused the op is given back
  (``manual_replenish``) and the chain is put back on the ring until the limiter's timer fires
  (:meth:`process_rate_limiter_event`), counted in ``entropy_rate_limiter_throttled``;
* a host read failure is counted in ``host_rng_fails`` and the chain returned with length 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, make_dataclass

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.device import VirtioDevice
from sparkler.devices.virtio.queue import DescriptorChain, Queue
from sparkler.ratelimit import RateLimiter, TokenType

QUEUE_SIZE = 256
REQUEST_QUEUE = 0
MAX_ENTROPY_BYTES = 64 * 1024  # Firecracker caps each request at 64 KiB


@dataclass
class EntropyCounters:
    """Cumulative counters (Firecracker's ``entropy`` metric names)."""

    activate_fails: int = 0
    entropy_event_fails: int = 0
    entropy_event_count: int = 0
    entropy_bytes: int = 0
    host_rng_fails: int = 0
    entropy_rate_limiter_throttled: int = 0
    rate_limiter_event_count: int = 0


EntropyStatistics = make_dataclass(
    "EntropyStatistics", [(f.name, int, f.default) for f in fields(EntropyCounters)], frozen=True
)


class UrandomSource:
    """``/dev/urandom`` opened once; :meth:`fill` reads into guest memory with ``readv``."""

    def __init__(self, path: str = "/dev/urandom") -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def fill(self, views: list[memoryview]) -> int:
        total = sum(len(v) for v in views)
        done = 0
        while done < total:
            pending = _skip(views, done)
            n = os.readv(self.fd, pending)
            if n <= 0:
                raise OSError(0, "short read from the host random source")
            done += n
        return done

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class GetrandomSource:
    """``getrandom(2)`` (copies once): used where ``/dev/urandom`` cannot be opened, e.g. in a jail
    without a ``/dev/urandom`` node."""

    def fill(self, views: list[memoryview]) -> int:
        total = 0
        for view in views:
            done = 0
            while done < len(view):
                chunk = os.getrandom(len(view) - done)
                view[done : done + len(chunk)] = chunk
                done += len(chunk)
            total += done
        return total

    def close(self) -> None:
        pass


def default_source() -> UrandomSource | GetrandomSource:
    try:
        return UrandomSource()
    except OSError:
        return GetrandomSource()


def _skip(views: list[memoryview], count: int) -> list[memoryview]:
    """``views`` without their first ``count`` bytes."""
    out = []
    for v in views:
        if count >= len(v):
            count -= len(v)
            continue
        out.append(v[count:])
        count = 0
    return out


class EntropyDevice(VirtioDevice):
    device_type = spec.VIRTIO_ID_RNG

    def __init__(
        self, rate_limiter: RateLimiter | None = None, source: UrandomSource | GetrandomSource | None = None
    ) -> None:
        super().__init__(0, [Queue(QUEUE_SIZE)])
        self.rate_limiter = rate_limiter
        self.source = source if source is not None else default_source()
        self.counters = EntropyCounters()

    def statistics(self):  # noqa: ANN201 - EntropyStatistics (a make_dataclass type)
        return EntropyStatistics(**{f.name: getattr(self.counters, f.name) for f in fields(EntropyCounters)})

    # --- queue processing ---------------------------------------------------------------------------
    def queue_notify(self, index: int) -> None:
        with self.lock:
            self.counters.entropy_event_count += 1
            super().queue_notify(index)

    def on_queue_fault(self) -> None:
        self.counters.entropy_event_fails += 1

    def process_queue(self, index: int) -> None:
        queue = self.queues[index]
        completed = 0
        while True:
            if self.rate_limiter is not None and self.rate_limiter.is_blocked:
                self.counters.entropy_rate_limiter_throttled += 1
                break
            chain = queue.pop_or_enable_notification()
            if chain is None:
                break
            if any(not d.is_write_only for d in chain.descriptors):
                self.counters.entropy_event_fails += 1
                queue.add_used(chain.head, 0)
                completed += 1
                continue
            wanted = min(sum(d.len for d in chain.descriptors), MAX_ENTROPY_BYTES)
            if wanted and not self._charge(wanted):
                queue.undo_pop()
                self.counters.entropy_rate_limiter_throttled += 1
                break
            queue.add_used(chain.head, self._fill(chain, wanted) if wanted else 0)
            completed += 1
        if completed:
            self.signal_used_queue(index)

    def _charge(self, nbytes: int) -> bool:
        limiter = self.rate_limiter
        if limiter is None:
            return True
        if not limiter.consume(1, TokenType.OPS):
            return False
        if not limiter.consume(nbytes, TokenType.BYTES):
            limiter.manual_replenish(1, TokenType.OPS)
            return False
        return True

    def _fill(self, chain: DescriptorChain, wanted: int) -> int:
        memory = self.memory
        assert memory is not None  # activated
        views: list[memoryview] = []
        left = wanted
        for d in chain.descriptors:
            if left == 0:
                break
            take = min(d.len, left)
            if take:
                views.append(memory.slice(d.addr, take))
                left -= take
        try:
            written = self.source.fill(views)
        except OSError:
            self.counters.host_rng_fails += 1
            return 0
        self.counters.entropy_bytes += written
        return written

    # --- rate limiter -------------------------------------------------------------------------------
    def timer_deadline_ns(self) -> int | None:
        return self.rate_limiter.timer_deadline_ns if self.rate_limiter is not None else None

    def process_rate_limiter_event(self) -> None:
        with self.lock:
            self.counters.rate_limiter_event_count += 1
            if self.rate_limiter is not None:
                self.rate_limiter.on_timer()
            VirtioDevice.queue_notify(self, REQUEST_QUEUE)  # a retry, not a guest kick: not counted

    def close(self) -> None:
        self.source.close()


__all__ = ["EntropyDevice", "EntropyStatistics", "GetrandomSource", "MAX_ENTROPY_BYTES", "UrandomSource", "default_source"]
