"""--boot-timer: the guest's one-byte write of 123 at 0xc0000000 produces Firecracker's log line."""

import re

import pytest

BOOT_TIME_LINE = re.compile(
    r"\[anonymous-instance:fc_vcpu 0\] Guest-boot-time = +(\d+) us (\d+) ms, +(\d+) CPU us (\d+) CPU ms$",
    re.M,
)


def _config(kernel, extra=""):
    return {
        "boot-source": {
            "kernel_image_path": str(kernel),
            "boot_args": f"console=ttyS0 reboot=k panic=1 probe.cpus=1 probe.mem_mib=128 {extra}".strip(),
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
    }


@pytest.mark.usefixtures("kvm")
def test_boot_timer_enabled_guest_write_logs_boot_time(probe_kernel, run_vmm):
    run = run_vmm(_config(probe_kernel, "probe.boot_timer=1"), args=["--boot-timer"])
    assert run.returncode == 0, run.describe()
    match = BOOT_TIME_LINE.search(run.stdout)
    assert match, run.describe()
    wall_us, wall_ms, cpu_us, cpu_ms = map(int, match.groups())
    assert wall_ms == wall_us // 1000 and cpu_ms == cpu_us // 1000
    assert 0 < wall_us < 60_000_000


@pytest.mark.usefixtures("kvm")
def test_boot_timer_disabled_write_is_ignored(probe_kernel, run_vmm):
    run = run_vmm(_config(probe_kernel, "probe.boot_timer=1"))
    assert run.returncode == 0, run.describe()
    assert "INFO boot_timer written" in run.stdout
    assert "Guest-boot-time" not in run.stdout


@pytest.mark.usefixtures("kvm")
def test_boot_timer_enabled_without_guest_write_logs_nothing(probe_kernel, run_vmm):
    run = run_vmm(_config(probe_kernel), args=["--boot-timer"])
    assert run.returncode == 0, run.describe()
    assert "Guest-boot-time" not in run.stdout
