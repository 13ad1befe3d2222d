"""MMDS V2 session tokens (catalog 7.3).

A guest asks for a token with ``PUT /latest/api/token`` and a time to live of 1..21600 seconds, then
sends it back on every GET. The VMM keeps no table of tokens: a token carries its own expiry time
and a MAC that only this process can compute, so it is valid while the MAC matches and the
expiry (CLOCK_MONOTONIC, milliseconds) lies in the future.

Layout (36 bytes, 48 characters of standard base64)::

    expiry_ms: u64 little-endian | nonce: 12 random bytes | tag: first 16 bytes of
    HMAC-SHA256(key, aad || expiry_ms || nonce)

The key is 32 random bytes per process (per ``TokenAuthority``), so tokens die with the process
(and with a snapshot restore into a new one), as Firecracker's do. The AAD is
``microvmid=<instance id>``. Firecracker seals the expiry with AES-256-GCM instead; the guest-visible
contract (opaque base64 text, at most 70 characters, TTL bounds, expiry, invalid after a restart)
is the same, and the standard library has HMAC but no AES. After 2**32 - 1 tokens the key is
replaced, which invalidates every earlier token (Firecracker's rule for its GCM nonces).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
import time
from collections.abc import Callable

MIN_TTL_SECONDS = 1
MAX_TTL_SECONDS = 21600
TOKEN_LENGTH_LIMIT = 70  # longer tokens are rejected without decoding
KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
MAX_TOKENS_PER_KEY = 2**32 - 1
_EXPIRY = struct.Struct("<Q")
_TOKEN_LEN = _EXPIRY.size + NONCE_LEN + TAG_LEN


class InvalidTtl(ValueError):
    def __init__(self, ttl: int) -> None:
        super().__init__(
            f"Invalid time to live value provided for token: {ttl}. Please provide a value between "
            f"{MIN_TTL_SECONDS} and {MAX_TTL_SECONDS}."
        )


def monotonic_ms() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1_000_000


class TokenAuthority:
    """Issues and checks session tokens. ``clock_ms`` and ``random_bytes`` are injectable for tests."""

    def __init__(
        self,
        instance_id: str = "",
        *,
        clock_ms: Callable[[], int] = monotonic_ms,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._clock_ms = clock_ms
        self._random = random_bytes
        self._key = random_bytes(KEY_LEN)
        self._issued = 0
        self.aad = b""
        self.set_aad(instance_id)

    def set_aad(self, instance_id: str) -> None:
        self.aad = f"microvmid={instance_id}".encode()

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._key, self.aad + body, hashlib.sha256).digest()[:TAG_LEN]

    def generate(self, ttl_seconds: int) -> str:
        """A new token valid for ``ttl_seconds``; raises InvalidTtl outside 1..21600."""
        if not MIN_TTL_SECONDS <= ttl_seconds <= MAX_TTL_SECONDS:
            raise InvalidTtl(ttl_seconds)
        if self._issued >= MAX_TOKENS_PER_KEY:
            self._key = self._random(KEY_LEN)
            self._issued = 0
        expiry = self._clock_ms() + ttl_seconds * 1000
        body = _EXPIRY.pack(expiry) + self._random(NONCE_LEN)
        self._issued += 1
        return base64.b64encode(body + self._tag(body)).decode("ascii")

    def is_valid(self, token: str) -> bool:
        """The token was issued here, for this AAD, and has not expired."""
        if len(token) > TOKEN_LENGTH_LIMIT:
            return False
        try:
            raw = base64.b64decode(token.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            return False
        if len(raw) != _TOKEN_LEN:
            return False
        body, tag = raw[: -TAG_LEN], raw[-TAG_LEN:]
        if not hmac.compare_digest(tag, self._tag(body)):
            return False
        (expiry,) = _EXPIRY.unpack_from(body)
        return bool(expiry > self._clock_ms())


__all__ = ["InvalidTtl", "MAX_TTL_SECONDS", "MIN_TTL_SECONDS", "TOKEN_LENGTH_LIMIT", "TokenAuthority"]
