"""MmdsNetworkStack with frames built in the tests: ARP, the TCP handshake, HTTP over TCP, RST rules,
limits, and hostile frames (random and mutated) that never raise."""

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparkler.mmds.imds import Mmds
from sparkler.mmds.ns import DEFAULT_MAC, MmdsNetworkStack
from sparkler.mmds.tcp import MAX_CONNECTIONS, RECEIVE_BUFFER, RTO_SECONDS

from .frames import (
    ACK,
    FIN,
    GUEST_IP,
    GUEST_MAC,
    MMDS_IP,
    PSH,
    RST,
    SYN,
    arp_request,
    ipv4_packet,
    parse_reply,
    tcp_frame,
)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make_stack(data=None, **kw):
    mmds = Mmds(instance_id="test")
    mmds.store.put(data if data is not None else {"latest": {"meta-data": {"ami-id": "ami-1"}}})
    clock = Clock()
    return MmdsNetworkStack(DEFAULT_MAC, "169.254.169.254", mmds, clock=clock, **kw), clock


def drain(stack, size=2048):
    frames = []
    buf = bytearray(size)
    while stack.has_pending():
        n = stack.write_next_frame(memoryview(buf))
        assert n is not None, "has_pending() promised a frame"
        frames.append(bytes(buf[:n]))
    assert stack.write_next_frame(memoryview(buf)) is None
    return frames


class Guest:
    """Plays a guest TCP client against the stack (one connection)."""

    def __init__(self, stack, port=40000, isn=1000, mss=None):
        self.stack, self.port, self.seq = stack, port, isn
        self.ack = 0
        self.received = b""
        self.fin = False
        assert stack.detour_frame(tcp_frame(port, isn, 0, SYN, mss=mss))
        (synack,) = drain(stack)
        _, _, _, f, _ = parse_reply(synack)
        assert f["flags"] == SYN | ACK and f["ack"] == isn + 1 and f["dport"] == port
        self.seq += 1
        self.ack = (f["seq"] + 1) % 2**32
        assert stack.detour_frame(tcp_frame(port, self.seq, self.ack, ACK))
        assert drain(stack) == []

    def send(self, data, flags=ACK | PSH):
        assert self.stack.detour_frame(tcp_frame(self.port, self.seq, self.ack, flags, data))
        self.seq += len(data) + (1 if flags & FIN else 0)
        return self.pump()

    def pump(self):
        frames = drain(self.stack)
        for frame in frames:
            _, _, _, f, payload = parse_reply(frame)
            assert f["dport"] == self.port
            if f["seq"] == self.ack and payload:
                self.received += payload
                self.ack = (self.ack + len(payload)) % 2**32
            if f["flags"] & FIN and f["seq"] == self.ack:
                self.ack += 1
                self.fin = True
            if payload or f["flags"] & FIN:
                self.stack.detour_frame(tcp_frame(self.port, self.seq, self.ack, ACK))
        if frames:
            frames += self.pump()
        return frames


def test_ns_arp_request_for_mmds_gets_reply_with_mmds_mac():
    stack, _ = make_stack()
    assert stack.detour_frame(arp_request())
    (reply,) = drain(stack)
    assert reply[:6] == GUEST_MAC and reply[6:12] == DEFAULT_MAC and reply[12:14] == b"\x08\x06"
    oper, sha, spa, tha, tpa = struct.unpack_from("!H6s4s6s4s", reply, 14 + 6)
    assert (oper, sha, spa, tha, tpa) == (2, DEFAULT_MAC, MMDS_IP, GUEST_MAC, GUEST_IP)


def test_ns_frames_for_other_addresses_pass_through():
    stack, _ = make_stack()
    assert not stack.detour_frame(arp_request(target=bytes([169, 254, 0, 1])))
    other = b"\x00" * 6 + GUEST_MAC + b"\x08\x00" + ipv4_packet(b"x" * 20, dst=bytes([10, 0, 0, 1]))
    assert not stack.detour_frame(other)
    assert not stack.detour_frame(b"\x00" * 12 + b"\x86\xdd" + b"\x00" * 40)  # IPv6
    assert not stack.has_pending()


def test_ns_arp_reply_for_mmds_is_consumed_without_answer():
    stack, _ = make_stack()
    assert stack.detour_frame(arp_request(oper=2))
    assert drain(stack) == []


def test_ns_http_get_over_tcp_answers_imds_text():
    stack, _ = make_stack()
    guest = Guest(stack)
    guest.send(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n")
    assert guest.received.startswith(b"HTTP/1.1 200 \r\n")
    assert guest.received.endswith(b"\r\n\r\nami-id")


def test_ns_v2_token_then_get_over_one_connection():
    stack, _ = make_stack()
    stack.mmds.version = "V2"
    guest = Guest(stack)
    guest.send(b"GET /latest HTTP/1.1\r\nHost: x\r\n\r\n")
    assert guest.received.startswith(b"HTTP/1.1 401 ")
    guest.received = b""
    guest.send(b"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n")
    token = guest.received.split(b"\r\n\r\n", 1)[1]
    guest.received = b""
    guest.send(b"GET /latest HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: " + token + b"\r\n\r\n")
    assert guest.received.endswith(b"\r\n\r\nmeta-data/")


def test_ns_large_answer_is_split_into_mss_segments_in_order():
    stack, _ = make_stack({"big": "x" * 5000})
    guest = Guest(stack, mss=536)
    frames = guest.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    payloads = [parse_reply(f)[4] for f in frames]
    assert max(len(p) for p in payloads) <= 536
    assert guest.received.endswith(b"x" * 5000)


def test_ns_guest_window_is_respected():
    stack, _ = make_stack({"big": "y" * 3000})
    guest = Guest(stack)
    stack.detour_frame(tcp_frame(guest.port, guest.seq, guest.ack, ACK | PSH, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n", window=1000))
    guest.seq += len(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    sent = sum(len(parse_reply(f)[4]) for f in drain(stack))
    assert sent == 1000  # nothing beyond the advertised window until the guest acknowledges


def test_ns_guest_fin_is_answered_with_fin_and_connection_is_freed():
    stack, _ = make_stack()
    guest = Guest(stack)
    guest.send(b"", flags=ACK | FIN)
    assert guest.fin
    assert stack.tcp.connections == {}


def test_ns_http10_request_closes_after_answer():
    stack, _ = make_stack()
    guest = Guest(stack)
    guest.send(b"GET /latest HTTP/1.0\r\n\r\n")
    assert guest.fin and b"meta-data/" in guest.received


def test_ns_segment_without_connection_gets_rst():
    stack, _ = make_stack()
    assert stack.detour_frame(tcp_frame(41000, 5, 77, ACK, b"hi"))
    (rst,) = drain(stack)
    f = parse_reply(rst)[3]
    assert f["flags"] == RST and f["seq"] == 77


def test_ns_syn_to_other_port_gets_rst_ack():
    stack, _ = make_stack()
    assert stack.detour_frame(tcp_frame(41000, 5, 0, SYN, dport=22))
    (rst,) = drain(stack)
    f = parse_reply(rst)[3]
    assert f["flags"] == RST | ACK and f["ack"] == 6 and f["sport"] == 22


def test_ns_connections_are_bounded():
    stack, _ = make_stack()
    for i in range(MAX_CONNECTIONS):
        Guest(stack, port=30000 + i)
    assert stack.detour_frame(tcp_frame(50000, 1, 0, SYN))
    (rst,) = drain(stack)
    assert parse_reply(rst)[3]["flags"] & RST
    assert len(stack.tcp.connections) == MAX_CONNECTIONS


def test_ns_idle_connection_is_evicted_when_full():
    stack, clock = make_stack()
    for i in range(MAX_CONNECTIONS):
        Guest(stack, port=30000 + i)
    clock.now += 11
    Guest(stack, port=50000)
    assert len(stack.tcp.connections) == MAX_CONNECTIONS


def test_ns_oversized_request_fills_window_then_gets_400():
    stack, _ = make_stack()
    guest = Guest(stack)
    guest.send(b"GET /" + b"a" * (RECEIVE_BUFFER + 100) + b" HTTP/1.1\r\n\r\n")
    assert guest.received.startswith(b"HTTP/1.1 400 ")


def test_ns_lost_answer_is_retransmitted_after_rto():
    stack, clock = make_stack()
    guest = Guest(stack)
    request = b"GET /latest HTTP/1.1\r\nHost: x\r\n\r\n"
    stack.detour_frame(tcp_frame(guest.port, guest.seq, guest.ack, ACK | PSH, request))
    first = drain(stack)  # the guest "drops" these
    assert any(parse_reply(f)[4] for f in first)
    clock.now += RTO_SECONDS + 0.01
    again = drain(stack)
    assert [parse_reply(f)[4] for f in again if parse_reply(f)[4]] == [parse_reply(f)[4] for f in first if parse_reply(f)[4]]


def test_ns_small_buffer_keeps_frame_queued():
    stack, _ = make_stack()
    stack.detour_frame(arp_request())
    assert stack.write_next_frame(memoryview(bytearray(10))) is None
    assert stack.has_pending()
    assert len(drain(stack)) == 1


def test_ns_non_tcp_and_fragments_to_mmds_are_consumed_silently():
    stack, _ = make_stack()
    eth = b"\x00" * 6 + GUEST_MAC + b"\x08\x00"
    assert stack.detour_frame(eth + ipv4_packet(b"\x08\x00" + b"\x00" * 6, proto=1))  # ICMP
    assert stack.detour_frame(eth + ipv4_packet(b"\x00" * 20, flags_frag=0x2000))
    assert drain(stack) == []


# --- hostile input ---------------------------------------------------------------------------------
def _check_all_replies(stack):
    for frame in drain(stack, 4096):
        dst, ethertype, _ip, fields, _payload = parse_reply(frame)
        assert ethertype in (0x0800, 0x0806)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_ns_random_bytes_never_raise(data):
    stack, _ = make_stack()
    assert stack.detour_frame(data) in (True, False)
    _check_all_replies(stack)


def _mutations():
    base = [
        arp_request(),
        tcp_frame(40000, 1000, 0, SYN, mss=1460),
        tcp_frame(40000, 1001, 1, ACK | PSH, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        tcp_frame(40000, 1001, 1, ACK | FIN),
    ]
    return st.tuples(
        st.sampled_from(base),
        st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=6),
        st.integers(0, 200),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_mutations(), min_size=1, max_size=8))
def test_ns_mutated_frames_never_raise_and_replies_are_well_formed(sequence):
    stack, clock = make_stack()
    for frame, flips, cut in sequence:
        frame = bytearray(frame)
        for index, value in flips:
            if index < len(frame):
                frame[index] = value
        frame = bytes(frame[: max(cut, 14)]) if cut < len(frame) else bytes(frame)
        assert stack.detour_frame(memoryview(frame)) in (True, False)
        clock.now += 0.1
        _check_all_replies(stack)
    assert len(stack.tcp.connections) <= MAX_CONNECTIONS


def test_ns_statistics_use_firecracker_metric_names_and_count():
    from sparkler.metrics import GROUPS

    stack, _ = make_stack()
    guest = Guest(stack)
    guest.send(b"GET /latest HTTP/1.1\r\nHost: x\r\n\r\n")
    guest.send(b"", flags=ACK | FIN)
    stack.detour_frame(arp_request(oper=2))
    stats = stack.mmds.statistics()
    assert set(stats) <= {key for key, _ in GROUPS["mmds"]}
    assert stats["connections_created"] == 1 and stats["connections_destroyed"] == 1
    assert stats["rx_accepted_unusual"] == 1 and stats["rx_no_token"] == 1
    assert stats["tx_count"] == stats["tx_frames"] == 3 and stats["tx_bytes"] > 0  # SYN-ACK, answer, FIN
