"""/mmds over the API of the real VMM, before and after a probe boot, with the default seccomp filters
on every thread: the MMDS code loads on first use after boot (under the vmm filter) and works."""

import os
import signal

import pytest

from sparkler.sdk import ApiError, MicroVM

from .test_api_boot import _boot_args, vmm_factory, wait_for  # noqa: F401 - fixture

EXIT_SIGHUP = 156


def _seccomp_modes(pid: int) -> dict[str, int]:
    """Thread name -> Seccomp mode (2 = filter) of every thread of ``pid``."""
    modes = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        modes[fields["Name"].strip()] = int(fields["Seccomp"])
    return modes


def test_mmds_api_after_boot_under_seccomp(vmm_factory, probe_kernel) -> None:  # noqa: F811
    vmm = vmm_factory("--mmds-size-limit", "200")
    with MicroVM(vmm.sock) as vm:
        vmm.start()
        vm.configure(str(probe_kernel), boot_args=_boot_args("probe.hang=1"), vcpus=1, mem_mib=128)
        vm.start()
        wait_for(lambda: "INFO hang" in vmm.stdout, what="the probe to finish its checks")
        with pytest.raises(ApiError) as not_set_up:
            vm.api.get_mmds()  # no mmds-config and no data: Firecracker's 400
        vm.api.put_mmds({"latest": {"meta-data": {"ami-id": "ami-1", "drop": 1}}})
        vm.api.patch_mmds({"latest": {"meta-data": {"drop": None, "hostname": "vm1"}}})
        document = vm.api.get_mmds()
        with pytest.raises(ApiError) as too_big:
            vm.api.put_mmds({"k": "x" * 300})
        after = vm.api.get_mmds()
        state = vm.state
        modes = _seccomp_modes(vmm.proc.pid)
        os.kill(vmm.proc.pid, signal.SIGHUP)
        code = vmm.wait()

    assert not_set_up.value.status == 400 and "not initialized" in not_set_up.value.fault_message
    assert document == {"latest": {"meta-data": {"ami-id": "ami-1", "hostname": "vm1"}}}
    assert too_big.value.status == 413
    assert after == document and state == "Running"
    assert {"fc_api", "fc_vcpu 0"} <= set(modes) and set(modes.values()) == {2}, modes  # filtered
    assert code == EXIT_SIGHUP, vmm.describe()  # not 148: no syscall outside the filters
    status = [line for line in vmm.log_lines() if "Seccomp" in line or "bad syscall" in line.lower()]
    assert not status, status
