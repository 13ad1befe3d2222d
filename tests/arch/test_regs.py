"""Boot registers, GDT and page tables, checked against a fake vCPU and real GuestMemory."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

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
        return self.sregs

    def set_sregs(self, value: uapi.kvm_sregs) -> None:
        self.sregs = value

    def set_fpu(self, value: uapi.kvm_fpu) -> None:
        self.fpu = value


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    m = GuestMemory.create([(0, 2 * layout.MIB)])
    yield m
    m.close()


def test_gdt_entries_match_firecracker() -> None:
    # Values of Firecracker's gdt_entry(0xa09b/0xc093/0x808b, 0, 0xfffff).
    assert regs.BOOT_GDT == (0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x008F8B000000FFFF)


def test_segment_from_gdt_code() -> None:
    seg = regs.segment_from_gdt(regs.BOOT_GDT[1], 1)
    assert (seg.base, seg.limit, seg.selector, seg.type, seg.present, seg.dpl) == (0, 0xFFFFFFFF, 8, 0xB, 1, 0)
    assert (seg.db, seg.s, seg.l, seg.g, seg.avl, seg.unusable) == (0, 1, 1, 1, 0, 0)
    tss = regs.segment_from_gdt(regs.BOOT_GDT[3], 3)
    assert (tss.selector, tss.type, tss.s, tss.l) == (0x18, 0xB, 0, 0)


def test_setup_regs() -> None:
    vcpu = FakeVcpu()
    regs.setup_regs(vcpu, 0x1000000)
    r = vcpu.regs
    assert (r.rflags, r.rip, r.rsp, r.rbp, r.rsi) == (0x2, 0x1000000, 0x8FF0, 0x8FF0, 0x7000)


def test_setup_sregs_and_tables(memory: GuestMemory) -> None:
    vcpu = FakeVcpu()
    regs.setup_sregs(memory, vcpu)
    s = vcpu.sregs
    assert s.cr0 & 0x8000_0001 == 0x8000_0001 and s.cr3 == 0x9000 and s.cr4 & 0x20
    assert s.efer & 0x500 == 0x500
    assert (s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit) == (0x500, 31, 0x520, 7)
    assert s.cs.selector == 8 and s.ds.selector == s.ss.selector == s.es.selector == 16 and s.tr.selector == 24
    assert struct.unpack_from("<4Q", memory.read(0x500, 32)) == regs.BOOT_GDT
    assert memory.read_u64(0x520) == 0
    assert memory.read_u64(0x9000) == 0xA003 and memory.read_u64(0xA000) == 0xB003
    assert memory.read_u64(0xB000) == 0x83 and memory.read_u64(0xB000 + 511 * 8) == (511 << 21) | 0x83


def test_setup_fpu() -> None:
    vcpu = FakeVcpu()
    regs.setup_fpu(vcpu)
    assert (vcpu.fpu.fcw, vcpu.fpu.mxcsr) == (0x37F, 0x1F80)
