"""Shared fixtures: the probe guest and a subprocess runner for the VMM.

``probe_kernel``   path of the probe guest ELF (Linux 64-bit boot entry), built once per session.
``probe_kernel_pvh`` the same probe with the PVH entry note.
``run_vmm``        ``run_vmm(config_dict, *, args=(), timeout=60) -> CompletedRun`` writes the config
                   to ``tmp_path`` and runs ``python -m sparkler --no-api --config-file <cfg>`` with a
                   wall-clock watchdog that kills the whole process group.
``kvm``            skips the test (naming the host limitation) when /dev/kvm is unusable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sparkler.testing.probe import ProbeBuildError, Reports, build_probe, parse_reports

REPO_ROOT = Path(__file__).resolve().parent.parent


PVM_COMPAT_WORDS = ("noxsave", "nopv", "no-kvmclock")


def without_pvm_compat(cmdline: str) -> str:
    """``cmdline`` without the words the PVM compatibility mode appends (``--pvm-compat auto`` is on
    when the host's KVM is PVM): ``clearcpuid=...``, ``noxsave``, ``nopv``, ``no-kvmclock``."""
    words = cmdline.split()
    while words and (words[-1] in PVM_COMPAT_WORDS or words[-1].startswith("clearcpuid=")):
        words.pop()
    return " ".join(words)


def require_kvm() -> None:
    """Skip the calling test when this host has no usable /dev/kvm."""
    if not os.path.exists("/dev/kvm"):
        pytest.skip("host limitation: /dev/kvm does not exist (no KVM on this machine)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("host limitation: /dev/kvm is not readable and writable by this user")


@pytest.fixture
def kvm() -> None:
    """Skip the test when this host has no usable /dev/kvm."""
    require_kvm()


@dataclass(frozen=True)
class CompletedRun:
    """Result of one VMM run.  ``timed_out`` is True when the watchdog killed it."""

    returncode: int | None
    stdout: str
    stderr: str
    reports: Reports
    timed_out: bool = False
    duration_s: float = 0.0

    def describe(self) -> str:
        """Everything useful for an assertion message."""
        return (
            f"returncode={self.returncode} timed_out={self.timed_out} duration={self.duration_s:.2f}s\n"
            f"--- stdout ---\n{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-6000:]}"
        )


def _build(variant: str) -> Path:
    try:
        return build_probe(variant)
    except ProbeBuildError as exc:
        pytest.skip(f"probe guest cannot be built on this host: {exc}")


@pytest.fixture(scope="session")
def probe_kernel() -> Path:
    """The probe guest ELF, Linux 64-bit boot protocol entry (no PVH note)."""
    return _build("linux")


@pytest.fixture(scope="session")
def probe_kernel_pvh() -> Path:
    """The probe guest ELF carrying the PVH entry note (QEMU microvm, Firecracker PVH boot)."""
    return _build("pvh")


def _run(cmd: list[str], cwd: Path, timeout: float) -> CompletedRun:
    import time

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # own process group, so the watchdog can kill everything it started
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
    duration = time.monotonic() - start
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    return CompletedRun(
        returncode=None if timed_out else proc.returncode,
        stdout=stdout,
        stderr=stderr,
        reports=parse_reports(stdout),
        timed_out=timed_out,
        duration_s=duration,
    )


@pytest.fixture
def run_vmm(tmp_path: Path):
    """``run_vmm(config_dict, *, args=(), timeout=60) -> CompletedRun``.

    Writes ``config_dict`` as JSON to ``tmp_path`` and runs
    ``[sys.executable, "-m", "sparkler", "--no-api", "--config-file", cfg, *args]``.  The process runs
    in its own session; after ``timeout`` seconds of wall time the whole group is killed and the
    result has ``timed_out=True`` and ``returncode=None``.
    """
    counter = 0

    def run(config: dict, *, args: tuple[str, ...] | list[str] = (), timeout: float = 60) -> CompletedRun:
        nonlocal counter
        counter += 1
        cfg = tmp_path / f"vmm-config-{counter}.json"
        cfg.write_text(json.dumps(config, indent=2))
        cmd = [sys.executable, "-m", "sparkler", "--no-api", "--config-file", str(cfg), *args]
        return _run(cmd, tmp_path, timeout)

    return run


# --- the slow tier names each of its checks in the report ----------------------------------------
_SLOW_RESULTS: list[tuple[str, str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "slow" not in report.keywords:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        reason = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = str(report.longrepr[2])
        _SLOW_RESULTS.append((report.nodeid, report.outcome, reason))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    if not _SLOW_RESULTS:
        return
    terminalreporter.section("slow tier: checks")
    for nodeid, outcome, reason in _SLOW_RESULTS:
        line = f"{outcome.upper():8} {nodeid}"
        terminalreporter.write_line(line + (f"  ({reason})" if reason else ""))
