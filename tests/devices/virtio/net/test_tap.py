"""The device on a real tap in a fresh network namespace: frames both ways, offloads, errors."""

from __future__ import annotations

import select
import socket
import struct

import pytest

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.net import tap as tapmod
from sparkler.devices.virtio.net.tap import Tap, TapError
from tests.devices.virtio.net.helpers import HDR, MAC, NetRig, frame
from tests.devices.virtio.net.netns import in_netns, needs_netns, netns_with_tap
from tests.devices.virtio.net.test_device import FC_FEATURES, SIMPLE

pytestmark = needs_netns
ETH_P_ALL = 0x0003


def test_tap_ioctl_numbers_match_linux_if_tun_h(tmp_path):
    from tests.kvm.cheader import Check, c_program, compile_and_run, mismatches

    names = ["TUNSETIFF", "TUNSETOFFLOAD", "TUNGETIFF", "TUNSETVNETHDRSZ", "IFF_TAP", "IFF_NO_PI",
             "IFF_VNET_HDR", "TUN_F_CSUM", "TUN_F_TSO4", "TUN_F_TSO6", "TUN_F_TSO_ECN", "TUN_F_UFO"]
    checks = [Check(n, getattr(tapmod, n), n) for n in names]
    checks.append(Check("VNET_HDR_SIZE", tapmod.VNET_HDR_SIZE, "sizeof(struct virtio_net_hdr_v1)"))
    values = compile_and_run(c_program(["sys/ioctl.h", "linux/if_tun.h", "linux/virtio_net.h"], checks), tmp_path)
    assert mismatches(checks, values) == []


def _open(ns, name):
    def go():
        t = Tap.open(name)
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((name, 0))
        s.setblocking(False)
        return t, s

    return in_netns(ns, go)


def _recv(sock, timeout=2.0):
    r, _, _ = select.select([sock], [], [], timeout)
    return sock.recv(1 << 17) if r else None


def test_frames_both_ways_through_a_real_tap():
    with netns_with_tap() as (ns, name):
        tap, host = _open(ns, name)
        r = NetRig(features=SIMPLE, tap=tap)
        try:
            # guest -> host: the AF_PACKET socket on the tap sees the Ethernet frame (no vnet header)
            out = frame(b"guest says hi" * 10, dst=b"\x02" * 6)
            r.send(out)
            got = None
            for _ in range(20):  # skip the host's own IPv6 chatter, if any
                got = _recv(host)
                if got is None or got == out:
                    break
            assert got == out
            # host -> guest
            r.add_rx(2048, 8)
            back = frame(b"host says hi" * 10, src=b"\x02" * 6, dst=MAC)
            host.send(back)
            select.select([tap.fd], [], [], 2.0)
            r.pump_tap()
            frames = [g[HDR:] for g in r.received()]
            assert back in frames
            assert r.device.counters.rx_packets_count >= 1 and r.device.counters.tx_packets_count == 1
        finally:
            r.close()
            host.close()


def test_offloads_negotiated_reach_the_tap_and_big_frames_arrive_in_merged_buffers():
    with netns_with_tap(mtu=9000) as (ns, name):
        tap, host = _open(ns, name)
        r = NetRig(features=FC_FEATURES, tap=tap)
        try:
            assert tap.offload_flags == 0x17
            r.add_rx(1526, 200)
            back = frame(bytes(range(256)) * 20, src=b"\x02" * 6, dst=MAC)  # 5 KiB, over the MTU
            host.send(back)
            select.select([tap.fd], [], [], 2.0)
            r.pump_tap()
            frames = r.received()
            assert back in [g[HDR:] for g in frames]
        finally:
            r.close()
            host.close()


def test_bad_vnet_header_is_a_counted_write_failure():
    with netns_with_tap() as (ns, name):
        tap, host = _open(ns, name)
        r = NetRig(features=SIMPLE, tap=tap)
        try:
            # GSO TCPv4 with gso_size 0 and a header length past the frame: the kernel refuses it
            bad = struct.pack("<BBHHHHH", 1, spec.VIRTIO_NET_HDR_GSO_TCPV4, 9000, 0, 9000, 9000, 0)
            r.send(frame(b"x" * 40), hdr=bad)
            assert r.device.counters.tap_write_fails == 1
            assert not r.device.broken
            r.send(frame(b"fine"))
            assert r.device.counters.tx_packets_count == 1
        finally:
            r.close()
            host.close()


def test_tap_open_errors_have_firecrackers_message():
    with netns_with_tap() as (ns, _name):
        with pytest.raises(TapError) as info:
            in_netns(ns, lambda: Tap.open("lo"))
        text = str(info.value)
        assert text.startswith("Could not create the network device: Open tap device failed: Error while creating ifreq")
        assert "Invalid TUN/TAP Backend provided by lo." in text
        with pytest.raises(TapError, match="Invalid interface name"):
            Tap.open("x" * 16)
