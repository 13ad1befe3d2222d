"""Boot MSR list (Firecracker's create_boot_msr_entries)."""

from __future__ import annotations

from sparkler.arch.x86_64 import msr


def test_boot_msr_entries_firecracker_list_exact_values() -> None:
    entries = dict(msr.boot_msr_entries())
    zero = (msr.MSR_IA32_SYSENTER_CS, msr.MSR_IA32_SYSENTER_ESP, msr.MSR_IA32_SYSENTER_EIP, msr.MSR_STAR,
            msr.MSR_CSTAR, msr.MSR_KERNEL_GS_BASE, msr.MSR_SYSCALL_MASK, msr.MSR_LSTAR, msr.MSR_IA32_TSC)
    for index in zero:
        assert entries.pop(index) == 0
    assert entries == {0x1A0: 1, 0x2FF: 0x806}  # MISC_ENABLE fast strings; MTRRdefType enabled, WB


def test_boot_msr_entries_architectural_indices() -> None:
    assert (msr.MSR_IA32_SYSENTER_CS, msr.MSR_IA32_SYSENTER_ESP, msr.MSR_IA32_SYSENTER_EIP) == (0x174, 0x175, 0x176)
    assert (msr.MSR_STAR, msr.MSR_LSTAR, msr.MSR_CSTAR, msr.MSR_SYSCALL_MASK) == (
        0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084)
    assert (msr.MSR_KERNEL_GS_BASE, msr.MSR_IA32_TSC) == (0xC000_0102, 0x10)


def test_boot_msr_entries_no_duplicates_fresh_list_each_call() -> None:
    first = msr.boot_msr_entries()
    assert len(first) == 11 and len({i for i, _ in first}) == 11
    first.clear()
    assert len(msr.boot_msr_entries()) == 11
    assert all(0 <= v < 2**64 and 0 <= i < 2**32 for i, v in msr.boot_msr_entries())
