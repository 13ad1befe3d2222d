"""pdu: the checksum shortcut equals RFC 1071's word-by-word sum; parsers refuse what they cannot read."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkler.mmds import pdu


def rfc1071_sum(data: bytes, initial: int = 0) -> int:
    if len(data) % 2:
        data += b"\0"
    total = initial + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3000), st.integers(0, 0xFFFF))
def test_pdu_ones_complement_sum_matches_rfc1071(data, initial):
    assert pdu.ones_complement_sum(data, initial) == rfc1071_sum(data, initial)


@pytest.mark.parametrize("data", [b"", b"\0\0", b"\xff\xff", b"\xff\xff\xff\xff", b"\x00\x01\xff\xfe"])
def test_pdu_ones_complement_sum_edge_cases(data):
    assert pdu.ones_complement_sum(data) == rfc1071_sum(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_pdu_parsers_raise_only_pdu_error(data):
    view = memoryview(data)
    for parse in (pdu.parse_ethernet, pdu.parse_arp, pdu.parse_ipv4, pdu.parse_tcp):
        try:
            parse(view)
        except pdu.PduError:
            pass


def test_pdu_tcp_option_running_past_header_is_refused():
    header = struct.pack("!HHIIBBHHH", 1, 80, 0, 0, 6 << 4, 0x02, 100, 0, 0) + bytes([2, 8, 0, 0])
    with pytest.raises(pdu.PduError):
        pdu.parse_tcp(memoryview(header))
