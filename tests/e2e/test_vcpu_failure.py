"""A guest that breaks the vCPU ends the VMM with exit code 1 and a log line that says why."""

import pytest

from sparkler.testing.images import make_elf

ENTRY = 0x100000
# int3 with the boot IDT (limit 7, no gates): on a PVM host KVM's emulator cannot run it
# (KVM_EXIT_INTERNAL_ERROR); with hardware virtualisation #BP cannot be delivered, escalates to a
# triple fault (KVM_EXIT_SHUTDOWN). Either way the VMM must stop with exit code 1, not hang.
INT3_GUEST = bytes([0xCC, 0xEB, 0xFE])  # int3; jmp $


@pytest.mark.usefixtures("kvm")
def test_vcpu_failure_guest_int3_exits_1_with_reason(tmp_path, run_vmm):
    kernel = tmp_path / "int3.elf"
    kernel.write_bytes(make_elf([(ENTRY, INT3_GUEST, len(INT3_GUEST))], ENTRY))
    run = run_vmm(
        {
            "boot-source": {"kernel_image_path": str(kernel), "boot_args": "console=ttyS0"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
        },
        timeout=60,
    )
    assert not run.timed_out, run.describe()
    assert run.returncode == 1, run.describe()
    assert "KVM_EXIT_INTERNAL_ERROR" in run.stdout or "KVM_EXIT_SHUTDOWN" in run.stdout, run.describe()
    assert "exiting with error. exit_code=1" in run.stdout, run.describe()
