"""virtio-net throughput of the VMM's device path on a real tap. Prints numbers, asserts nothing.

The device (``sparkler.devices.virtio.net.device.NetDevice``) runs in this process on a real tap in
a fresh network namespace; the guest side is played by ``sparkler.testing.mock_driver`` (rings in
guest memory), and only the device's own work is timed: the kick that drains the TX ring into the
tap (``writev``) and the tap events that fill the RX ring (``readv`` into guest buffers). The probe
guest is not used because its CPL0 code is emulated here (~1 us/instruction); this is the cost a
fast guest would see from the VMM.

Workloads, per direction (TX = guest -> tap, RX = tap -> guest):

* ``1500``: 1514-byte Ethernet frames (MTU 1500), no offloads;
* ``64K``: 65,514-byte frames; TX as TSO (a GSO TCPv4 vnet header, gso_size 1448, the kernel
  segments), RX as one large frame (tap MTU 65,500) spread over merged 4 KiB buffers (MRG_RXBUF).

Reported per workload (median / min / max over runs): packets/s, Gbit/s, and host CPU seconds per
Gbit (the thread's user+system time while the device worked, syscalls included).

Usage: .venv/bin/python bench/net_throughput.py [--quick] [--runs N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import select
import socket
import statistics
import struct
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from sparkler.devices.virtio import spec  # noqa: E402
from sparkler.devices.virtio.interrupt import IrqTrigger  # noqa: E402
from sparkler.devices.virtio.mmio import MmioTransport  # noqa: E402
from sparkler.devices.virtio.net.device import NetDevice  # noqa: E402
from sparkler.devices.virtio.net.tap import Tap  # noqa: E402
from sparkler.testing.fake_memory import guest_memory  # noqa: E402
from sparkler.testing.mock_driver import MmioDriver, MockDriver, readable, writable  # noqa: E402
from sparkler.testing.netns import in_netns, netns_available, netns_with_tap  # noqa: E402

HDR = spec.VIRTIO_NET_HDR_V1_SIZE
GUEST_MAC = bytes.fromhex("06000ac0f102")
PEER_MAC = bytes.fromhex("02000ac0f101")
RX_BUF = 4096
MEM = 64 << 20

#            name    frame bytes  gso    full frames  quick frames
WORKLOADS = [("1500", 1514, False, 40000, 4000), ("64K", 65514, True, 4000, 400)]


class _Line:
    def trigger(self) -> None:
        pass


class Host:
    def __init__(self) -> None:
        self.fds: dict[int, object] = {}

    def add_fd(self, fd, cb, events=1):  # noqa: ANN001, ANN201
        self.fds[fd] = cb

    def remove_fd(self, fd):  # noqa: ANN001, ANN201
        self.fds.pop(fd, None)

    def modify_fd(self, fd, events, cb=None):  # noqa: ANN001, ANN201
        pass


def _features(gso: bool) -> int:
    f = 1 << spec.VIRTIO_F_VERSION_1
    if gso:
        for bit in (spec.VIRTIO_NET_F_CSUM, spec.VIRTIO_NET_F_GUEST_CSUM, spec.VIRTIO_NET_F_GUEST_TSO4,
                    spec.VIRTIO_NET_F_HOST_TSO4, spec.VIRTIO_NET_F_MRG_RXBUF):
            f |= 1 << bit
    return f


def _tcp_frame(length: int) -> bytes:
    """An Ethernet + IPv4 + TCP frame of ``length`` bytes to 192.168.241.99 (not local: dropped)."""
    payload = bytes(length - 54)
    ip_total = 20 + 20 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, min(ip_total, 0xFFFF), 0, 0x4000, 64, 6, 0,
                     bytes([192, 168, 241, 2]), bytes([192, 168, 241, 99]))
    tcp = struct.pack("!HHIIBBHHH", 40000, 5001, 1, 0, 5 << 4, 0x18, 65535, 0, 0)
    return PEER_MAC + GUEST_MAC + b"\x08\x00" + ip + tcp + payload


class Rig:
    def __init__(self, tap: Tap, gso: bool) -> None:
        self.memory = guest_memory(MEM)
        self.device = NetDevice("eth0", tap, guest_mac=GUEST_MAC)
        self.host = Host()
        self.device.attach_host(self.host)
        self.transport = MmioTransport(self.device, self.memory, IrqTrigger(_Line()))
        self.rx = MockDriver(self.memory, 0x1000, 256)
        self.tx = MockDriver(self.memory, 0x10000, 256)
        assert MmioDriver(self.transport).probe([self.rx, self.tx], _features(gso)) & spec.VIRTIO_CONFIG_S_DRIVER_OK
        self.tap = tap

    def close(self) -> None:
        self.device.close()
        self.memory.close()


def _cpu() -> float:
    return time.thread_time()


def bench_tx(tap: Tap, frame_len: int, gso: bool, frames: int) -> tuple[float, float]:
    """(wall s, cpu s) the device spent writing ``frames`` guest frames to the tap."""
    rig = Rig(tap, gso)
    frame = _tcp_frame(frame_len)
    if gso:
        hdr = struct.pack("<BBHHHHH", spec.VIRTIO_NET_HDR_F_NEEDS_CSUM, spec.VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 34, 16, 0)
    else:
        hdr = bytes(HDR)
    base = 0x100000
    slots = 128
    for i in range(slots):
        rig.memory.write(base + i * 0x10000, hdr + frame)
    wall = cpu = 0.0
    sent = 0
    while sent < frames:
        batch = min(slots, frames - sent)
        for i in range(batch):
            rig.tx.add_chain([readable(base + i * 0x10000, HDR + len(frame))])
        w0, c0 = time.perf_counter(), _cpu()
        rig.device.queue_notify(1)
        wall += time.perf_counter() - w0
        cpu += _cpu() - c0
        assert len(rig.tx.take_used()) == batch
        sent += batch
    fails = rig.device.counters.tap_write_fails
    rig.close()
    if fails:
        raise RuntimeError(f"{fails} tap writes failed")
    return wall, cpu


def bench_rx(ns: str, tap: Tap, tap_name: str, frame_len: int, gso: bool, frames: int) -> tuple[float, float, int]:
    """(wall s, cpu s, frames received) of the device reading ``frames`` tap frames into guest buffers."""
    rig = Rig(tap, gso)

    def sock() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        s.bind((tap_name, 0))
        return s

    peer = in_netns(ns, sock)
    frame = _tcp_frame(frame_len)
    per_frame = -(-(frame_len + HDR) // RX_BUF) if gso else 1
    buf_size = RX_BUF if gso else 2048
    chains = 256
    base = 0x100000
    for i in range(chains):
        rig.rx.add_chain([writable(base + i * buf_size, buf_size)])
    rig.device.queue_notify(0)  # the tap is polled from now on
    wall = cpu = 0.0
    sent = 0
    batch_frames = max(1, min(64, 200 // per_frame))
    next_buf = 0
    while sent < frames:
        batch = min(batch_frames, frames - sent)
        for _ in range(batch):
            peer.send(frame)
        sent += batch
        # serve until every frame sent so far arrived, or nothing came for 0.5 s (a lost frame)
        while rig.device.counters.rx_packets_count < sent:
            if not select.select([tap.fd], [], [], 0.5)[0] and tap.fd in rig.host.fds:
                break
            callback = rig.host.fds.get(tap.fd)
            w0, c0 = time.perf_counter(), _cpu()
            if callback is not None:
                callback(1)
            else:
                rig.device.queue_notify(0)
            wall += time.perf_counter() - w0
            cpu += _cpu() - c0
            for _ in rig.rx.take_used():  # give each buffer back (the guest's refill, not timed)
                rig.rx.add_chain([writable(base + (next_buf % chains) * buf_size, buf_size)])
                next_buf += 1
    received = rig.device.counters.rx_packets_count
    peer.close()
    rig.close()
    return wall, cpu, received


def run(quick: bool, runs: int) -> dict:
    results: dict = {}
    for name, frame_len, gso, full_n, quick_n in WORKLOADS:
        n = quick_n if quick else full_n
        for direction in ("tx", "rx"):
            samples = []
            for _ in range(runs):
                mtu = 65500 if gso else None
                with netns_with_tap(mtu=mtu, txqueuelen=10000) as (ns, tap_name):
                    tap = in_netns(ns, lambda tap_name=tap_name: Tap.open(tap_name))
                    if direction == "tx":
                        wall, cpu = bench_tx(tap, frame_len, gso, n)
                        moved = n
                    else:
                        wall, cpu, moved = bench_rx(ns, tap, tap_name, frame_len, gso, n)
                bits = moved * frame_len * 8
                samples.append({"pps": moved / wall, "gbps": bits / wall / 1e9, "cpu_s_per_gbit": cpu / (bits / 1e9),
                                "lost": max(0, n - moved)})
            results[f"{direction} {name}"] = {
                key: {"median": statistics.median(s[key] for s in samples), "min": min(s[key] for s in samples),
                      "max": max(s[key] for s in samples)}
                for key in ("pps", "gbps", "cpu_s_per_gbit")
            } | {"frames": n, "frame_bytes": frame_len, "runs": runs, "lost": sum(x["lost"] for x in samples)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    if not netns_available():
        print("net_throughput: skipped (needs root, iproute2 and /dev/net/tun)")
        return
    runs = args.runs or (1 if args.quick else 5)
    results = run(args.quick, runs)
    print(f"{'workload':<10} {'packets/s':>12} {'Gbit/s':>8} {'CPU s/Gbit':>11}   (median [min..max] of {runs})")
    for name, r in results.items():
        print(f"{name:<10} {r['pps']['median']:>12,.0f} {r['gbps']['median']:>8.2f} {r['cpu_s_per_gbit']['median']:>11.3f}"
              f"   pps [{r['pps']['min']:,.0f}..{r['pps']['max']:,.0f}]")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
