"""TokenAuthority: TTL bounds, expiry on the monotonic clock, forgery and tampering rejected."""

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkler.mmds.token import MAX_TTL_SECONDS, TOKEN_LENGTH_LIMIT, InvalidTtl, TokenAuthority


class Clock:
    def __init__(self):
        self.ms = 5_000

    def __call__(self):
        return self.ms


@pytest.mark.parametrize("ttl", [0, -1, MAX_TTL_SECONDS + 1])
def test_token_ttl_out_of_range_is_refused(ttl):
    with pytest.raises(InvalidTtl, match=f"Invalid time to live value provided for token: {ttl}."):
        TokenAuthority().generate(ttl)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, MAX_TTL_SECONDS), st.integers(0, 30_000_000))
def test_token_valid_exactly_until_expiry(ttl, elapsed_ms):
    clock = Clock()
    authority = TokenAuthority("vm", clock_ms=clock)
    token = authority.generate(ttl)
    assert len(token) <= TOKEN_LENGTH_LIMIT
    clock.ms += elapsed_ms
    assert authority.is_valid(token) == (elapsed_ms < ttl * 1000)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_token_random_strings_are_invalid(text):
    assert TokenAuthority("vm").is_valid(text) is False


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 35), st.integers(1, 255))
def test_token_any_flipped_bit_is_invalid(index, mask):
    authority = TokenAuthority("vm")
    raw = bytearray(base64.b64decode(authority.generate(60)))
    raw[index] ^= mask
    assert not authority.is_valid(base64.b64encode(bytes(raw)).decode())


def test_token_bound_to_instance_id():
    a = TokenAuthority("vm-a")
    token = a.generate(60)
    a.set_aad("vm-b")
    assert not a.is_valid(token)
