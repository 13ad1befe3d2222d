"""PUT /entropy body and the config file's ``entropy`` section (Firecracker's ``EntropyDevice``).

One virtio-rng device per microVM, configured before boot; ``{}`` is valid. The optional
``rate_limiter`` has the drives' two buckets (``bandwidth`` in bytes, ``ops``); each request
costs one op plus the bytes it asks for (catalog 5.4, 6).
"""

from __future__ import annotations

import msgspec

from sparkler.config.rate_limiter import RateLimiterConfig


class EntropyConfig(msgspec.Struct, forbid_unknown_fields=True):
    rate_limiter: RateLimiterConfig | None = None

    def validate(self) -> None:
        """Nothing to check beyond the types (kept for symmetry with the other sections)."""


__all__ = ["EntropyConfig"]
