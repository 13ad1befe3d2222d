"""API latency benchmark: per-endpoint round trip against a live VMM before boot. Prints, asserts nothing.

One keep-alive connection over the Unix socket; each request is written with one ``sendall`` and
its response read until ``Content-Length`` is satisfied, so the client adds a few microseconds at
most. A request goes client -> ``fc_api`` thread (h11 parse, route) -> channel + eventfd -> VMM
thread (controller) -> back, as in Firecracker.

Usage: .venv/bin/python bench/api_latency.py [--requests 500] [--level Info|Error]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def _request(method: str, path: str, body: dict | None = None) -> bytes:
    payload = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
    if payload:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    return head.encode() + b"\r\n" + payload


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bytearray]:
    """(status, leftover) for one response; ``buf`` holds bytes read earlier."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    rest_buf = bytearray(rest)
    while len(rest_buf) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        rest_buf += chunk
    return status, rest_buf[length:]


def _wait_socket(path: str, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"VMM exited with {proc.returncode}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
                return
            except OSError:
                time.sleep(0.005)
    raise SystemExit("API socket did not appear")


def _percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def endpoints(kernel_path: str) -> list[tuple[str, bytes, int]]:
    """(label, raw request, expected status)."""
    return [
        ("GET /", _request("GET", "/"), 200),
        ("GET /version", _request("GET", "/version"), 200),
        ("GET /machine-config", _request("GET", "/machine-config"), 200),
        ("PUT /machine-config", _request("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256}), 204),
        ("PATCH /machine-config", _request("PATCH", "/machine-config", {"mem_size_mib": 128}), 204),
        ("PUT /boot-source", _request("PUT", "/boot-source", {"kernel_image_path": kernel_path}), 204),
        ("GET /vm/config", _request("GET", "/vm/config"), 200),
        ("PUT /actions FlushMetrics (400)", _request("PUT", "/actions", {"action_type": "FlushMetrics"}), 400),
        ("GET /nope (router 400)", _request("GET", "/nope"), 400),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--level", default="Error", help="VMM log level (Info logs every request)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        sock_path = os.path.join(tmp, "fc.sock")
        kernel = os.path.join(tmp, "vmlinux")
        with open(kernel, "wb") as f:
            f.write(b"\x7fELF")  # PUT /boot-source only opens the file
        cmd = [sys.executable, "-I", "-c", "import sys; from sparkler.cli import main; sys.exit(main())",
               "--api-sock", sock_path, "--level", args.level]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
        try:
            _wait_socket(sock_path, proc)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(sock_path)
            buf = bytearray()
            rows = []
            for label, raw, expected in endpoints(kernel):
                for _ in range(20):  # warm-up
                    sock.sendall(raw)
                    _, buf = _read_response(sock, buf)
                samples = []
                for _ in range(args.requests):
                    t0 = time.perf_counter_ns()
                    sock.sendall(raw)
                    status, buf = _read_response(sock, buf)
                    samples.append((time.perf_counter_ns() - t0) / 1000)
                    if status != expected:
                        raise SystemExit(f"{label}: status {status}, expected {expected}")
                samples.sort()
                rows.append((label, statistics.median(samples), _percentile(samples, 0.99),
                             statistics.fmean(samples), samples[0]))
            sock.close()
        finally:
            proc.terminate()
            proc.wait(5)

    print(f"API latency, {args.requests} requests per endpoint, one keep-alive connection, "
          f"VMM log level {args.level} (microseconds)")
    width = max(len(r[0]) for r in rows)
    print(f"{'endpoint'.ljust(width)}  {'median':>8}  {'p99':>8}  {'mean':>8}  {'min':>8}")
    for label, med, p99, mean, low in rows:
        print(f"{label.ljust(width)}  {med:8.1f}  {p99:8.1f}  {mean:8.1f}  {low:8.1f}")


if __name__ == "__main__":
    main()
