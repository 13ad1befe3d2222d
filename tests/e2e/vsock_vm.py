"""A probe VM with a vsock device that a test talks to while it runs (host side of the e2e tests)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from sparkler.testing.probe import Reports, parse_reports

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_ARGS = "console=ttyS0 reboot=k panic=1 probe.cpus=1 probe.mem_mib=128"
GUEST_CID = 3


class VsockVm:
    """``python -m sparkler --no-api --config-file`` with a vsock at ``<dir>/v.sock``."""

    def __init__(self, tmp: Path, kernel: Path, probe_args: str, *, guest_cid: int = GUEST_CID) -> None:
        self.uds_path = str(tmp / "v.sock")
        config = {
            "boot-source": {"kernel_image_path": str(kernel), "boot_args": f"{BASE_ARGS} {probe_args}"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
            "vsock": {"guest_cid": guest_cid, "uds_path": self.uds_path},
        }
        cfg = tmp / "vsock-vm.json"
        cfg.write_text(json.dumps(config))
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sparkler", "--no-api", "--config-file", str(cfg)],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._err: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self._err.append(self.proc.stderr.read()), daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("")  # EOF marker
            self._cond.notify_all()

    def wait_line(self, needle: str, timeout: float = 60) -> str:
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if needle in line:
                        return line
                left = end - time.monotonic()
                if left <= 0 or (self.lines and self.lines[-1] == ""):
                    raise AssertionError(f"no line with {needle!r}:\n{self.describe()}")
                self._cond.wait(left)

    def wait(self, timeout: float = 120) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    @property
    def reports(self) -> Reports:
        return parse_reports("".join(self.lines))

    def describe(self) -> str:
        err = b"".join(self._err).decode("utf-8", "replace")
        return f"returncode={self.proc.returncode}\n--- stdout ---\n{''.join(self.lines)[-6000:]}\n--- stderr ---\n{err[-4000:]}"

    # --- host side -------------------------------------------------------------------------------------
    def connect(self, port: int, timeout: float = 30) -> tuple[socket.socket, int]:
        """Host-initiated connection to guest ``port``: (socket, host-side port from ``OK <port>``)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(self.uds_path)
        s.sendall(f"CONNECT {port}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            chunk = s.recv(1)
            if not chunk:
                raise ConnectionError(f"closed before OK (got {line!r})")
            line += chunk
        assert line.startswith(b"OK "), line
        return s, int(line[3:])

    def listen(self, port: int) -> socket.socket:
        """A host listener for guest-initiated connections to host ``port``."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(f"{self.uds_path}_{port}")
        s.listen(256)
        return s

    def __enter__(self) -> VsockVm:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()


def echo_server(listener: socket.socket, *, count: int, stats: dict | None = None) -> threading.Thread:
    """Serve ``count`` connections on ``listener``: echo each until EOF, then close."""
    import hashlib

    def serve(conn: socket.socket) -> None:
        digest = hashlib.sha256()
        total = 0
        with conn:
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    break
                digest.update(data)
                total += len(data)
                conn.sendall(data)
        if stats is not None:
            stats.setdefault("digests", []).append((total, digest.hexdigest()))

    def run() -> None:
        workers = []
        for _ in range(count):
            conn, _ = listener.accept()
            t = threading.Thread(target=serve, args=(conn,), daemon=True)
            t.start()
            workers.append(t)
        for t in workers:
            t.join()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def guest_pattern(length: int, index: int) -> bytes:
    """The bytes probe.vsock=connect sends on connection ``index``: pattern(o) = o ^ (o >> 8) ^ 37 * index."""
    block = bytes(((o ^ (o >> 8)) ^ (37 * index)) & 0xFF for o in range(65536))
    reps, rest = divmod(length, len(block))
    return block * reps + block[:rest]
