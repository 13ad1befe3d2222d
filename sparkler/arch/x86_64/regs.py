"""Initial vCPU state for the Linux 64-bit boot protocol: registers, GDT/IDT, page tables, FPU.

The vCPU starts directly in long mode (as Firecracker starts it): CR0.PE|PG, CR4.PAE, EFER.LME|LMA,
CR3 pointing at an identity map of the first 1 GiB built from 2 MiB pages, a flat GDT of four
entries (null, 64-bit code, data, TSS) at 0x500 and an empty IDT at 0x520. RSI points at the zero
page and RSP/RBP at the boot stack.
"""

from __future__ import annotations

import struct

from sparkler.arch.x86_64 import layout
from sparkler.kvm import uapi
from sparkler.memory import GuestMemory

X86_CR0_PE = 0x1
X86_CR0_PG = 0x8000_0000
X86_CR4_PAE = 0x20
EFER_LME = 0x100
EFER_LMA = 0x400

# GDT entry flags (access byte in the low byte, granularity/size nibble in bits 12-15).
GDT_CODE64 = 0xA09B
GDT_DATA = 0xC093
GDT_TSS = 0x808B

PTE_PRESENT_RW = 0x3
PDE_PRESENT_RW_2MIB = 0x83


def gdt_entry(flags: int, base: int, limit: int) -> int:
    """Encode one 8-byte segment descriptor."""
    return (
        ((base & 0xFF00_0000) << 32)
        | ((flags & 0x0000_F0FF) << 40)
        | ((limit & 0x000F_0000) << 32)
        | ((base & 0x00FF_FFFF) << 16)
        | (limit & 0x0000_FFFF)
    )


def segment_from_gdt(entry: int, index: int) -> uapi.kvm_segment:
    """The kvm_segment a CPU would load for GDT entry ``entry`` at slot ``index``."""
    seg = uapi.kvm_segment()
    seg.base = ((entry >> 16) & 0xFF_FFFF) | (((entry >> 56) & 0xFF) << 24)
    limit = (entry & 0xFFFF) | (((entry >> 48) & 0xF) << 16)
    seg.g = (entry >> 55) & 1
    seg.limit = (limit << 12) | 0xFFF if seg.g else limit
    seg.selector = index * 8
    seg.type = (entry >> 40) & 0xF
    seg.present = (entry >> 47) & 1
    seg.dpl = (entry >> 45) & 3
    seg.db = (entry >> 54) & 1
    seg.s = (entry >> 44) & 1
    seg.l = (entry >> 53) & 1
    seg.avl = (entry >> 52) & 1
    seg.unusable = 0 if seg.present else 1
    return seg


BOOT_GDT = (
    0,
    gdt_entry(GDT_CODE64, 0, 0xFFFFF),
    gdt_entry(GDT_DATA, 0, 0xFFFFF),
    gdt_entry(GDT_TSS, 0, 0xFFFFF),
)


def write_boot_tables(memory: GuestMemory) -> None:
    """GDT, IDT and the identity page tables, in guest memory."""
    memory.write(layout.BOOT_GDT_START, struct.pack("<4Q", *BOOT_GDT))
    memory.write_u64(layout.BOOT_IDT_START, 0)
    memory.write_u64(layout.PML4_START, layout.PDPTE_START | PTE_PRESENT_RW)
    memory.write_u64(layout.PDPTE_START, layout.PDE_START | PTE_PRESENT_RW)
    memory.write(layout.PDE_START, b"".join(struct.pack("<Q", (i << 21) | PDE_PRESENT_RW_2MIB) for i in range(512)))


def setup_sregs(memory: GuestMemory, vcpu: object) -> None:
    """Write the boot tables and put the vCPU in 64-bit long mode using them."""
    write_boot_tables(memory)
    sregs = vcpu.get_sregs()  # type: ignore[attr-defined]
    code = segment_from_gdt(BOOT_GDT[1], 1)
    data = segment_from_gdt(BOOT_GDT[2], 2)
    tss = segment_from_gdt(BOOT_GDT[3], 3)
    sregs.cs = code
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.tr = tss
    sregs.gdt.base = layout.BOOT_GDT_START
    sregs.gdt.limit = len(BOOT_GDT) * 8 - 1
    sregs.idt.base = layout.BOOT_IDT_START
    sregs.idt.limit = 7
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG
    sregs.cr3 = layout.PML4_START
    sregs.cr4 |= X86_CR4_PAE
    sregs.efer |= EFER_LME | EFER_LMA
    vcpu.set_sregs(sregs)  # type: ignore[attr-defined]


def setup_regs(vcpu: object, entry: int) -> None:
    regs = uapi.kvm_regs()
    regs.rflags = 0x2  # bit 1 is reserved and always set
    regs.rip = entry
    regs.rsp = regs.rbp = layout.BOOT_STACK_POINTER
    regs.rsi = layout.ZERO_PAGE_START  # Linux 64-bit boot protocol: RSI = boot_params
    vcpu.set_regs(regs)  # type: ignore[attr-defined]


def setup_fpu(vcpu: object) -> None:
    fpu = uapi.kvm_fpu()
    fpu.fcw = 0x37F
    fpu.mxcsr = 0x1F80
    vcpu.set_fpu(fpu)  # type: ignore[attr-defined]
