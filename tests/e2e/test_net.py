"""virtio-net end to end: the probe guest serves ARP, ICMP, TCP echo and raw-frame echo on a real tap
in a fresh network namespace, with the VMM running inside that namespace."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sparkler.testing.probe import parse_reports
from tests.devices.virtio.net.netns import in_netns, needs_netns, netns_with_tap

pytestmark = needs_netns

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
HOST_IP, GUEST_IP = "192.168.241.1", "192.168.241.2"
GUEST_MAC = bytes.fromhex("06000ac0f102")
HOST_SRC = bytes.fromhex("02000ac0f101")
ETH_P_ALL = 0x0003
PROBE_TYPE = (0x88B5).to_bytes(2, "big")


class Vmm:
    """The VMM in the namespace, its serial output collected line by line."""

    def __init__(
        self, ns: str, kernel: Path, tmp_path: Path, iface: dict, net_ms: int = 60000,
        extra_args: str = "", extra_config: dict | None = None, vmm_args: tuple[str, ...] = (),
    ) -> None:
        args = f"console=ttyS0 reboot=k panic=1 probe.cpus=1 probe.net=serve probe.net_ip={GUEST_IP} probe.net_ms={net_ms}"
        config = {
            "boot-source": {"kernel_image_path": str(kernel), "boot_args": f"{args} {extra_args}".strip()},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
            "network-interfaces": [iface],
            **(extra_config or {}),
        }
        cfg = tmp_path / "vmm.json"
        cfg.write_text(json.dumps(config))
        self.metrics = tmp_path / "metrics.json"
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "sparkler", "--no-api", "--config-file", str(cfg),
               "--metrics-path", str(self.metrics), *vmm_args]
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.lines: list[str] = []
        self.err = b""
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stdout:  # type: ignore[union-attr]
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            if "net_ready" in line:
                self._ready.set()

    def _read_err(self) -> None:
        self.err = self.proc.stderr.read()  # type: ignore[union-attr]

    def wait_ready(self, timeout: float = 60) -> None:
        assert self._ready.wait(timeout), self.describe()

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("VMM did not exit\n" + self.describe())

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def describe(self) -> str:
        return "".join(self.lines)[-4000:] + "\n--- stderr ---\n" + self.err.decode("utf-8", "replace")[-4000:]

    def reports(self):  # noqa: ANN201
        return parse_reports("".join(self.lines))


def packet_socket(ns: str, tap: str) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((tap, 0))
        return s

    return in_netns(ns, make)


def _inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_ping(address: str, count: int, timeout: float = 15) -> int:
    """What `ping -c count` does (iputils may be missing): echo requests, matching replies counted."""
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        ident = os.getpid() & 0xFFFF
        replies = 0
        for seq in range(count):
            payload = os.urandom(56)
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            packet = struct.pack("!BBHHH", 8, 0, _inet_checksum(header + payload), ident, seq) + payload
            s.sendto(packet, (address, 0))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                r, _, _ = select.select([s], [], [], 0.5)
                if not r:
                    continue
                data, _ = s.recvfrom(65536)
                icmp = data[(data[0] & 15) * 4 :]
                if icmp[0] == 0 and struct.unpack("!HH", icmp[4:8]) == (ident, seq) and icmp[8:] == payload:
                    assert _inet_checksum(icmp) == 0
                    replies += 1
                    break
        return replies


def probe_frame(payload: bytes) -> bytes:
    return GUEST_MAC + HOST_SRC + PROBE_TYPE + payload


def recv_echo(sock: socket.socket, want: bytes, timeout: float = 20) -> bytes | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([sock], [], [], 0.5)
        if r:
            data = sock.recv(1 << 16)
            if data[6:12] == GUEST_MAC and data[12:14] == PROBE_TYPE and data[14:] == want[14:]:
                return data
    return None


def stop(ns: str, tap: str) -> None:
    s = packet_socket(ns, tap)
    s.send(probe_frame(b"STOP" + bytes(60)))
    s.close()


@pytest.fixture
def net_vm(kvm, probe_kernel, tmp_path):
    started = []

    def start(iface_extra: dict | None = None, **kw):  # noqa: ANN202
        ctx = netns_with_tap(f"{HOST_IP}/24")
        ns, tap = ctx.__enter__()
        iface = {"iface_id": "eth0", "host_dev_name": tap, "guest_mac": "06:00:0a:c0:f1:02", **(iface_extra or {})}
        vmm = Vmm(ns, probe_kernel, tmp_path, iface, **kw)
        started.append((ctx, vmm))
        vmm.wait_ready()
        return ns, tap, vmm

    yield start
    for ctx, vmm in started:
        if vmm.proc.poll() is None:
            vmm.kill()
        ctx.__exit__(None, None, None)


def test_ping_raw_frames_and_tcp_echo_through_the_guest(net_vm):
    ns, tap, vmm = net_vm()
    # ARP + ICMP: the host's kernel resolves the guest's MAC and gets its echo replies
    assert in_netns(ns, lambda: icmp_ping(GUEST_IP, 3)) == 3, vmm.describe()
    # raw frames both ways, byte for byte, including a full 1500-byte payload
    sock = packet_socket(ns, tap)
    for payload in (b"\x00\x01hello", os.urandom(1500)):
        out = probe_frame(payload)
        sock.send(out)
        back = recv_echo(sock, out)
        assert back is not None, vmm.describe()
        assert back == HOST_SRC + GUEST_MAC + PROBE_TYPE + payload
    sock.close()
    # TCP: a host socket talks to the guest's echo port
    def tcp() -> bytes:
        with socket.create_connection((GUEST_IP, 7), timeout=30) as c:
            message = b"sparkler virtio-net " * 50
            c.sendall(message)
            got = b""
            while len(got) < len(message):
                chunk = c.recv(65536)
                if not chunk:
                    break
                got += chunk
            return got

    assert in_netns(ns, tcp) == b"sparkler virtio-net " * 50, vmm.describe()
    # a port nobody listens on is refused
    with pytest.raises(ConnectionRefusedError):
        in_netns(ns, lambda: socket.create_connection((GUEST_IP, 9), timeout=30))
    stop(ns, tap)
    assert vmm.wait_exit() == 0, vmm.describe()
    reports = vmm.reports()
    assert not reports.fails and reports.passed("net_serve"), vmm.describe()
    fields = reports.named("net_serve")[0].fields
    assert int(fields["icmp"]) >= 3 and int(fields["arp"]) >= 1 and int(fields["echo"]) == 2
    # per-interface metrics (Firecracker's names), summed over every flush, and the aggregate
    lines = [json.loads(line) for line in vmm.metrics.read_text().splitlines() if line.strip()]
    total = {k: sum(m["net_eth0"][k] for m in lines) for k in ("rx_packets_count", "tx_packets_count", "rx_bytes_count")}
    assert total["rx_packets_count"] >= int(fields["rx"]) and total["tx_packets_count"] >= int(fields["tx"])
    assert sum(m["net"]["tx_packets_count"] for m in lines) == total["tx_packets_count"]
    assert total["rx_bytes_count"] > 1500


def _echo_rate(ns: str, tap: str, frame_len: int, send_pps: int, seconds: float) -> float:
    """Flood the guest with probe frames; echoes per second received in the steady state."""
    sock = packet_socket(ns, tap)
    sock.setblocking(False)
    stop_flag = threading.Event()

    def flood() -> None:
        frame = probe_frame(bytes(frame_len - 14))
        period = 1 / send_pps
        next_t = time.monotonic()
        while not stop_flag.is_set():
            try:
                sock.send(frame)
            except (BlockingIOError, OSError):
                pass
            next_t += period
            time.sleep(max(0, next_t - time.monotonic()))

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    times = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        r, _, _ = select.select([sock], [], [], 0.2)
        if r:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                continue
            if data[6:12] == GUEST_MAC and data[12:14] == PROBE_TYPE:
                times.append(time.monotonic() - start)
    stop_flag.set()
    t.join()
    sock.close()
    warm = 1.0  # skip the initial full bucket
    steady = [x for x in times if x >= warm]
    return len(steady) / (seconds - warm)


@pytest.mark.parametrize("direction", ["rx_rate_limiter", "tx_rate_limiter"])
def test_rate_limiter_holds_the_frame_rate_within_10_percent(net_vm, direction):
    frame_len = 600
    # bytes: 6,120 per 100 ms = 61,200 B/s; each frame costs its length + the 12-byte vnet header
    limiter = {"bandwidth": {"size": 6120, "refill_time": 100}}
    ns, tap, vmm = net_vm({direction: limiter})
    rate = _echo_rate(ns, tap, frame_len, send_pps=250, seconds=5.0)
    expected = 61200 / (frame_len + 12)
    stop(ns, tap)
    vmm.wait_exit()
    assert abs(rate - expected) <= 0.1 * expected, f"{rate:.1f} frames/s, expected {expected:.1f}\n" + vmm.describe()


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_mmds_answers_the_guest_with_the_token_rules(net_vm, tmp_path, version):
    """The probe's MMDS client (ARP + HTTP over TCP from inside the guest) against the real MMDS."""
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps({"latest": {"meta-data": {"ami-id": "ami-1"}}}))
    ns, tap, vmm = net_vm(
        extra_args="probe.net_mmds=1",
        extra_config={"mmds-config": {"network_interfaces": ["eth0"], "version": version}},
        vmm_args=("--metadata", str(metadata)),
    )
    stop(ns, tap)
    assert vmm.wait_exit() == 0, vmm.describe()
    reports = vmm.reports()
    assert not reports.fails and reports.passed("mmds_arp"), vmm.describe()
    got = {name: reports.named(name)[0].fields for name in
           ("mmds_token", "mmds_get_token", "mmds_get_no_token", "mmds_get_bad_token", "mmds_get_json")}
    assert got["mmds_token"]["status"] == "200" and int(got["mmds_token"]["len"]) > 20, vmm.describe()
    assert (got["mmds_get_token"]["status"], got["mmds_get_token"]["body"]) == ("200", "ami-1"), vmm.describe()
    if version == "V2":
        for name in ("mmds_get_no_token", "mmds_get_bad_token", "mmds_get_json"):
            assert got[name]["status"] == "401", vmm.describe()
    else:
        assert (got["mmds_get_no_token"]["status"], got["mmds_get_no_token"]["body"]) == ("200", "ami-1")
        assert got["mmds_get_bad_token"]["status"] == "200"
        assert got["mmds_get_json"]["status"] == "200"
        body = got["mmds_get_json"]["body"].replace("'", '"')  # the probe prints quotes as '
        assert json.loads(body) == {"meta-data": {"ami-id": "ami-1"}}
