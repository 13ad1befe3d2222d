"""virtio-net through the virtio-mmio transport, guest memory and a datagram stand-in for the tap."""

from __future__ import annotations

import struct

import pytest

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.net.device import MAX_BUFFER_SIZE, NetDevice
from sparkler.ratelimit import RateLimiter
from sparkler.testing.mock_driver import readable, writable
from tests.devices.virtio.net.helpers import HDR, MAC, FakeTap, NetRig, frame

BASE_FEATURES = (1 << spec.VIRTIO_F_VERSION_1) | (1 << spec.VIRTIO_RING_F_EVENT_IDX)
FC_FEATURES = BASE_FEATURES | sum(
    1 << b
    for b in (
        spec.VIRTIO_NET_F_CSUM, spec.VIRTIO_NET_F_GUEST_CSUM, spec.VIRTIO_NET_F_GUEST_TSO4,
        spec.VIRTIO_NET_F_GUEST_TSO6, spec.VIRTIO_NET_F_GUEST_UFO, spec.VIRTIO_NET_F_HOST_TSO4,
        spec.VIRTIO_NET_F_HOST_TSO6, spec.VIRTIO_NET_F_HOST_UFO, spec.VIRTIO_NET_F_MRG_RXBUF,
    )
)
SIMPLE = BASE_FEATURES  # no offloads, no merged buffers


@pytest.fixture
def rig():
    r = NetRig(features=SIMPLE)
    yield r
    r.close()


def test_offers_firecracker_features_and_mac_only_when_configured():
    tap = FakeTap()
    with_mac = NetDevice("a", tap, guest_mac=MAC)
    without = NetDevice("b", tap)
    with_mtu = NetDevice("c", tap, mtu=9000)
    assert with_mac.avail_features == FC_FEATURES | (1 << spec.VIRTIO_NET_F_MAC)
    assert without.avail_features == FC_FEATURES
    assert with_mtu.avail_features == FC_FEATURES | (1 << spec.VIRTIO_NET_F_MTU)
    assert not without.avail_features & (1 << spec.VIRTIO_NET_F_STATUS | 1 << spec.VIRTIO_NET_F_CTRL_VQ)
    tap.close()


def test_spec_5_1_4_config_space_mac_status_pairs_mtu():
    r = NetRig(mtu=9000, probe=False)
    mac, status, pairs, mtu = struct.unpack("<6sHHH", r.mmio.read_config(0, 12))
    assert (mac, status, pairs, mtu) == (MAC, 0, 0, 9000)
    r.close()


def test_activation_sets_tap_offloads_from_guest_features():
    r = NetRig(features=FC_FEATURES)
    assert r.tap.offload_flags == 0x01 | 0x02 | 0x04 | 0x10
    r.close()
    r = NetRig(features=SIMPLE | (1 << spec.VIRTIO_NET_F_GUEST_CSUM))
    assert r.tap.offload_flags == 0x01
    r.close()


def test_tx_frame_reaches_tap_with_vnet_header_and_chain_is_returned(rig):
    hdr = bytes([1, 0]) + struct.pack("<HHHHH", 0, 0, 34, 16, 0)
    head = rig.send(frame(b"x" * 100), hdr=hdr, split=5)
    assert rig.tap.host_recv_all() == [hdr + frame(b"x" * 100)]
    assert rig.tx.take_used() == [(head, 0)]
    c = rig.device.counters
    assert (c.tx_packets_count, c.tx_bytes_count, c.tx_spoofed_mac_count) == (1, HDR + 114, 0)
    assert rig.line.count >= 1


def test_tx_spoofed_source_mac_is_counted_and_still_sent(rig):
    rig.send(frame(src=bytes(6)))
    assert len(rig.tap.host_recv_all()) == 1
    assert rig.device.counters.tx_spoofed_mac_count == 1


@pytest.mark.parametrize("length", [0, HDR - 1, MAX_BUFFER_SIZE + 1])
def test_tx_malformed_chain_is_dropped_and_counted(rig, length):
    rig.memory.fill(0x400000, length or 1, 0x41)
    head = rig.tx.add_chain([readable(0x400000, length)])
    rig.device.queue_notify(1)
    assert rig.tap.host_recv_all() == []
    assert rig.tx.take_used() == [(head, 0)]
    assert rig.device.counters.tx_malformed_frames == 1
    assert not rig.device.broken


def test_tx_write_failure_is_counted_not_raised(rig):
    class FailingTap(FakeTap):
        def writev(self, buffers):  # noqa: ANN001, ANN201
            raise OSError(22, "Invalid argument")

    r = NetRig(features=SIMPLE, tap=FailingTap())
    head = r.send(frame())
    assert r.tx.take_used() == [(head, 0)]
    assert r.device.counters.tap_write_fails == 1
    r.close()


def test_rx_frame_lands_in_guest_buffer_with_num_buffers(rig):
    data = bytes(HDR) + frame(b"y" * 60, src=b"\x02" * 6, dst=MAC)
    rig.add_rx(2048, 4)
    rig.tap.host_send(data)
    rig.pump_tap()
    got = rig.received()
    assert len(got) == 1
    assert got[0][HDR:] == data[HDR:]
    assert int.from_bytes(got[0][10:12], "little") == 1
    c = rig.device.counters
    assert (c.rx_packets_count, c.rx_bytes_count) == (1, len(data))


def test_rx_without_buffers_stops_polling_tap_until_kick(rig):
    rig.tap.host_send(bytes(HDR) + frame(b"1"))
    rig.device.queue_notify(0)  # kick with an empty ring
    assert rig.tap.fd not in rig.host.fds
    assert rig.device.counters.no_rx_avail_buffer >= 1
    rig.add_rx(2048, 2)  # kick: reads the waiting frame, then polls the tap
    assert [f[HDR:] for f in rig.received()] == [frame(b"1")]
    assert rig.tap.fd in rig.host.fds


def test_rx_merged_buffers_span_chains_for_a_gso_sized_frame():
    r = NetRig(features=FC_FEATURES)
    r.add_rx(1526, 60)
    big = bytes(HDR) + frame(bytes(range(256)) * 40)  # ~10 KiB
    r.tap.host_send(big)
    small = bytes(HDR) + frame(b"s")
    r.tap.host_send(small)
    r.pump_tap()
    got = r.received()
    assert [g[HDR:] for g in got] == [big[HDR:], small[HDR:]]
    assert int.from_bytes(got[0][10:12], "little") == -(-len(big) // 1526)
    r.close()


def test_rx_merged_buffers_wait_for_room_for_the_largest_frame():
    r = NetRig(features=FC_FEATURES)
    r.add_rx(1526, 4)  # 6 KiB: less than one 64 KiB GSO frame could need
    r.tap.host_send(bytes(HDR) + frame(b"z"))
    r.pump_tap()
    assert r.received() == []
    r.add_rx(1526, 50)
    r.pump_tap()
    assert [g[HDR:] for g in r.received()] == [frame(b"z")]
    r.close()


def test_tx_rate_limiter_ops_throttles_and_timer_resumes():
    now = [0]
    limiter = RateLimiter.from_limits(ops=(2, 0, 1000), clock=lambda: now[0])
    r = NetRig(features=SIMPLE, tx_rate_limiter=limiter)
    for i in range(5):
        r.send(frame(bytes([i])), kick=False)
    r.device.queue_notify(1)
    assert len(r.tap.host_recv_all()) == 2
    assert r.device.timer_deadline_ns() is not None
    now[0] += 1_000_000_000
    limiter.timer_deadline_ns = 0  # the timerfd fired
    r.device.process_rate_limiter_event()
    assert len(r.tap.host_recv_all()) == 2
    assert r.device.counters.tx_rate_limiter_throttled >= 1
    r.close()


def test_rx_rate_limiter_defers_a_read_frame_until_the_timer():
    now = [0]
    limiter = RateLimiter.from_limits(ops=(1, 0, 1000), clock=lambda: now[0])
    r = NetRig(features=SIMPLE, rx_rate_limiter=limiter)
    r.add_rx(2048, 8)
    for i in range(3):
        r.tap.host_send(bytes(HDR) + frame(bytes([i])))
    r.pump_tap()
    assert [g[HDR:] for g in r.received()] == [frame(b"\x00")]
    assert r.tap.fd not in r.host.fds  # throttled: the tap is not polled
    now[0] += 1_000_000_000
    limiter.timer_deadline_ns = 0
    r.device.process_rate_limiter_event()
    assert [g[HDR:] for g in r.received()] == [frame(b"\x01")]
    r.close()


class FakeMmds:
    """The MmdsNetworkStack interface: consumes frames whose payload starts with b"MMDS"."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.pending: list[bytes] = []

    def detour_frame(self, f) -> bool:  # noqa: ANN001
        f = bytes(f)
        if f[14:18] == b"MMDS":
            self.seen.append(f)
            self.pending.append(frame(b"REPLY" + f[18:], src=b"\x06\x01\x23\x45\x67\x01", dst=MAC))
            return True
        return False

    def has_pending(self) -> bool:
        return bool(self.pending)

    def write_next_frame(self, buf):  # noqa: ANN001, ANN201
        if not self.pending or len(self.pending[0]) > len(buf):
            return None
        f = self.pending.pop(0)
        buf[: len(f)] = f
        return len(f)


def test_mmds_frames_never_reach_tap_and_replies_come_first():
    mmds = FakeMmds()
    r = NetRig(features=SIMPLE, mmds_stack=mmds)
    r.add_rx(2048, 4)
    r.tap.host_send(bytes(HDR) + frame(b"from tap"))
    r.send(frame(b"MMDS1"))
    r.send(frame(b"other"))
    assert [f[HDR:] for f in r.tap.host_recv_all()] == [frame(b"other")]
    assert mmds.seen == [frame(b"MMDS1")]
    r.pump_tap()
    got = [g[HDR:] for g in r.received()]
    assert got[0] == frame(b"REPLY1", src=b"\x06\x01\x23\x45\x67\x01", dst=MAC)
    assert frame(b"from tap") in got
    r.close()


def test_rx_chain_outside_ram_breaks_device_not_vmm(rig):
    rig.rx.add_chain([writable(rig.memory.total_size - 8, 4096)])
    rig.device.queue_notify(0)
    assert rig.device.broken
    rig.tap.host_send(bytes(HDR) + frame())
    rig.device.queue_notify(0)  # ignored
    assert rig.host.fds == {}


def test_rx_read_only_chain_is_returned_empty(rig):
    head = rig.rx.add_chain([readable(0x100000, 2048)])
    rig.device.queue_notify(0)
    assert rig.rx.take_used() == [(head, 0)]
    assert rig.device.counters.rx_fails == 1


def test_reset_forgets_cached_rx_buffers():
    r = NetRig(features=FC_FEATURES)
    r.add_rx(1526, 10)  # cached, not enough for a GSO frame
    r.mmio.write32(spec.VIRTIO_MMIO_STATUS, 0)
    assert r.device._rx_slots == type(r.device._rx_slots)()
    r.close()


def test_real_mmds_stack_answers_arp_and_http_without_touching_the_tap():
    """The device with sparkler.mmds.ns.MmdsNetworkStack: ARP for the MMDS address and a TCP
    handshake + HTTP GET from the guest are answered through the RX queue; the tap sees nothing."""
    from sparkler.mmds import pdu
    from sparkler.mmds.imds import Mmds
    from sparkler.mmds.ns import DEFAULT_MAC, MmdsNetworkStack

    mmds = Mmds()
    mmds.store.put({"latest": {"meta-data": {"ami-id": "ami-1"}}})
    stack = MmdsNetworkStack(DEFAULT_MAC, "169.254.169.254", mmds)
    r = NetRig(features=SIMPLE, mmds_stack=stack)
    guest_ip, mmds_ip = bytes([10, 0, 0, 2]), bytes([169, 254, 169, 254])
    try:
        r.add_rx(2048, 16)
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, MAC, guest_ip, bytes(6), mmds_ip)
        r.send(frame(arp, dst=b"\xff" * 6, ethertype=0x0806))
        got = [g[HDR:] for g in r.received()]
        assert len(got) == 1 and got[0][:6] == MAC and got[0][6:12] == DEFAULT_MAC
        assert got[0][14 + 8 : 14 + 18] == DEFAULT_MAC + mmds_ip  # sender = the MMDS

        def tcp(flags, seq, ack, payload=b""):
            seg = struct.pack("!HHIIBBHHH", 40000, 80, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
            csum = pdu.tcp_checksum(guest_ip, mmds_ip, seg)
            seg = seg[:16] + struct.pack("!H", csum) + seg[18:]
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 1, 0x4000, 64, 6, 0, guest_ip, mmds_ip)
            ip = ip[:10] + struct.pack("!H", pdu.internet_checksum(ip)) + ip[12:]
            return DEFAULT_MAC + MAC + b"\x08\x00" + ip + seg

        r.send(tcp(0x02, 1000, 0))  # SYN
        synack = [g[HDR:] for g in r.received()]
        assert len(synack) == 1 and synack[0][14 + 20 + 13] & 0x12 == 0x12
        isn = struct.unpack("!I", synack[0][14 + 20 + 4 : 14 + 20 + 8])[0]
        request = b"GET /latest/meta-data/ami-id HTTP/1.1\r\nHost: x\r\n\r\n"
        r.send(tcp(0x10, 1001, isn + 1))
        r.send(tcp(0x18, 1001, isn + 1, request))
        answers = b"".join(g[HDR + 14 + 20 + 20 :] for g in r.received())
        assert b"200" in answers and answers.endswith(b"ami-1")
        assert r.tap.host_recv_all() == []
    finally:
        r.close()
