"""The VMM filters its own threads by default (catalog section 10): real ``python -m sparkler`` runs.

* every thread shows ``Seccomp: 2`` in ``/proc/<pid>/task/*/status`` (``0`` with ``--no-seccomp``),
  in ``--no-api --config-file`` mode and in API mode, across boot, pause/resume, PATCH /drives,
  FlushMetrics, SendCtrlAltDel and the exit;
* the test-only hook (``SPARKLER_TEST_HOOKS=1`` + ``SPARKLER_TEST_BAD_SYSCALL=<role>``) makes one
  thread call a forbidden syscall: the process ends as Firecracker's does (exit code 148, the two
  ``Shutting down VM after intercepting ...`` lines, ``seccomp.num_faults = 1`` in the metrics);
* ``--seccomp-filter FILE`` is used when given, and a bad file is an error before any guest runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest

from sparkler.sdk.client import Client
from sparkler.testing.probe import parse_reports
from tests.e2e.test_api_boot import Vmm, wait_for

pytestmark = pytest.mark.usefixtures("kvm")

BOOT_ARGS = "console=ttyS0 reboot=k panic=1 probe.mem_mib=128"
EXIT_SIGHUP = 156
EXIT_BAD_SYSCALL = 148
TIMEOUT_S = 60


def _boot_source(kernel: Path, vcpus: int, extra: str = "") -> dict:
    return {"kernel_image_path": str(kernel), "boot_args": f"{BOOT_ARGS} probe.cpus={vcpus} {extra}".strip()}


def seccomp_modes(pid: int) -> dict[str, int]:
    """``{thread name: Seccomp mode}`` of every thread of ``pid`` (the main thread as ``main``)."""
    modes = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        mode = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Seccomp:"))
        modes["main" if tid == str(pid) else name] = mode
    return modes


def _assert_all(pid: int, expected: int, names: set[str]) -> None:
    modes = seccomp_modes(pid)
    assert names <= set(modes), modes
    assert modes == {name: expected for name in modes}, modes


@pytest.mark.parametrize(("flags", "expected"), [((), 2), (("--no-seccomp",), 0)], ids=["default", "no-seccomp"])
def test_config_file_mode_every_thread_filtered(tmp_path, probe_kernel, flags, expected):
    cfg = tmp_path / "vm.json"
    cfg.write_text(json.dumps({
        "boot-source": _boot_source(probe_kernel, 2, "probe.hang=1"),
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 128},
    }))  # fmt: skip
    fifo = tmp_path / "console.in"
    os.mkfifo(fifo)
    console_in = os.open(fifo, os.O_RDWR)  # a FIFO: the VMM thread forwards console input
    out = tmp_path / "stdout.txt"
    with open(out, "wb") as out_f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sparkler", "--no-api", "--config-file", str(cfg),
             "--metrics-path", str(tmp_path / "metrics.json"), *flags],
            stdin=console_in, stdout=out_f, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: "INFO hang" in out.read_text(errors="replace"), TIMEOUT_S, "the probe")
        os.write(console_in, b"x\n")  # input through the filtered main thread into the UART
        time.sleep(0.1)
        _assert_all(proc.pid, expected, {"main", "fc_vcpu 0", "fc_vcpu 1"})
        os.kill(proc.pid, signal.SIGHUP)  # the signal path and the final flush pass the filters too
        assert proc.wait(TIMEOUT_S) == EXIT_SIGHUP, out.read_text(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(console_in)
    text = out.read_text(errors="replace")
    assert not parse_reports(text).fails
    assert "Shutting down VM after intercepting signal 1, code 0." in text


@pytest.mark.parametrize(("flags", "expected"), [((), 2), (("--no-seccomp",), 0)], ids=["default", "no-seccomp"])
def test_api_mode_every_thread_filtered_across_the_lifecycle(tmp_path, probe_kernel, flags, expected):
    small, big = tmp_path / "small.img", tmp_path / "big.img"
    small.write_bytes(bytes(64 * 1024))
    big.write_bytes(bytes(256 * 1024))
    vmm = Vmm(tmp_path, "--metrics-path", str(tmp_path / "metrics.json"), *flags)
    try:
        vmm.start()
        pid = vmm.proc.pid
        # Before InstanceStart only fc_api is filtered (the main thread builds the VM unfiltered). The
        # socket listens (bound by the main thread) a moment before fc_api has named itself and
        # installed its filter; the main thread logs this line once fc_api has done both.
        wait_for(lambda: "API server started." in vmm.stdout, 10, "the fc_api thread")
        assert seccomp_modes(pid) == {"main": 0, "fc_api": expected}
        with Client(vmm.sock) as api:
            api.request("PUT", "/drives/rootfs", {"drive_id": "rootfs", "is_root_device": True,
                                                  "path_on_host": str(small)})  # fmt: skip
            boot = _boot_source(probe_kernel, 2, "probe.blk=rw probe.blk_resize=1 probe.hang=1")
            api.request("PUT", "/boot-source", boot)
            api.request("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 128})
            api.request("PUT", "/actions", {"action_type": "InstanceStart"})
            wait_for(lambda: "INFO blk_waiting" in vmm.stdout, TIMEOUT_S, "the block driver")
            names = {"main", "fc_api", "fc_vcpu 0", "fc_vcpu 1"}
            _assert_all(pid, expected, names)
            api.request("PATCH", "/vm", {"state": "Paused"})
            _assert_all(pid, expected, names)
            api.request("PATCH", "/vm", {"state": "Resumed"})
            api.request("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": str(big)})
            wait_for(lambda: "INFO hang" in vmm.stdout, TIMEOUT_S, "the probe")
            api.request("PUT", "/actions", {"action_type": "FlushMetrics"})
            api.request("PUT", "/actions", {"action_type": "SendCtrlAltDel"})
            api.request("GET", "/vm/config")
            _assert_all(pid, expected, names)
        os.kill(pid, signal.SIGHUP)
        assert vmm.wait() == EXIT_SIGHUP, vmm.describe()
    finally:
        vmm.stop()
    text = vmm.stdout
    assert "PASS blk_resize capacity=512" in text, vmm.describe()
    assert not parse_reports(text).fails, vmm.describe()
    assert len(vmm.metrics()) >= 3  # after boot, FlushMetrics, at SIGHUP


def test_api_mode_guest_reset_exits_zero_with_filters(tmp_path, probe_kernel):
    vmm = Vmm(tmp_path)
    try:
        vmm.start()
        with Client(vmm.sock) as api:
            api.request("PUT", "/boot-source", _boot_source(probe_kernel, 1))
            api.request("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
            api.request("PUT", "/actions", {"action_type": "InstanceStart"})
        assert vmm.wait() == 0, vmm.describe()  # shutdown of every thread and the interpreter, filtered
    finally:
        vmm.stop()
    assert "Sparkler exiting successfully. exit_code=0" in vmm.stdout


# --- violations -----------------------------------------------------------------------------------
THREAD_OF_ROLE = {"vcpu": "fc_vcpu 0", "api": "fc_api", "vmm": "main"}


@pytest.mark.parametrize("role", ["vcpu", "api", "vmm"])
def test_forbidden_syscall_kills_the_process_like_firecracker(tmp_path, probe_kernel, role):
    cfg = tmp_path / "vm.json"
    cfg.write_text(json.dumps({
        "boot-source": _boot_source(probe_kernel, 1, "probe.hang=1"),
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
    }))  # fmt: skip
    metrics = tmp_path / "metrics.json"
    env = dict(os.environ, SPARKLER_TEST_HOOKS="1", SPARKLER_TEST_BAD_SYSCALL=role)
    result = subprocess.run(
        [sys.executable, "-m", "sparkler", "--api-sock", str(tmp_path / "fc.sock"), "--config-file", str(cfg),
         "--metrics-path", str(metrics)],
        capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == EXIT_BAD_SYSCALL, out[-3000:] + result.stderr[-2000:]
    assert "Shutting down VM after intercepting signal 31, code 0." in out
    named = "Shutting down VM after intercepting a bad syscall (110)." in out
    assert named or "Shutting down VM after intercepting a bad syscall." in out, out[-3000:]
    if named:  # the kernel audit record was readable (root, /dev/kmsg, not rate-limited)
        thread = THREAD_OF_ROLE[role]
        assert f"The bad syscall was getppid (110) on thread {thread} (from the kernel audit log)." in out, out[-3000:]
    else:
        assert "dmesg | grep 'type=1326'" in out
    docs = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    assert sum(doc["seccomp"]["num_faults"] for doc in docs) == 1


def test_test_hook_is_ignored_without_the_test_switch(tmp_path, probe_kernel):
    cfg = tmp_path / "vm.json"
    cfg.write_text(json.dumps({"boot-source": _boot_source(probe_kernel, 1),
                               "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "SPARKLER_TEST_HOOKS"}
    env["SPARKLER_TEST_BAD_SYSCALL"] = "vcpu"
    result = subprocess.run([sys.executable, "-m", "sparkler", "--no-api", "--config-file", str(cfg)],
                            capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path, env=env)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    assert parse_reports(result.stdout).finished


# --- --seccomp-filter -----------------------------------------------------------------------------
def _shipped() -> dict:
    return {
        role: json.loads(resources.files("sparkler.seccomp").joinpath("filters", f"{role}.json").read_text())[role]
        for role in ("vmm", "api", "vcpu")
    }


def _run_config(tmp_path: Path, kernel: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "vm.json"
    cfg.write_text(json.dumps({"boot-source": _boot_source(kernel, 1),
                               "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}))  # fmt: skip
    return subprocess.run([sys.executable, "-m", "sparkler", "--no-api", "--config-file", str(cfg), *flags],
                          capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)  # fmt: skip


def test_custom_filter_file_is_the_one_installed(tmp_path, probe_kernel):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_shipped()))
    result = _run_config(tmp_path, probe_kernel, "--seccomp-filter", str(good))
    assert result.returncode == 0, result.stdout[-3000:]
    assert parse_reports(result.stdout).finished

    no_run = _shipped()  # the vcpu filter without KVM_RUN: the first KVM_RUN is a violation
    no_run["vcpu"]["filter"] = [
        rule for rule in no_run["vcpu"]["filter"]
        if not (rule["syscall"] == "ioctl" and rule["args"][0]["val"] == 0xAE80)
    ]  # fmt: skip
    bad = tmp_path / "no-kvm-run.json"
    bad.write_text(json.dumps(no_run))
    result = _run_config(tmp_path, probe_kernel, "--seccomp-filter", str(bad))
    assert result.returncode == EXIT_BAD_SYSCALL, result.stdout[-3000:]
    assert "INFO probe start" not in result.stdout  # the guest never ran an instruction


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the seccomp filter file"),
        ("{not json", "invalid JSON"),
        (json.dumps({"vmm": {}, "api": {}}), "Missing thread category: vcpu"),
        (json.dumps({"vmm": {}, "api": {}, "vcpu": {}, "gpu": {}}), "Invalid thread categories"),
        (json.dumps({r: {"default_action": "trap", "filter_action": "allow", "filter": [{"syscall": "no_such"}]}
                     for r in ("vmm", "api", "vcpu")}), "unknown syscall 'no_such'"),
        (json.dumps({r: {"default_action": "explode", "filter_action": "allow"} for r in ("vmm", "api", "vcpu")}),
         "invalid action"),
    ],
    ids=["missing", "json", "category", "extra-category", "syscall", "action"],
)  # fmt: skip
def test_bad_filter_file_is_a_clear_error_before_any_guest_runs(tmp_path, probe_kernel, content, message):
    path = tmp_path / "filters.json"
    if content is not None:
        path.write_text(content)
    result = _run_config(tmp_path, probe_kernel, "--seccomp-filter", str(path))
    assert result.returncode == 1, result.stdout[-3000:]
    assert "Error retrieving seccomp filters: " in result.stdout and message in result.stdout, result.stdout
    assert "exiting with error. exit_code=1" in result.stdout
    assert "INFO probe start" not in result.stdout


def test_seccomp_flags_exclude_each_other(tmp_path, probe_kernel):
    result = _run_config(tmp_path, probe_kernel, "--seccomp-filter", "f.json", "--no-seccomp")
    assert result.returncode == 153
    assert "cannot be used together" in result.stderr
