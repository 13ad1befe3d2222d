"""Firecracker's signal handling on a real VMM process (catalog section 10.4).

Fatal signals sent with kill(2) end the VMM with Firecracker's exit code after logging
``Shutting down VM after intercepting signal <n>, code <si_code>.`` and flushing the metrics;
SIGPIPE is only counted. The pre-boot cases need no KVM (the VMM only serves the API).
"""

from __future__ import annotations

import os
import signal

import pytest

from sparkler.sdk import MicroVM
from tests.e2e import test_api_boot as api_boot
from tests.e2e.test_api_boot import EXIT_SIGHUP, LOG_LINE, _boot_args, wait_for

vmm_factory = api_boot.vmm_factory  # the same VMM process fixture as the API boot tests

FATAL = [
    (signal.SIGHUP, 156, "signals", "sighup"),
    (signal.SIGXCPU, 154, "signals", "sigxcpu"),
    (signal.SIGXFSZ, 151, "signals", "sigxfsz"),
    (signal.SIGBUS, 149, "signals", "sigbus"),
    (signal.SIGSEGV, 150, "signals", "sigsegv"),
    (signal.SIGILL, 157, "signals", "sigill"),
    (signal.SIGSYS, 148, "seccomp", "num_faults"),
]


def _messages(vmm) -> list[str]:
    return [m.group("msg") for line in vmm.log_lines() if (m := LOG_LINE.match(line))]


@pytest.mark.parametrize(("signum", "code", "group", "key"), FATAL, ids=[s.name for s, *_ in FATAL])
def test_signal_fatal_before_boot_exits_with_firecracker_code(vmm_factory, signum, code, group, key) -> None:
    vmm = vmm_factory("--metrics-path", "metrics.json")
    vmm.start()
    os.kill(vmm.proc.pid, signum)
    assert vmm.wait() == code, vmm.describe()
    assert f"Shutting down VM after intercepting signal {int(signum)}, code 0." in _messages(vmm)
    docs = vmm.metrics()
    assert docs, "the handler flushes the metrics before exiting"
    assert docs[-1][group][key] == 1


def test_signal_sighup_stops_a_running_vm_with_156(vmm_factory, probe_kernel, kvm) -> None:
    vmm = vmm_factory("--metrics-path", "metrics.json")
    with MicroVM(vmm.sock) as vm:
        vmm.start()
        vm.configure(str(probe_kernel), boot_args=_boot_args("probe.hang=1"))
        vm.start()
        wait_for(lambda: "INFO hang" in vmm.stdout, what="the probe to finish its checks")
        assert vm.state == "Running"
        os.kill(vmm.proc.pid, signal.SIGHUP)
        assert vmm.wait() == EXIT_SIGHUP, vmm.describe()
    assert "Shutting down VM after intercepting signal 1, code 0." in _messages(vmm)
    assert vmm.metrics()[-1]["signals"]["sighup"] == 1


def test_signal_sigpipe_is_counted_and_does_not_kill(vmm_factory, probe_kernel, kvm) -> None:
    vmm = vmm_factory("--metrics-path", "metrics.json")
    with MicroVM(vmm.sock) as vm:
        vmm.start()
        os.kill(vmm.proc.pid, signal.SIGPIPE)
        wait_for(lambda: "Received signal 13, code 0." in _messages(vmm), what="the SIGPIPE log line")
        assert vm.state == "Not started"
        vm.configure(str(probe_kernel), boot_args=_boot_args("probe.hang=1"))
        vm.start()
        # Console and log share stdout: wait for the guest to finish printing so lines do not mix.
        wait_for(lambda: "INFO hang" in vmm.stdout, what="the probe to finish its checks")
        os.kill(vmm.proc.pid, signal.SIGPIPE)
        wait_for(lambda: vmm.stdout.count("Received signal 13, code 0.") == 2, what="the second SIGPIPE")
        assert vm.state == "Running"
        vm.api.flush_metrics()
        assert vmm.proc.poll() is None
        os.kill(vmm.proc.pid, signal.SIGHUP)
        assert vmm.wait() == EXIT_SIGHUP, vmm.describe()
    docs = vmm.metrics()
    assert sum(doc["signals"]["sigpipe"] for doc in docs) == 2


def test_signal_real_segfault_dies_by_the_signal_instead_of_spinning() -> None:
    """A real fault cannot be handled in Python (the faulting instruction would run again forever):
    SA_RESETHAND makes the second fault take the default action."""
    import subprocess
    import sys

    code = (
        "from sparkler import metrics, logger; from sparkler.host import signals; "
        "signals.install(metrics.METRICS, logger.error); "
        "import ctypes; ctypes.string_at(0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert proc.returncode == -signal.SIGSEGV
