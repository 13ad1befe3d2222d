"""The MMDS TCP endpoint against a guest whose frames get lost, duplicated and reordered in both
directions: the guest still reads every byte of the answer exactly once, in order, and nothing in
the stack grows without bound (hypothesis drives the network)."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparkler.mmds.imds import Mmds
from sparkler.mmds.ns import DEFAULT_MAC, MmdsNetworkStack
from sparkler.mmds.tcp import RTO_SECONDS

from .frames import ACK, FIN, PSH, SYN, parse_reply, tcp_frame

BODY = "z" * 3000
REQUEST = b"GET /v HTTP/1.1\r\nHost: x\r\n\r\n"


class Clock:
    def __init__(self):
        self.now = 50.0

    def __call__(self):
        return self.now


class LossyGuest:
    """A small TCP client: SYN, request, ACK everything in order, retransmit on its own timer."""

    def __init__(self, isn):
        self.isn = isn
        self.state = "syn"
        self.snd_nxt = isn  # next sequence number to send
        self.rcv_nxt = None
        self.received = bytearray()
        self.request_acked = False

    def frames(self):
        """What the guest (re)sends now."""
        if self.state == "syn":
            return [tcp_frame(40000, self.isn, 0, SYN, mss=700)]
        out = []
        if not self.request_acked:
            out.append(tcp_frame(40000, self.isn + 1, self.rcv_nxt, ACK | PSH, REQUEST))
        out.append(tcp_frame(40000, self.isn + 1 + len(REQUEST), self.rcv_nxt, ACK))
        return out

    def on_frame(self, frame):
        _, ethertype, _, f, payload = parse_reply(frame)
        assert ethertype == 0x0800
        if f["flags"] & SYN:
            assert f["flags"] & ACK and f["ack"] == (self.isn + 1) % 2**32
            if self.state == "syn":
                self.state = "open"
                self.rcv_nxt = (f["seq"] + 1) % 2**32
            return
        if self.state == "syn":
            return
        if f["ack"] == (self.isn + 1 + len(REQUEST)) % 2**32:
            self.request_acked = True
        if payload and f["seq"] == self.rcv_nxt:
            self.received += payload
            self.rcv_nxt = (self.rcv_nxt + len(payload)) % 2**32


network = st.lists(
    st.tuples(st.sampled_from(["deliver", "drop", "dup", "delay"]), st.sampled_from(["deliver", "drop", "dup"])),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(network, st.integers(0, 2**32 - 1))
def test_tcp_lossy_network_answer_arrives_exactly_once_in_order(fates, isn):
    mmds = Mmds()
    mmds.store.put({"v": BODY})
    clock = Clock()
    stack = MmdsNetworkStack(DEFAULT_MAC, "169.254.169.254", mmds, clock=clock)
    guest = LossyGuest(isn)
    delayed = []
    buf = memoryview(bytearray(1600))
    rounds = 0
    while not guest.received.endswith(BODY.encode()) and rounds < 400:
        fate_in, fate_out = fates[rounds % len(fates)] if rounds < len(fates) else ("deliver", "deliver")
        rounds += 1
        for frame in guest.frames():
            if fate_in != "drop":
                assert stack.detour_frame(frame)
            if fate_in == "dup":
                stack.detour_frame(frame)
        while stack.has_pending():
            n = stack.write_next_frame(buf)
            assert n is not None
            frame = bytes(buf[:n])
            if fate_out == "drop":
                continue
            if fate_in == "delay":
                delayed.append(frame)
                continue
            guest.on_frame(frame)
            if fate_out == "dup":
                guest.on_frame(frame)
        for frame in delayed[:-1]:  # reorder: older frames arrive late
            guest.on_frame(frame)
        delayed = delayed[-1:]
        clock.now += RTO_SECONDS + 0.01
        assert len(stack.tcp.connections) <= 1
        assert all(len(c.send_buffer) < 70_000 for c in stack.tcp.connections.values())
    head, _, body = bytes(guest.received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == BODY.encode()  # exactly once: no duplicated or missing bytes


def test_tcp_guest_fin_before_answer_is_read_still_gets_answer_then_fin():
    mmds = Mmds()
    mmds.store.put({"v": "short"})
    clock = Clock()
    stack = MmdsNetworkStack(DEFAULT_MAC, "169.254.169.254", mmds, clock=clock)
    stack.detour_frame(tcp_frame(40000, 10, 0, SYN))
    buf = memoryview(bytearray(1600))
    n = stack.write_next_frame(buf)
    server_isn = parse_reply(bytes(buf[:n]))[3]["seq"]
    # ACK of the SYN-ACK, the request and our FIN in one segment.
    stack.detour_frame(tcp_frame(40000, 11, server_isn + 1, ACK | PSH | FIN, REQUEST))
    frames = []
    while stack.has_pending():
        n = stack.write_next_frame(buf)
        frames.append(parse_reply(bytes(buf[:n])))
    data = b"".join(payload for *_, payload in frames)
    assert data.endswith(b"short")
    assert frames[-1][3]["flags"] & FIN
    assert frames[-1][3]["ack"] == 11 + len(REQUEST) + 1
