"""The shipped policies are enough for a real VMM: probe boots with every thread filtered.

Until the lead wires ``install_filter`` into the VMM threads, a launcher (``LAUNCHER`` below) does it
from outside, at the points the wiring will use: ``fc_api`` and ``fc_vcpu <n>`` install their filter
right after naming themselves (wrapping ``prctl_set_name``), and the main thread installs ``vmm``
once it has started the first vCPU thread (stricter than the final wiring: later vCPU threads then
run under vmm + vcpu). When the wiring lands, these tests can run ``python -m sparkler`` directly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparkler.sdk.client import Client
from sparkler.testing.probe import parse_reports

pytestmark = pytest.mark.usefixtures("kvm")

LAUNCHER = r"""
import sys, threading
from sparkler.host import thread_name
from sparkler.seccomp import install as sc

sc.configure(no_seccomp="--no-seccomp" in sys.argv)
VIOLATE = "--test-violation" in sys.argv  # test-only: fc_vcpu 0 makes a forbidden syscall
if VIOLATE:
    sys.argv.remove("--test-violation")
_set_name = thread_name.prctl_set_name

def named(name):
    _set_name(name)
    if name == "fc_api":
        sc.install_filter("api")
    elif name.startswith("fc_vcpu"):
        sc.install_filter("vcpu")
        if VIOLATE and name == "fc_vcpu 0":
            import os
            os.getppid()

thread_name.prctl_set_name = named
_start = threading.Thread.start
_vmm_installed = []

def start(self):
    _start(self)
    on_main = threading.current_thread() is threading.main_thread()
    if self.name.startswith("fc_vcpu") and on_main and not _vmm_installed:
        _vmm_installed.append(True)
        sc.install_filter("vmm")

threading.Thread.start = start
from sparkler.cli import main
sys.exit(main())
"""
BOOT_ARGS = "console=ttyS0 reboot=k panic=1 probe.mem_mib=128"
EXIT_SIGHUP = 156
EXIT_BAD_SYSCALL = 148
TIMEOUT_S = 60


def _boot_source(kernel: Path, vcpus: int, extra: str = "") -> dict:
    return {"kernel_image_path": str(kernel), "boot_args": f"{BOOT_ARGS} probe.cpus={vcpus} {extra}".strip()}


def test_filtered_vmm_boots_probe_from_config_file(tmp_path, probe_kernel):
    config = {
        "boot-source": _boot_source(probe_kernel, 2),
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 128},
    }
    cfg = tmp_path / "vm.json"
    cfg.write_text(json.dumps(config))
    result = subprocess.run(
        [sys.executable, "-c", LAUNCHER, "--no-api", "--config-file", str(cfg)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=tmp_path,
    )
    reports = parse_reports(result.stdout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert reports.finished and not reports.fails


def _seccomp_modes(pid: int) -> dict[str, int]:
    modes = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            name = f.read().strip()
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            mode = next(int(line.split()[1]) for line in f if line.startswith("Seccomp:"))
        modes[name if tid != str(pid) else "main"] = mode
    return modes


def _wait_socket(path: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"VMM exited with {proc.returncode}"
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(path)
                return
            except OSError:
                time.sleep(0.01)
    raise AssertionError("no API socket")


@pytest.mark.parametrize(("flags", "expected_mode"), [((), 2), (("--no-seccomp",), 0)])
def test_filtered_vmm_api_boot_every_thread_has_seccomp_mode(tmp_path, probe_kernel, flags, expected_mode):
    sock = str(tmp_path / "fc.sock")
    out = open(tmp_path / "stdout.txt", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, "--api-sock", sock, *flags],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        _wait_socket(sock, proc)
        with Client(sock) as api:
            api.request("PUT", "/boot-source", _boot_source(probe_kernel, 2, "probe.hang=1"))
            api.request("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 128})
            api.request("PUT", "/actions", {"action_type": "InstanceStart"})
            deadline = time.monotonic() + TIMEOUT_S
            while "INFO hang" not in (tmp_path / "stdout.txt").read_text(errors="replace"):
                assert time.monotonic() < deadline, "probe did not finish"
                time.sleep(0.05)
            api.request("PATCH", "/vm", {"state": "Paused"})
            api.request("PATCH", "/vm", {"state": "Resumed"})
            api.request("GET", "/")
        modes = _seccomp_modes(proc.pid)
        assert {"main", "fc_api", "fc_vcpu 0", "fc_vcpu 1"} <= set(modes), modes
        assert {name: expected_mode for name in modes} == modes
        os.kill(proc.pid, signal.SIGHUP)  # the signal path must pass the filters too
        assert proc.wait(TIMEOUT_S) == EXIT_SIGHUP
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.close()
    reports = parse_reports((tmp_path / "stdout.txt").read_text(errors="replace"))
    assert not reports.fails


def test_filtered_vmm_forbidden_syscall_exits_148(tmp_path, probe_kernel):
    config = {
        "boot-source": _boot_source(probe_kernel, 1),
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
    }
    cfg = tmp_path / "vm.json"
    cfg.write_text(json.dumps(config))
    result = subprocess.run(
        [sys.executable, "-c", LAUNCHER, "--test-violation", "--no-api", "--config-file", str(cfg)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=tmp_path,
    )
    assert result.returncode == EXIT_BAD_SYSCALL, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Shutting down VM after intercepting signal 31" in result.stdout
