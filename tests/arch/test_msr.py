"""Boot MSR list (Firecracker's create_boot_msr_entries)."""

from __future__ import annotations

from sparkler.arch.x86_64 import msr


def test_boot_msrs() -> None:
    entries = dict(msr.boot_msr_entries())
    zero = (msr.MSR_IA32_SYSENTER_CS, msr.MSR_IA32_SYSENTER_ESP, msr.MSR_IA32_SYSENTER_EIP, msr.MSR_STAR,
            msr.MSR_CSTAR, msr.MSR_KERNEL_GS_BASE, msr.MSR_SYSCALL_MASK, msr.MSR_LSTAR, msr.MSR_IA32_TSC)
    for index in zero:
        assert entries.pop(index) == 0
    assert entries == {0x1A0: 1, 0x2FF: 0x806}
