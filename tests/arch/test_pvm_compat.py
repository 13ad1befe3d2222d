"""PVM compatibility mode logic: mode resolution, command-line words, soft-interrupt decoding,
event filling and the reflection itself against a fake vCPU fd and real GuestMemory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkler.arch.x86_64 import pvm_compat
from sparkler.arch.x86_64.paging import CR0_PG, CR4_PAE, EFER_LMA
from sparkler.arch.x86_64.pvm_compat import ReflectRefused, SoftInterrupt
from sparkler.kvm.uapi import kvm_cpuid_entry2, kvm_regs, kvm_sregs, kvm_vcpu_events
from sparkler.memory import GuestMemory

MIB = 1 << 20


@pytest.mark.parametrize(
    ("setting", "host", "active"),
    [
        ("auto", "pvm", True),
        ("auto", "hardware", False),
        ("on", "hardware", True),
        ("on", "pvm", True),
        ("off", "pvm", False),
        ("off", "hardware", False),
    ],
)
def test_resolve_mode(setting, host, active) -> None:
    assert pvm_compat.resolve_mode(setting, host) is active


def test_resolve_mode_rejects_other_values() -> None:
    with pytest.raises(ValueError, match="on, off, auto"):
        pvm_compat.resolve_mode("yes", "pvm")


def _supported() -> list[kvm_cpuid_entry2]:
    return [kvm_cpuid_entry2(function=1, index=0, ecx=0, edx=0)]


def _raw(leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    return (0, 0, 1 << 23, 0) if leaf == 1 else (0, 0, 0, 0)  # host has POPCNT (word 4 bit 23)


def test_cmdline_additions_nopv_only_with_several_vcpus() -> None:
    one = pvm_compat.cmdline_additions(_supported(), 1, _raw)
    two = pvm_compat.cmdline_additions(_supported(), 2, _raw)
    assert one == ["clearcpuid=151", "noxsave", "no-kvmclock"]
    assert two == ["clearcpuid=151", "noxsave", "nopv", "no-kvmclock"]


@pytest.mark.parametrize(
    ("insn", "expected"),
    [
        (b"\xcc", SoftInterrupt(3, 1)),
        (b"\xcc\x90", SoftInterrupt(3, 1)),
        (b"\xcd\x80", SoftInterrupt(0x80, 2)),
        (b"\xcd\x03", SoftInterrupt(3, 2)),
        (b"\xcd", None),  # truncated
        (b"\x0f\x0b", None),  # ud2
        (b"\x66\xcd\x80", None),  # prefixed: not handled
        (b"", None),
    ],
)
def test_decode(insn, expected) -> None:
    assert pvm_compat.decode(insn) == expected


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.binary(max_size=4))
def test_decode_property(insn) -> None:
    soft = pvm_compat.decode(insn)
    if soft is None:
        assert not insn.startswith(b"\xcc") and not (len(insn) >= 2 and insn[0] == 0xCD)
    else:
        assert soft.length in (1, 2) and 0 <= soft.vector <= 255


@settings(max_examples=256, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 255))
def test_fill_events_semantics_for_every_vector(vector) -> None:
    ev = kvm_vcpu_events()
    ev.flags = 0xFF
    ev.exception_has_payload = 1
    ev.exception_payload = 0xDEAD
    ev.exception.has_error_code = 1
    pvm_compat.fill_events(ev, SoftInterrupt(vector, 2))
    assert ev.flags == 0
    if vector < 32 and vector != 2:
        assert (ev.exception.injected, ev.exception.nr, ev.exception.pending) == (1, vector, 0)
        # a software interrupt never pushes an error code nor carries a payload (no CR2 for int 14)
        assert ev.exception.has_error_code == 0 and ev.exception.error_code == 0
        assert ev.exception_has_payload == 0 and ev.exception_payload == 0
        assert ev.interrupt.injected == 0
    else:
        assert (ev.interrupt.injected, ev.interrupt.nr, ev.interrupt.soft) == (1, vector, 1)
        assert ev.exception.injected == 0


class FakeVcpu:
    """get/set regs, sregs and vcpu events, as sparkler.kvm.vcpu.VcpuFd has them."""

    def __init__(self, rip: int, *, cpl: int = 0, long_mode: bool = True) -> None:
        self.regs = kvm_regs(rip=rip, rflags=2)
        self.sregs = kvm_sregs(cr0=CR0_PG | 1, cr3=0x1000, cr4=CR4_PAE, efer=EFER_LMA | 0x500 if long_mode else 0)
        self.sregs.cs.l = 1 if long_mode else 0
        self.sregs.cs.selector = 0x10 | cpl
        self.sregs.ss.dpl = cpl
        self.events = kvm_vcpu_events()
        self.set_events: kvm_vcpu_events | None = None

    def get_regs(self):
        return kvm_regs.from_buffer_copy(bytes(self.regs))

    def set_regs(self, regs) -> None:
        self.regs = regs

    def get_sregs(self):
        return kvm_sregs.from_buffer_copy(bytes(self.sregs))

    def get_vcpu_events(self):
        return kvm_vcpu_events.from_buffer_copy(bytes(self.events))

    def set_vcpu_events(self, events) -> None:
        self.set_events = events


KVA = 0xFFFF_FFFF_8100_0000


@pytest.fixture
def mem():
    m = GuestMemory.create([(0, 8 * MIB)])
    # PML4[511] -> PDPT 0x2000, PDPT[510] -> PD 0x3000, PD[8] -> PT 0x4000, PT[0] -> 0x200000, PT[1] -> 0x300000
    m.write_u64(0x1000 + 511 * 8, 0x2003)
    m.write_u64(0x2000 + 510 * 8, 0x3003)
    m.write_u64(0x3000 + 8 * 8, 0x4003)
    m.write_u64(0x4000, 0x20_0001)
    m.write_u64(0x4008, 0x30_0001)
    yield m
    m.close()


def test_reflects_int3_advancing_rip_and_injecting_bp(mem) -> None:
    mem.write(0x20_0010, b"\xcc")
    fd = FakeVcpu(KVA + 0x10)
    assert pvm_compat.reflect_soft_interrupt(fd, mem) == SoftInterrupt(3, 1)
    assert fd.regs.rip == KVA + 0x11
    ev = fd.set_events
    assert ev is not None and (ev.exception.injected, ev.exception.nr, ev.exception.has_error_code) == (1, 3, 0)


def test_reflects_int_n_across_a_page_boundary(mem) -> None:
    mem.write(0x20_0FFF, b"\xcd")
    mem.write(0x30_0000, b"\x80")
    fd = FakeVcpu(KVA + 0xFFF)
    assert pvm_compat.reflect_soft_interrupt(fd, mem) == SoftInterrupt(0x80, 2)
    assert fd.regs.rip == KVA + 0x1001
    assert fd.set_events is not None and (fd.set_events.interrupt.injected, fd.set_events.interrupt.soft) == (1, 1)


def test_refuses_other_instructions_without_touching_the_vcpu(mem) -> None:
    mem.write(0x20_0000, b"\x0f\x0b")
    fd = FakeVcpu(KVA)
    with pytest.raises(ReflectRefused, match="is 0f, not int3/int n/fwait"):
        pvm_compat.reflect_soft_interrupt(fd, mem)
    assert fd.regs.rip == KVA and fd.set_events is None


def test_refuses_unmapped_rip(mem) -> None:
    fd = FakeVcpu(KVA + 0x5000)
    with pytest.raises(ReflectRefused, match="cannot read the instruction"):
        pvm_compat.reflect_soft_interrupt(fd, mem)
    assert fd.set_events is None


def test_refuses_at_cpl3(mem) -> None:
    mem.write(0x20_0000, b"\xcc")
    fd = FakeVcpu(KVA, cpl=3)
    with pytest.raises(ReflectRefused, match="CPL 3"):
        pvm_compat.reflect_soft_interrupt(fd, mem)
    assert fd.set_events is None


def test_refuses_when_an_event_is_already_queued(mem) -> None:
    mem.write(0x20_0000, b"\xcc")
    fd = FakeVcpu(KVA)
    fd.events.exception.injected = 1
    fd.events.exception.nr = 14
    with pytest.raises(ReflectRefused, match="already queued"):
        pvm_compat.reflect_soft_interrupt(fd, mem)
    assert fd.regs.rip == KVA and fd.set_events is None


def test_protected_mode_uses_cs_base_and_wraps_eip() -> None:
    mem = GuestMemory.create([(0, 1 * MIB)])
    try:
        mem.write(0x1_0005, b"\xcc")
        fd = FakeVcpu(0x5, long_mode=False)
        fd.sregs.cr0 = 1  # protected mode, paging off
        fd.sregs.cs.base = 0x1_0000
        assert pvm_compat.reflect_soft_interrupt(fd, mem) == SoftInterrupt(3, 1)
        assert fd.regs.rip == 0x6
    finally:
        mem.close()


def test_steps_over_fwait_without_injecting(mem) -> None:
    mem.write(0x20_0020, b"\x9b\x65")  # fpu__drop: fwait, then the next instruction
    fd = FakeVcpu(KVA + 0x20)
    assert pvm_compat.reflect_soft_interrupt(fd, mem) == pvm_compat.SteppedOver("fwait", 1)
    assert fd.regs.rip == KVA + 0x21 and fd.set_events is None


def test_decode_skip_only_fwait() -> None:
    assert pvm_compat.decode_skip(b"\x9b") == pvm_compat.SteppedOver("fwait", 1)
    assert pvm_compat.decode_skip(b"\xcc") is None and pvm_compat.decode_skip(b"") is None
