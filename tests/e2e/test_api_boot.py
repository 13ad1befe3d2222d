"""Boot the probe guest entirely through the REST API of a real VMM process (``--api-sock``).

Each test starts ``python -m sparkler --api-sock <tmp>/fc.sock`` in its own session with stdout
(serial console + log lines) and stderr sent to files, drives it with the SDK or with
``curl --unix-socket``, and checks what users check: the guest's PASS lines, ``GET /`` states, the
exit code after the guest resets, the log lines people grep for and the metrics file.

The probe guest ends with an i8042 reset (VMM exit 0) unless ``probe.hang=1``; then it stops in
``cli; hlt`` forever (it cannot react to Ctrl+Alt+Del), and the test ends the VMM with SIGHUP,
which Firecracker (and Sparkler) answer with a metrics flush and exit code 156.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparkler.sdk import MicroVM
from sparkler.testing.probe import parse_reports

pytestmark = pytest.mark.usefixtures("kvm")

BASE_ARGS = "console=ttyS0 reboot=k panic=1 probe.cpus=1 probe.mem_mib=128"
COMMON_PASSES = {"boot_params", "e820", "ram_access", "mptable"}
EXIT_SIGHUP = 156
TIMEOUT_S = 30

# Firecracker's log line: <local time with ns> [<id>:<thread>[:<LEVEL>][:<file>:<line>]] <message>
LOG_LINE = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9} \[(?P<id>[A-Za-z0-9-]+):(?P<thread>[^:\]]+)"
    r"(?::(?P<level>ERROR|WARN|INFO|DEBUG|TRACE))?(?::[^\]]+:\d+)?\] (?P<msg>.*)$"
)
TIMESTAMP_ANYWHERE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9} \[")


class Vmm:
    """One VMM process with its console/log file, metrics file and API socket in ``workdir``."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        self.sock = str(workdir / "fc.sock")
        self.metrics_path = workdir / "metrics.json"
        self.stdout_path = workdir / "stdout.txt"
        self.stderr_path = workdir / "stderr.txt"
        self.argv = [sys.executable, "-m", "sparkler", "--api-sock", self.sock, *args]
        self.popen_kwargs = {
            "cwd": workdir,
            "stdin": subprocess.DEVNULL,
            "start_new_session": True,  # own process group: the clean-up can kill everything
        }

    def start(self) -> subprocess.Popen:
        self._out = open(self.stdout_path, "wb")  # noqa: SIM115 - closed in stop()
        self._err = open(self.stderr_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(self.argv, stdout=self._out, stderr=self._err, **self.popen_kwargs)
        wait_for_socket(self.sock, self.proc)
        return self.proc

    def wait(self, timeout: float = TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"VMM did not exit within {timeout} s\n{self.describe()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def stop(self) -> None:
        self.kill()
        self._out.close()
        self._err.close()

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def log_lines(self) -> list[str]:
        """Log lines, also when one was written into the middle of a console line: the guest's
        console bytes and the logger share stdout, so a log line can start mid-line (each log line
        is one write(), so it is never split itself)."""
        lines = []
        for line in self.stdout.splitlines():
            start = TIMESTAMP_ANYWHERE.search(line)
            if start:
                lines.append(line[start.start() :])
        return lines

    def metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def describe(self) -> str:
        err = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return f"returncode={self.proc.poll()}\n--- stdout ---\n{self.stdout[-5000:]}\n--- stderr ---\n{err[-3000:]}"


def wait_for_socket(path: str, proc: subprocess.Popen, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"VMM exited with {proc.returncode} before serving the API")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
                return
            except OSError:
                time.sleep(0.01)
    raise AssertionError(f"API socket {path} did not appear within {timeout} s")


def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def vmm_factory(tmp_path):
    started: list[Vmm] = []

    def make(*args: str) -> Vmm:
        vmm = Vmm(tmp_path, *args)
        started.append(vmm)
        return vmm

    yield make
    for vmm in started:
        vmm.stop()


def metrics_total(docs: list[dict], group: str, key: str) -> int:
    """Counters are deltas per line: the total is the sum over all lines."""
    return sum(doc[group][key] for doc in docs)


def assert_probe_passed(text: str, expected=COMMON_PASSES, *, hang: bool = False) -> None:
    reports = parse_reports(text)
    finished = "INFO hang" in text if hang else reports.finished
    assert finished, "probe never printed its last line\n" + text[-4000:]
    assert not reports.fails, "\n".join(r.line for r in reports.fails)
    missing = {name for name in expected if not reports.passed(name)}
    assert not missing, f"missing PASS lines {sorted(missing)}\n" + text[-4000:]


def assert_firecracker_log_lines(vmm: Vmm, *, exit_line: str | None) -> None:
    lines = vmm.log_lines()
    bad = [line for line in lines if not LOG_LINE.match(line)]
    assert not bad, "log lines not in Firecracker's format:\n" + "\n".join(bad)
    messages = [LOG_LINE.match(line).group("msg") for line in lines]
    threads = {LOG_LINE.match(line).group("thread") for line in lines}
    assert any(m.startswith("Running Sparkler v") for m in messages), vmm.describe()
    assert "API server started." in messages
    assert any(m.startswith('The API server received a Put request on "/actions"') for m in messages)
    assert {"main", "fc_api"} <= threads
    if exit_line is not None:
        assert exit_line in messages, vmm.describe()


def _boot_args(*extra: str) -> str:
    return " ".join([BASE_ARGS, *extra])


# --- SDK -----------------------------------------------------------------------------------------
def test_api_boot_sdk_probe_passes_and_exits_zero_after_reset(vmm_factory, probe_kernel) -> None:
    vmm = vmm_factory("--metrics-path", "metrics.json")
    with MicroVM(vmm.sock) as vm:  # attach: the fixture owns the process
        vmm.start()
        assert vm.state == "Not started"
        vm.configure(str(probe_kernel), boot_args=_boot_args(), vcpus=1, mem_mib=128)
        vm.start()
        code = vmm.wait()

    assert code == 0, vmm.describe()
    assert_probe_passed(vmm.stdout)
    assert_firecracker_log_lines(vmm, exit_line="Sparkler exiting successfully. exit_code=0")
    docs = vmm.metrics()
    assert len(docs) >= 2, "expected the flush after boot and the one at exit"
    assert metrics_total(docs, "put_api_requests", "boot_source_count") == 1
    assert metrics_total(docs, "put_api_requests", "machine_cfg_count") == 1
    assert metrics_total(docs, "put_api_requests", "actions_count") == 1
    assert metrics_total(docs, "put_api_requests", "actions_fails") == 0
    assert metrics_total(docs, "get_api_requests", "instance_info_count") == 1
    assert metrics_total(docs, "i8042", "reset_count") == 1
    assert metrics_total(docs, "uart", "write_count") > 0
    assert metrics_total(docs, "vcpu", "exit_io_out") > 0


def test_api_boot_sdk_state_transitions_and_flush_metrics(vmm_factory, probe_kernel) -> None:
    vmm = vmm_factory("--metrics-path", "metrics.json")
    with MicroVM(vmm.sock) as vm:
        vmm.start()
        states = [vm.state]
        vm.configure(str(probe_kernel), boot_args=_boot_args("probe.hang=1"), vcpus=1, mem_mib=128)
        vm.start()
        states.append(vm.state)
        wait_for(lambda: "INFO hang" in vmm.stdout, what="the probe to finish its checks")
        vm.pause()
        states.append(vm.state)
        vm.resume()
        states.append(vm.state)
        before = len(vmm.metrics())
        vm.api.flush_metrics()
        after = vmm.metrics()
        os.kill(vmm.proc.pid, signal.SIGHUP)
        code = vmm.wait()

    assert states == ["Not started", "Running", "Paused", "Running"]
    assert len(after) == before + 1
    assert after[-1]["latencies_us"]["pause_vm"] > 0
    assert after[-1]["latencies_us"]["resume_vm"] > 0
    assert code == EXIT_SIGHUP, vmm.describe()
    assert_probe_passed(vmm.stdout, hang=True)
    docs = vmm.metrics()
    assert docs[-1]["signals"]["sighup"] == 1
    # InstanceStart and FlushMetrics; GET / once per state read above.
    assert metrics_total(docs, "put_api_requests", "actions_count") == 2
    assert metrics_total(docs, "get_api_requests", "instance_info_count") == 4
    assert_firecracker_log_lines(vmm, exit_line=None)


# --- curl ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def curl() -> str:
    path = shutil.which("curl")
    if path is None:
        pytest.skip("curl is not installed (tools/setup-env installs it)")
    return path


def _curl(curl: str, sock: str, method: str, path: str, body: dict | None = None) -> tuple[int, str]:
    cmd = [curl, "-sS", "--unix-socket", sock, "-X", method, "-w", "\n%{http_code}", f"http://localhost{path}"]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=True).stdout
    text, _, code = out.rpartition("\n")
    return int(code), text


def test_api_boot_curl_probe_passes_and_exits_zero(vmm_factory, probe_kernel, curl) -> None:
    vmm = vmm_factory("--metrics-path", "metrics.json")
    vmm.start()
    status, body = _curl(curl, vmm.sock, "GET", "/")
    assert status == 200 and json.loads(body)["state"] == "Not started"
    boot = {"kernel_image_path": str(probe_kernel), "boot_args": _boot_args()}
    assert _curl(curl, vmm.sock, "PUT", "/boot-source", boot)[0] == 204
    assert _curl(curl, vmm.sock, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})[0] == 204
    status, body = _curl(curl, vmm.sock, "PUT", "/actions", {"action_type": "FlushMetrics"})
    assert status == 400 and "fault_message" in json.loads(body)
    assert _curl(curl, vmm.sock, "PUT", "/actions", {"action_type": "InstanceStart"})[0] == 204

    assert vmm.wait() == 0, vmm.describe()
    assert_probe_passed(vmm.stdout)
    assert_firecracker_log_lines(vmm, exit_line="Sparkler exiting successfully. exit_code=0")
    docs = vmm.metrics()
    assert metrics_total(docs, "put_api_requests", "actions_count") == 2
    assert metrics_total(docs, "put_api_requests", "actions_fails") == 1


# --- --config-file together with --api-sock ------------------------------------------------------
def test_api_boot_config_file_boots_at_once_and_serves_the_api(vmm_factory, probe_kernel, tmp_path) -> None:
    config = {
        "boot-source": {"kernel_image_path": str(probe_kernel), "boot_args": _boot_args("probe.hang=1")},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "metrics": {"metrics_path": str(tmp_path / "metrics.json")},
    }
    (tmp_path / "vm.json").write_text(json.dumps(config))
    vmm = vmm_factory("--config-file", "vm.json")
    vmm.start()
    wait_for(lambda: "INFO hang" in vmm.stdout, what="the probe to run without any API call")
    with MicroVM(vmm.sock) as vm:
        assert vm.state == "Running"
        vm.api.flush_metrics()
        vm.pause()
        assert vm.state == "Paused"
    os.kill(vmm.proc.pid, signal.SIGHUP)
    assert vmm.wait() == EXIT_SIGHUP, vmm.describe()

    messages = [LOG_LINE.match(line).group("msg") for line in vmm.log_lines()]
    assert "Successfully started microvm that was configured from one single json" in messages
    assert messages.index("Successfully started microvm that was configured from one single json") < messages.index(
        "API server started."
    )
    docs = vmm.metrics()
    assert len(docs) >= 3  # after boot, FlushMetrics, at SIGHUP
    assert metrics_total(docs, "put_api_requests", "actions_count") == 1
