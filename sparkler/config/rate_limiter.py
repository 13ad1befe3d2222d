"""The ``rate_limiter`` body of drives (and later network interfaces): two optional token buckets.

Firecracker's ``RateLimiterConfig``: ``bandwidth`` (bytes) and ``ops`` (operations), each
``{size, one_time_burst?, refill_time}`` with ``refill_time`` in milliseconds. A bucket with
``size == 0`` or ``refill_time == 0`` is no limit (catalog section 6).
"""

from __future__ import annotations

import msgspec

from sparkler.config.serial import TokenBucketConfig
from sparkler.ratelimit import RateLimiter


def _limits(bucket: TokenBucketConfig) -> tuple[int, int, int]:
    """``(size, one_time_burst, refill_time_ms)`` for :meth:`RateLimiter.from_limits`."""
    return bucket.size, bucket.one_time_burst or 0, bucket.refill_time


class RateLimiterConfig(msgspec.Struct, forbid_unknown_fields=True):
    bandwidth: TokenBucketConfig | None = None
    ops: TokenBucketConfig | None = None

    def build(self) -> RateLimiter:
        return RateLimiter.from_limits(
            _limits(self.bandwidth) if self.bandwidth is not None else None,
            _limits(self.ops) if self.ops is not None else None,
        )

    @property
    def is_unlimited(self) -> bool:
        return all(b is None or b.size == 0 or b.refill_time == 0 for b in (self.bandwidth, self.ops))


def build_rate_limiter(config: RateLimiterConfig | None) -> RateLimiter | None:
    """A limiter, or None when the config sets no effective bucket."""
    if config is None or config.is_unlimited:
        return None
    return config.build()


__all__ = ["RateLimiterConfig", "TokenBucketConfig", "build_rate_limiter"]
