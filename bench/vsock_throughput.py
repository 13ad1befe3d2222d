"""virtio-vsock throughput both ways and connection set-up latency, driven by the probe guest
(``probe.vsock=listen|connect``). Prints numbers, asserts nothing.

Each run boots a fresh VMM (``--no-api --config-file``, vsock at ``<tmp>/v.sock``) whose guest runs the
polling vsock driver at CPL3 (native on PVM hosts; ``sparkler/testing/guests/vsock.c``):

* ``host -> guest``: the host connects through ``uds_path`` (``CONNECT 52``), streams N MiB and
  half-closes; the guest consumes without echoing (``probe.vsock_echo=0``). Timed on the host from
  ``OK <port>`` to the VMM closing the host socket, which happens only after the guest took every
  byte (SHUTDOWN -> RST).
* ``guest -> host``: the guest connects to host port 1234 (``<uds_path>_1234``) and streams N MiB of
  its pattern; the host reads until EOF (the guest's SHUTDOWN). Timed from ``accept`` to EOF.
* ``echo``: the host streams N MiB and reads the echo back at the same time (payload MiB/s, each
  byte crosses the device twice).
* ``connect latency``: host-initiated set-up, ``connect()`` + ``CONNECT 52`` until ``OK <port>``
  arrives (the guest answered the REQUEST), sequentially, M times in one VM: median, min, max.

Usage: .venv/bin/python bench/vsock_throughput.py [--quick] [--runs N] [--mib N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
MIB = 1 << 20


def _kernel() -> pathlib.Path:
    sys.path.insert(0, str(REPO))
    from sparkler.testing.probe import build_probe

    return build_probe("linux")


class Vm:
    """One VMM process with a vsock device; the guest runs ``probe.vsock=<args>``."""

    def __init__(self, kernel: pathlib.Path, tmp: pathlib.Path, probe_args: str) -> None:
        self.uds = str(tmp / "v.sock")
        (tmp / "v.sock").unlink(missing_ok=True)  # the previous run's VMM removes it; a killed one may not
        cfg = {
            "boot-source": {"kernel_image_path": str(kernel),
                            "boot_args": f"console=ttyS0 reboot=k panic=1 {probe_args}"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
            "vsock": {"guest_cid": 3, "uds_path": self.uds},
        }
        path = tmp / "bench-vsock.json"
        path.write_text(json.dumps(cfg))
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sparkler", "--no-api", "--config-file", str(path), "--level", "Error"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=tmp, env=env)
        self.out = b""
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out += line
            if b"INFO vsock_ready" in line:
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 60) -> None:
        if not self._ready.wait(timeout) or b"INFO vsock_ready" not in self.out:
            raise RuntimeError(f"guest did not get ready: {self.out[-600:]!r}")

    def connect(self, port: int = 52) -> tuple[socket.socket, float]:
        """Host-initiated connection; (socket, seconds from connect() to ``OK <port>``)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        t0 = time.perf_counter()
        s.connect(self.uds)
        s.sendall(f"CONNECT {port}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            chunk = s.recv(1)
            if not chunk:
                raise RuntimeError(f"connection closed before OK: {line!r}")
            line += chunk
        if not line.startswith(b"OK "):
            raise RuntimeError(f"unexpected answer {line!r}")
        return s, time.perf_counter() - t0

    def finish(self, timeout: float = 120) -> None:
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        if b"FAIL " in self.out or b"probe done fails=0" not in self.out:
            raise RuntimeError(f"guest reported a failure: {self.out[-800:]!r}")


def host_to_guest(kernel: pathlib.Path, tmp: pathlib.Path, mib: int) -> float:
    vm = Vm(kernel, tmp, "probe.vsock=listen probe.vsock_echo=0 probe.vsock_conns=1")
    vm.wait_ready()
    s, _ = vm.connect()
    block = os.urandom(MIB)
    t0 = time.perf_counter()
    for _ in range(mib):
        s.sendall(block)
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    dt = time.perf_counter() - t0
    s.close()
    vm.finish()
    return mib / dt


def guest_to_host(kernel: pathlib.Path, tmp: pathlib.Path, mib: int) -> float:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    for stale in tmp.glob("v.sock*"):
        stale.unlink()
    listener.bind(str(tmp / "v.sock_1234"))
    listener.listen(1)
    vm = Vm(kernel, tmp, f"probe.vsock=connect probe.vsock_port=1234 probe.vsock_echo=0 probe.vsock_conns=1 "
                         f"probe.vsock_bytes={mib * MIB}")
    listener.settimeout(60)
    conn, _ = listener.accept()
    t0 = time.perf_counter()
    total = 0
    buf = bytearray(1 << 17)
    while n := conn.recv_into(buf):
        total += n
    dt = time.perf_counter() - t0
    conn.close()
    listener.close()
    vm.finish()
    if total != mib * MIB:
        raise RuntimeError(f"guest -> host moved {total} bytes, expected {mib * MIB}")
    return mib / dt


def echo(kernel: pathlib.Path, tmp: pathlib.Path, mib: int) -> float:
    vm = Vm(kernel, tmp, "probe.vsock=listen probe.vsock_conns=1")
    vm.wait_ready()
    s, _ = vm.connect()
    block = os.urandom(MIB)
    got = [0]

    def reader() -> None:
        buf = bytearray(1 << 17)
        while got[0] < mib * MIB and (n := s.recv_into(buf)):
            got[0] += n

    t = threading.Thread(target=reader)
    t0 = time.perf_counter()
    t.start()
    for _ in range(mib):
        s.sendall(block)
    t.join()
    dt = time.perf_counter() - t0
    s.close()
    vm.finish()
    if got[0] != mib * MIB:
        raise RuntimeError(f"echo returned {got[0]} bytes, expected {mib * MIB}")
    return mib / dt


def connect_latency(kernel: pathlib.Path, tmp: pathlib.Path, count: int) -> list[float]:
    vm = Vm(kernel, tmp, f"probe.vsock=listen probe.vsock_conns={count}")
    vm.wait_ready()
    times = []
    for _ in range(count):
        s, dt = vm.connect()
        times.append(dt * 1e6)
        s.close()
    vm.finish()
    return times


def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def run(quick: bool = False, runs: int | None = None, mib: int | None = None) -> dict:
    kernel = _kernel()
    runs = runs or (2 if quick else 5)
    mib = mib or (16 if quick else 100)
    connects = 20 if quick else 200
    with tempfile.TemporaryDirectory(prefix="sparkler-vsockbench-") as d:
        tmp = pathlib.Path(d)
        out = {
            "runs": runs, "mib": mib, "connects": connects,
            "host_to_guest_mib_s": stats([host_to_guest(kernel, tmp, mib) for _ in range(runs)]),
            "guest_to_host_mib_s": stats([guest_to_host(kernel, tmp, mib) for _ in range(runs)]),
            "echo_mib_s": stats([echo(kernel, tmp, mib) for _ in range(runs)]),
            "connect_us": stats(connect_latency(kernel, tmp, connects)),
        }
    return out


def print_table(res: dict) -> None:
    print(f"virtio-vsock, probe guest (CPL3 polling driver), {res['mib']} MiB per stream, {res['runs']} runs; "
          f"median (min-max)")
    for key, label in (("host_to_guest_mib_s", "host -> guest MiB/s"), ("guest_to_host_mib_s", "guest -> host MiB/s"),
                       ("echo_mib_s", "echo (both ways) MiB/s")):
        s = res[key]
        print(f"{label:<26} {s['median']:>8.1f} ({s['min']:.1f}-{s['max']:.1f})")
    s = res["connect_us"]
    print(f"{'connect set-up us':<26} {s['median']:>8.0f} ({s['min']:.0f}-{s['max']:.0f}) over {s['n']} connections")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer, smaller runs")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--mib", type=int, default=None, help="MiB per stream (default 100, quick 16)")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    res = run(a.quick, a.runs, a.mib)
    print_table(res)
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
