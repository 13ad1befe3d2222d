"""PUT /serial body (Firecracker's ``SerialDevice``, added in 1.14).

Not part of the config file and not reported by GET /vm/config (as in Firecracker).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

U64_MAX = 2**64 - 1
# msgspec bounds must fit an int64; the u64 upper bound is checked in __post_init__.
U64 = Annotated[int, msgspec.Meta(ge=0)]


def check_u64(name: str, value: int | None) -> None:
    if value is not None and value > U64_MAX:
        raise ValueError(f"Expected `int` <= {U64_MAX} - at `$.{name}`")


class TokenBucketConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Firecracker's ``TokenBucket``: ``size`` tokens refilled every ``refill_time`` ms."""

    size: U64
    refill_time: U64
    one_time_burst: U64 | None = None

    def __post_init__(self) -> None:
        check_u64("size", self.size)
        check_u64("refill_time", self.refill_time)
        check_u64("one_time_burst", self.one_time_burst)


class SerialConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    serial_out_path: str | None = None
    rate_limiter: TokenBucketConfig | None = None
