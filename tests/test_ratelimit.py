"""Token buckets and rate limiters (catalog section 6), on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkler.ratelimit import (
    NANOS_PER_MS,
    REFILL_TIMER_INTERVAL_MS,
    RateLimiter,
    Reduction,
    TokenBucket,
    TokenType,
)

MS = NANOS_PER_MS


class FakeClock:
    def __init__(self, now: int = 0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance_ms(self, ms: float) -> None:
        self.now += int(ms * MS)


def test_token_bucket_starts_full():
    bucket = TokenBucket(1000, 0, 100, 0)
    assert bucket.budget == 1000


@pytest.mark.parametrize("size,refill", [(0, 100), (100, 0), (0, 0)])
def test_token_bucket_zero_size_or_refill_means_no_limit(size, refill):
    assert TokenBucket.create(size, 5, refill, 0) is None


def test_token_bucket_refills_linearly():
    bucket = TokenBucket(1000, 0, 100, 0)  # 10 tokens per ms
    assert bucket.reduce(1000, 0) == (Reduction.SUCCESS, 0)
    assert bucket.reduce(1, 0) == (Reduction.FAILURE, 0)
    assert bucket.reduce(250, 25 * MS) == (Reduction.SUCCESS, 0)  # 250 tokens earned in 25 ms
    assert bucket.budget == 0


def test_token_bucket_full_refill_time_refills_to_size():
    bucket = TokenBucket(1000, 0, 100, 0)
    bucket.reduce(1000, 0)
    bucket.refill(10_000 * MS)
    assert bucket.budget == 1000


def test_token_bucket_fraction_of_a_token_is_carried_over():
    bucket = TokenBucket(1, 0, 1, 0)  # one token per ms
    bucket.reduce(1, 0)
    bucket.refill(MS * 6 // 10)  # 0.6 token: nothing yet
    assert bucket.budget == 0
    bucket.refill(MS * 12 // 10)  # 1.2 tokens in total
    assert bucket.budget == 1


def test_token_bucket_one_time_burst_is_spent_first_and_never_refills():
    bucket = TokenBucket(100, 50, 100, 0)
    assert bucket.reduce(30, 0) == (Reduction.SUCCESS, 0)
    assert (bucket.one_time_burst, bucket.budget) == (20, 100)
    assert bucket.reduce(50, 0) == (Reduction.SUCCESS, 0)  # 20 from the burst, 30 from the budget
    assert (bucket.one_time_burst, bucket.budget) == (0, 70)
    bucket.refill(10_000 * MS)
    assert bucket.one_time_burst == 0


def test_token_bucket_over_consumption_empties_bucket_and_reports_excess():
    bucket = TokenBucket(100, 0, 100, 0)
    assert bucket.reduce(250, 0) == (Reduction.OVER_CONSUMPTION, 150)
    assert bucket.budget == 0


def test_token_bucket_force_replenish_refills_burst_first():
    bucket = TokenBucket(100, 10, 100, 0)
    bucket.reduce(10, 0)
    bucket.force_replenish(15)
    assert (bucket.one_time_burst, bucket.budget) == (10, 100)
    bucket.reduce(60, 0)  # 10 from the burst, 50 from the budget
    bucket.force_replenish(1000)  # the burst is below its initial value: only it is refilled
    assert (bucket.one_time_burst, bucket.budget) == (10, 50)
    bucket.force_replenish(1000)
    assert bucket.budget == 100


def test_rate_limiter_without_buckets_never_throttles():
    limiter = RateLimiter()
    assert all(limiter.consume(10**12, TokenType.BYTES) for _ in range(10))
    assert not limiter.is_blocked


def test_rate_limiter_failure_blocks_for_100_ms_until_timer():
    clock = FakeClock()
    limiter = RateLimiter.from_limits(ops=(2, 0, 1000), clock=clock)
    assert limiter.consume(1, TokenType.OPS)
    assert limiter.consume(1, TokenType.OPS)
    assert not limiter.consume(1, TokenType.OPS)
    assert limiter.timer_deadline_ns == REFILL_TIMER_INTERVAL_MS * MS
    clock.advance_ms(2000)
    assert not limiter.consume(1, TokenType.OPS)  # still blocked: the timer has not been handled
    limiter.on_timer()
    assert limiter.consume(1, TokenType.OPS)


def test_rate_limiter_blocked_refuses_other_bucket_too():
    clock = FakeClock()
    limiter = RateLimiter.from_limits(bandwidth=(100, 0, 100), ops=(1, 0, 100), clock=clock)
    limiter.consume(1, TokenType.OPS)
    assert not limiter.consume(1, TokenType.OPS)
    assert not limiter.consume(1, TokenType.BYTES)


def test_rate_limiter_over_consumption_granted_and_blocks_for_excess_time():
    clock = FakeClock()
    limiter = RateLimiter.from_limits(bandwidth=(1000, 0, 100), clock=clock)
    assert limiter.consume(3000, TokenType.BYTES)  # 2000 excess = 2 refill times
    assert limiter.timer_deadline_ns == 200 * MS


def test_rate_limiter_tiny_over_consumption_still_arms_a_timer():
    clock = FakeClock()
    limiter = RateLimiter.from_limits(bandwidth=(10**9, 0, 1), clock=clock)
    limiter.consume(10**9 - 1, TokenType.BYTES)
    assert limiter.consume(10**9 + 1, TokenType.BYTES)
    assert limiter.timer_deadline_ns is not None and limiter.timer_deadline_ns > 0


def test_rate_limiter_manual_replenish_refunds_op():
    limiter = RateLimiter.from_limits(ops=(1, 0, 1000), clock=FakeClock())
    assert limiter.consume(1, TokenType.OPS)
    limiter.manual_replenish(1, TokenType.OPS)
    assert limiter.consume(1, TokenType.OPS)


def test_rate_limiter_update_buckets_patch_semantics():
    clock = FakeClock()
    limiter = RateLimiter.from_limits(bandwidth=(10, 0, 100), ops=(10, 0, 100), clock=clock)
    old_ops = limiter.ops
    limiter.update_buckets(bandwidth=TokenBucket(50, 0, 100, clock()))
    assert limiter.bandwidth.size == 50 and limiter.ops is old_ops
    limiter.update_buckets(ops=None)
    assert limiter.ops is None


# --- properties ---------------------------------------------------------------------------------
sizes = st.integers(1, 10**6)
refills = st.integers(1, 10_000)  # ms
bursts = st.integers(0, 10**6)
steps = st.lists(st.tuples(st.integers(0, 50 * MS), st.integers(0, 2 * 10**6)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(sizes, bursts, refills, steps)
def test_token_bucket_budget_stays_within_bounds(size, burst, refill, ops):
    bucket = TokenBucket(size, burst, refill, 0)
    now = 0
    for dt, tokens in ops:
        now += dt
        bucket.reduce(tokens, now)
        assert 0 <= bucket.budget <= size
        assert 0 <= bucket.one_time_burst <= burst
        assert bucket.budget + bucket.one_time_burst <= size + burst


@settings(max_examples=300, deadline=None)
@given(sizes, bursts, refills, steps)
def test_token_bucket_never_grants_more_than_size_burst_and_refill(size, burst, refill, ops):
    """Without over-consumption, granted tokens <= size + burst + elapsed * rate."""
    bucket = TokenBucket(size, burst, refill, 0)
    now = granted = 0
    for dt, tokens in ops:
        now += dt
        tokens = min(tokens, size)
        if bucket.reduce(tokens, now)[0] is Reduction.SUCCESS:
            granted += tokens
        assert granted <= size + burst + now * size // (refill * MS)


@settings(max_examples=300, deadline=None)
@given(sizes, refills, st.lists(st.integers(1, 10 * MS), min_size=1, max_size=30))
def test_token_bucket_refill_is_linear_with_carry(size, refill, deltas):
    bucket = TokenBucket(size, 0, refill, 0)
    bucket.reduce(size, 0)
    now = 0
    calls = 0
    for dt in deltas:
        if now + dt >= refill * MS:
            break
        now += dt
        bucket.refill(now)
        calls += 1
    ideal = now * size // (refill * MS)
    # Whole tokens only; rounding can lose less than one nanosecond's worth per call, never gain.
    assert ideal - calls * (size // (refill * MS) + 1) <= bucket.budget <= ideal


@settings(max_examples=200, deadline=None)
@given(sizes, refills, st.lists(st.tuples(st.integers(0, 20 * MS), st.integers(1, 3 * 10**6)), max_size=60))
def test_rate_limiter_average_rate_holds_with_over_consumption(size, refill, ops):
    """Honouring the timer, total granted <= size + rate * elapsed + the last request's excess."""
    clock = FakeClock()
    limiter = RateLimiter.from_limits(bandwidth=(size, 0, refill), clock=clock)
    granted = 0
    last = 0
    for dt, tokens in ops:
        clock.now += dt
        if limiter.timer_deadline_ns is not None and clock.now >= limiter.timer_deadline_ns:
            limiter.on_timer()
        if limiter.consume(tokens, TokenType.BYTES):
            granted += tokens
            last = tokens
        assert granted <= size + clock.now * size // (refill * MS) + last


def test_rate_limiter_update_installs_a_new_full_bucket_and_zero_disables():
    # PATCH /drives with a bucket: a *new, full* bucket replaces the drained one (catalog 6);
    # a bucket with size 0 or refill_time 0 is no bucket at all.
    clock = FakeClock()
    limiter = RateLimiter.from_limits(ops=(5, 0, 1000), clock=clock)
    assert all(limiter.consume(1, TokenType.OPS) for _ in range(5))
    assert not limiter.consume(1, TokenType.OPS)  # drained: blocked until the timer
    limiter.on_timer()
    limiter.update_buckets(ops=TokenBucket.create(20, 0, 1000, clock()))
    assert limiter.ops.budget == 20
    assert all(limiter.consume(1, TokenType.OPS) for _ in range(20))
    assert not limiter.consume(1, TokenType.OPS)
    limiter.on_timer()
    limiter.update_buckets(ops=TokenBucket.create(0, 0, 1000, clock()))
    assert limiter.ops is None
    assert all(limiter.consume(1, TokenType.OPS) for _ in range(1000))
