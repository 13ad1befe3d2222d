"""PVM compatibility mode end to end: the probe guest runs int3 / int $0x80 at CPL0.

On a PVM host the emulator cannot run them; with the mode on (``auto`` there, or ``on``) the VMM
reflects each into the guest and the probe's IDT handler sees vector 3 / 0x80 with RIP just after
the instruction. With ``--pvm-compat off`` the same guest stops with KVM_EXIT_INTERNAL_ERROR. On a
hardware-KVM host the CPU runs them natively, the mode stays off under ``auto`` and says nothing.
"""

from __future__ import annotations

import pytest

from tests.e2e.test_probe_boot import _assert_clean_run, _config

SOFTINT_PASSES = {"softint_int3", "softint_int80"}
MODE_LINE = "PVM compatibility mode on"


def _host_kind() -> str:
    from sparkler.kvm.system import host_kind

    return host_kind()


def _softint_config(kernel, vcpus: int = 1) -> dict:
    return _config(kernel, vcpus=vcpus, mem_mib=64, extra="probe.softint=1")


def test_softint_reflected_with_auto_mode(kvm, probe_kernel, run_vmm) -> None:
    run = run_vmm(_softint_config(probe_kernel), timeout=60)
    _assert_clean_run(run, SOFTINT_PASSES)
    output = run.stdout + run.stderr
    if _host_kind() == "pvm":
        assert MODE_LINE in output and "auto: host KVM is PVM" in output, run.describe()
        assert "noxsave" in output and "no-kvmclock" in output, run.describe()
        assert "nopv" not in output, "nopv is for several vCPUs only\n" + run.describe()
    else:
        assert MODE_LINE not in output, run.describe()


def test_softint_reflected_with_mode_forced_on_and_two_vcpus(kvm, probe_kernel, run_vmm) -> None:
    run = run_vmm(_softint_config(probe_kernel, vcpus=2), args=("--pvm-compat", "on"), timeout=60)
    _assert_clean_run(run, SOFTINT_PASSES)
    output = run.stdout + run.stderr
    assert MODE_LINE in output and "--pvm-compat on" in output, run.describe()
    assert " nopv" in output, run.describe()


def test_softint_without_mode_stops_with_internal_error(kvm, probe_kernel, run_vmm) -> None:
    if _host_kind() != "pvm":
        pytest.skip("hardware KVM runs int3 natively: there is no emulation failure to show")
    run = run_vmm(_softint_config(probe_kernel), args=("--pvm-compat", "off"), timeout=60)
    output = run.stdout + run.stderr
    assert not run.timed_out, run.describe()
    assert run.returncode == 1, run.describe()
    assert "KVM_EXIT_INTERNAL_ERROR" in output and "instruction bytes: cc" in output, run.describe()
    assert MODE_LINE not in output, run.describe()
    assert not run.reports.passed("softint_int3"), run.describe()


def test_bad_pvm_compat_value_is_an_argument_error(run_vmm, probe_kernel) -> None:
    run = run_vmm(_softint_config(probe_kernel), args=("--pvm-compat", "maybe"), timeout=30)
    assert run.returncode == 153, run.describe()
    assert "pvm-compat" in run.stderr + run.stdout, run.describe()
