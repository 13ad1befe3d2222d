"""Token-bucket rate limiting, as Firecracker's ``rate_limiter`` crate (catalog section 6).

A :class:`TokenBucket` holds up to ``size`` tokens (bytes or operations) and starts full. It refills
linearly, ``size`` tokens per ``refill_time`` ms; the refill is lazy -- computed from the elapsed
time when a request finds the budget short -- in integer arithmetic on the fraction
``size / refill_time_ns`` reduced by its gcd, and the time of a fractional token is carried over to
the next refill, so no token is lost or created by rounding. ``one_time_burst`` is extra credit that
is spent *before* the budget and never refills.

A request for more than ``size`` tokens is granted anyway ("over-consumption"): it empties the
bucket and blocks the limiter for the time the excess takes to refill, so the average rate holds.

A :class:`RateLimiter` has two optional buckets, ``bandwidth`` (bytes) and ``ops``; a bucket with
``size == 0`` or ``refill_time == 0`` is no bucket (no limit). When a bucket runs dry the limiter
*blocks*: it arms a timer (100 ms, or the over-consumption time) and refuses everything until
the timer fires. Devices charge one op and then the bytes of a request and give the op back
(:meth:`RateLimiter.manual_replenish`) when the bytes are refused; a refused request stays in its
queue until the timer fires.

Pure arithmetic: time comes from a caller-supplied clock (nanoseconds, ``time.monotonic_ns`` by
default), and the timer is a deadline (:attr:`RateLimiter.timer_deadline_ns`) the device's event
loop arms a timerfd with; when it fires the loop calls :meth:`RateLimiter.on_timer`.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

NANOS_PER_MS = 1_000_000
REFILL_TIMER_INTERVAL_MS = 100  # Firecracker's REFILL_TIMER_INTERVAL_MS

Clock = Callable[[], int]


class Reduction(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    OVER_CONSUMPTION = "over-consumption"


class TokenType(enum.Enum):
    BYTES = "bytes"
    OPS = "ops"


@dataclass(frozen=True)
class BucketState:
    """Plain values of a bucket (for GET /vm/config, snapshots and tests)."""

    size: int
    one_time_burst: int
    initial_one_time_burst: int
    refill_time_ms: int
    budget: int


class TokenBucket:
    """One bucket; ``now_ns`` is passed in by the owner (pure, no clock of its own)."""

    def __init__(self, size: int, one_time_burst: int, refill_time_ms: int, now_ns: int) -> None:
        if size <= 0 or refill_time_ms <= 0:
            raise ValueError("a token bucket needs size > 0 and refill_time > 0 (else use None: no limit)")
        if one_time_burst < 0:
            raise ValueError("one_time_burst must not be negative")
        self.size = size
        self.refill_time_ms = refill_time_ms
        self.one_time_burst = one_time_burst
        self.initial_one_time_burst = one_time_burst
        self.budget = size  # a bucket starts full
        self.last_update = now_ns
        refill_ns = refill_time_ms * NANOS_PER_MS
        common = math.gcd(size, refill_ns)
        # tokens for a time delta = delta_ns * capacity // refill, in lowest terms.
        self._capacity = size // common
        self._refill = refill_ns // common

    @classmethod
    def create(cls, size: int, one_time_burst: int, refill_time_ms: int, now_ns: int) -> TokenBucket | None:
        """A bucket, or None ("no limit") when ``size`` or ``refill_time_ms`` is 0."""
        if size == 0 or refill_time_ms == 0:
            return None
        return cls(size, one_time_burst, refill_time_ms, now_ns)

    def refill(self, now_ns: int) -> None:
        """Add the tokens earned since the last update (capped at ``size``), carrying fractions."""
        delta = now_ns - self.last_update
        if delta <= 0:
            return
        if delta >= self.refill_time_ms * NANOS_PER_MS:
            self.budget = self.size
            self.last_update = now_ns
            return
        tokens = delta * self._capacity // self._refill
        # Advance last_update only by the time those whole tokens took (rounded up), so the
        # fraction of a token earned so far counts towards the next refill.
        self.last_update += -(-tokens * self._refill // self._capacity)
        self.budget = min(self.budget + tokens, self.size)

    def reduce(self, tokens: int, now_ns: int) -> tuple[Reduction, int]:
        """Take ``tokens``: (SUCCESS, 0), (FAILURE, 0) or (OVER_CONSUMPTION, excess tokens)."""
        if self.one_time_burst > 0:
            if self.one_time_burst >= tokens:
                self.one_time_burst -= tokens
                self.last_update = now_ns
                return Reduction.SUCCESS, 0
            tokens -= self.one_time_burst
            self.one_time_burst = 0
        if tokens > self.budget:
            self.refill(now_ns)
            if tokens > self.size:
                excess = tokens - self.budget
                self.budget = 0
                return Reduction.OVER_CONSUMPTION, excess
            if tokens > self.budget:
                return Reduction.FAILURE, 0
        self.budget -= tokens
        return Reduction.SUCCESS, 0

    def force_replenish(self, tokens: int) -> None:
        """Give tokens back: to the one-time burst first while it is below its initial value."""
        if self.one_time_burst < self.initial_one_time_burst:
            self.one_time_burst = min(self.one_time_burst + tokens, self.initial_one_time_burst)
            return
        self.budget = min(self.budget + tokens, self.size)

    def state(self) -> BucketState:
        return BucketState(self.size, self.one_time_burst, self.initial_one_time_burst, self.refill_time_ms, self.budget)


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()  # update_buckets(): leave this bucket as it is


class RateLimiter:
    """Bandwidth and ops buckets plus the "blocked until the timer fires" state."""

    def __init__(
        self,
        bandwidth: TokenBucket | None = None,
        ops: TokenBucket | None = None,
        clock: Clock = time.monotonic_ns,
    ) -> None:
        self.bandwidth = bandwidth
        self.ops = ops
        self.clock = clock
        self.timer_deadline_ns: int | None = None

    @classmethod
    def from_limits(
        cls,
        bandwidth: tuple[int, int, int] | None = None,
        ops: tuple[int, int, int] | None = None,
        clock: Clock = time.monotonic_ns,
    ) -> RateLimiter:
        """From ``(size, one_time_burst, refill_time_ms)`` triples (the API's TokenBucket bodies)."""
        now = clock()
        return cls(
            TokenBucket.create(*bandwidth, now) if bandwidth else None,
            TokenBucket.create(*ops, now) if ops else None,
            clock,
        )

    @property
    def is_blocked(self) -> bool:
        return self.timer_deadline_ns is not None

    def _bucket(self, token_type: TokenType) -> TokenBucket | None:
        return self.bandwidth if token_type is TokenType.BYTES else self.ops

    def consume(self, tokens: int, token_type: TokenType) -> bool:
        """Try to take ``tokens``; False (and the timer armed) when the limiter must wait."""
        if self.timer_deadline_ns is not None:
            return False
        bucket = self._bucket(token_type)
        if bucket is None:
            return True
        now = self.clock()
        result, excess = bucket.reduce(tokens, now)
        if result is Reduction.SUCCESS:
            return True
        if result is Reduction.FAILURE:
            self.timer_deadline_ns = now + REFILL_TIMER_INTERVAL_MS * NANOS_PER_MS
            return False
        # Over-consumption: granted, but nothing more until the excess has refilled
        # (excess / size * refill_time, rounded up to a whole nanosecond, at least 1).
        wait = max(1, -(-excess * bucket.refill_time_ms * NANOS_PER_MS // bucket.size))
        self.timer_deadline_ns = now + wait
        return True

    def manual_replenish(self, tokens: int, token_type: TokenType) -> None:
        bucket = self._bucket(token_type)
        if bucket is not None:
            bucket.force_replenish(tokens)

    def on_timer(self) -> None:
        """The refill timer fired: the device may retry its queue."""
        self.timer_deadline_ns = None

    def update_buckets(
        self,
        bandwidth: TokenBucket | None | _Unchanged = UNCHANGED,
        ops: TokenBucket | None | _Unchanged = UNCHANGED,
    ) -> None:
        """PATCH semantics: UNCHANGED keeps a bucket, None disables it, a bucket replaces it (full)."""
        if not isinstance(bandwidth, _Unchanged):
            self.bandwidth = bandwidth
        if not isinstance(ops, _Unchanged):
            self.ops = ops
