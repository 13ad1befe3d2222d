"""Boot registers, GDT and page tables, checked against a fake vCPU and real GuestMemory."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparkler.arch.x86_64 import layout, regs
from sparkler.kvm import uapi
from sparkler.memory import GuestMemory


class FakeVcpu:
    def __init__(self) -> None:
        self.regs = uapi.kvm_regs()
        self.sregs = uapi.kvm_sregs()
        self.fpu = uapi.kvm_fpu()

    def set_regs(self, value: uapi.kvm_regs) -> None:
        self.regs = value

    def get_sregs(self) -> uapi.kvm_sregs:
        return uapi.kvm_sregs.from_buffer_copy(bytes(self.sregs))

    def set_sregs(self, value: uapi.kvm_sregs) -> None:
        self.sregs = value

    def set_fpu(self, value: uapi.kvm_fpu) -> None:
        self.fpu = value


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    m = GuestMemory.create([(0, 2 * layout.MIB)])
    yield m
    m.close()


def _fields(seg: uapi.kvm_segment) -> dict[str, int]:
    return {name: getattr(seg, name) for name, *_ in uapi.kvm_segment._fields_ if name != "padding"}


def _encode(seg: uapi.kvm_segment) -> int:
    """The descriptor a segment came from (the inverse of segment_from_gdt)."""
    flags = (seg.type | seg.s << 4 | seg.dpl << 5 | seg.present << 7
             | seg.avl << 12 | seg.l << 13 | seg.db << 14 | seg.g << 15)
    limit = seg.limit >> 12 if seg.g else seg.limit
    return regs.gdt_entry(flags, seg.base, limit)


def test_gdt_entry_boot_flags_firecracker_values() -> None:
    # Firecracker's gdt_entry(0xa09b / 0xc093 / 0x808b, 0, 0xfffff)
    assert regs.BOOT_GDT == (0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x008F8B000000FFFF)
    assert regs.gdt_entry(0xA09B, 0x12345678, 0xABCDE) == 0x12AA9B345678BCDE


def test_segment_from_gdt_boot_code_64bit_l1_db0_flat() -> None:
    assert _fields(regs.segment_from_gdt(regs.BOOT_GDT[1], 1)) == {
        "base": 0, "limit": 0xFFFF_FFFF, "selector": 0x8, "type": 0xB, "present": 1, "dpl": 0,
        "db": 0, "s": 1, "l": 1, "g": 1, "avl": 0, "unusable": 0,
    }


def test_segment_from_gdt_boot_data_db1_flat_4gib() -> None:
    assert _fields(regs.segment_from_gdt(regs.BOOT_GDT[2], 2)) == {
        "base": 0, "limit": 0xFFFF_FFFF, "selector": 0x10, "type": 0x3, "present": 1, "dpl": 0,
        "db": 1, "s": 1, "l": 0, "g": 1, "avl": 0, "unusable": 0,
    }


def test_segment_from_gdt_boot_tss_busy_system_segment() -> None:
    tss = regs.segment_from_gdt(regs.BOOT_GDT[3], 3)
    assert (tss.selector, tss.type, tss.s, tss.l, tss.db, tss.present, tss.unusable) == (0x18, 0xB, 0, 0, 0, 1, 0)


def test_segment_from_gdt_null_entry_unusable() -> None:
    seg = regs.segment_from_gdt(regs.BOOT_GDT[0], 0)
    assert (seg.present, seg.unusable, seg.selector) == (0, 1, 0)


@pytest.mark.parametrize("index", [1, 2, 3])
def test_gdt_entry_segment_from_gdt_boot_entries_round_trip(index: int) -> None:
    assert _encode(regs.segment_from_gdt(regs.BOOT_GDT[index], index)) == regs.BOOT_GDT[index]


@given(
    access=st.integers(0, 0xFF),
    flag_nibble=st.integers(0, 0xF),
    base=st.integers(0, 0xFFFF_FFFF),
    limit=st.integers(0, 0xF_FFFF),
    index=st.integers(0, 8191),
)
def test_gdt_entry_segment_from_gdt_any_descriptor_round_trip(
    access: int, flag_nibble: int, base: int, limit: int, index: int
) -> None:
    flags = access | flag_nibble << 12
    entry = regs.gdt_entry(flags, base, limit)
    seg = regs.segment_from_gdt(entry, index)
    assert seg.base == base and seg.selector == index * 8
    assert seg.limit == ((limit << 12) | 0xFFF if flag_nibble & 0x8 else limit)
    assert _encode(seg) == entry


def test_setup_regs_linux_64bit_protocol_values() -> None:
    vcpu = FakeVcpu()
    regs.setup_regs(vcpu, 0x1000000)
    r = vcpu.regs
    assert (r.rflags, r.rip, r.rsp, r.rbp, r.rsi) == (0x2, 0x1000000, 0x8FF0, 0x8FF0, 0x7000)
    assert (r.rax, r.rbx, r.rcx, r.rdx, r.rdi) == (0, 0, 0, 0, 0)


def test_setup_sregs_long_mode_control_registers_and_tables(memory: GuestMemory) -> None:
    vcpu = FakeVcpu()
    vcpu.sregs.cr0 = 0x10  # ET, as KVM resets it: must be kept
    vcpu.sregs.apic_base = 0xFEE0_0900
    regs.setup_sregs(memory, vcpu)
    s = vcpu.sregs
    assert s.cr0 == 0x8000_0011 and s.cr3 == layout.PML4_START and s.cr4 & regs.X86_CR4_PAE
    assert s.efer & (regs.EFER_LME | regs.EFER_LMA) == regs.EFER_LME | regs.EFER_LMA
    assert s.apic_base == 0xFEE0_0900
    assert (s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit) == (0x500, 31, 0x520, 7)
    assert bytes(s.cs) == bytes(regs.segment_from_gdt(regs.BOOT_GDT[1], 1))
    for seg in (s.ds, s.es, s.fs, s.gs, s.ss):
        assert bytes(seg) == bytes(regs.segment_from_gdt(regs.BOOT_GDT[2], 2))
    assert bytes(s.tr) == bytes(regs.segment_from_gdt(regs.BOOT_GDT[3], 3))
    assert struct.unpack_from("<4Q", memory.read(0x500, 32)) == regs.BOOT_GDT
    assert memory.read_u64(0x520) == 0


def test_write_boot_tables_identity_map_pml4_pdpt_512_2mib_pages(memory: GuestMemory) -> None:
    memory.fill(0, 0x10000, 0xAA)  # garbage in every table slot not written
    regs.write_boot_tables(memory)
    assert memory.read_u64(layout.PML4_START) == layout.PDPTE_START | 0x3  # present, writable
    assert memory.read_u64(layout.PDPTE_START) == layout.PDE_START | 0x3
    pd = struct.unpack_from("<512Q", memory.read(layout.PDE_START, 4096))
    assert pd == tuple((i << 21) | 0x83 for i in range(512))  # present, writable, PS (2 MiB)
    # the map covers exactly [0, 1 GiB): the last page starts at 1 GiB - 2 MiB
    assert pd[-1] & ~0xFFF == layout.GIB - 2 * layout.MIB


def _walk(memory: GuestMemory, cr3: int, va: int) -> int:
    """Translate ``va`` through the 4-level tables at ``cr3`` (2 MiB leaf pages)."""
    pml4e = memory.read_u64(cr3 + ((va >> 39) & 0x1FF) * 8)
    assert pml4e & 1, f"PML4E for {va:#x} not present"
    pdpte = memory.read_u64((pml4e & ~0xFFF) + ((va >> 30) & 0x1FF) * 8)
    assert pdpte & 1, f"PDPTE for {va:#x} not present"
    pde = memory.read_u64((pdpte & ~0xFFF) + ((va >> 21) & 0x1FF) * 8)
    assert pde & 1 and pde & 0x80, f"PDE for {va:#x} not a present 2 MiB page"
    return (pde & ~0x1F_FFFF & (1 << 52) - 1) | (va & 0x1F_FFFF)


@pytest.mark.parametrize("va", [0, 0x7000, layout.HIMEM_START, 0x1000000 + 0x1234, 0x3000_0000, layout.GIB - 1])
def test_write_boot_tables_walk_below_1gib_identity(memory: GuestMemory, va: int) -> None:
    regs.write_boot_tables(memory)
    assert _walk(memory, layout.PML4_START, va) == va


def test_setup_fpu_fcw_and_mxcsr_defaults() -> None:
    vcpu = FakeVcpu()
    regs.setup_fpu(vcpu)
    assert (vcpu.fpu.fcw, vcpu.fpu.mxcsr) == (0x37F, 0x1F80)
