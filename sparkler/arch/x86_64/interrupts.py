"""Local APIC set-up at boot: LINT0 delivers ExtINT (the 8259), LINT1 delivers NMI."""

from __future__ import annotations

import struct

APIC_LVT0 = 0x350
APIC_LVT1 = 0x360
APIC_MODE_NMI = 0x4
APIC_MODE_EXTINT = 0x7


def _set_delivery_mode(reg: int, mode: int) -> int:
    return (reg & ~0x700) | (mode << 8)


def set_lint(vcpu: object) -> None:
    lapic = vcpu.get_lapic()  # type: ignore[attr-defined]
    regs = bytearray(bytes(lapic))  # the whole struct: kvm_lapic_state is just the register page
    for offset, mode in ((APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)):
        value = struct.unpack_from("<I", regs, offset)[0]
        struct.pack_into("<I", regs, offset, _set_delivery_mode(value, mode))
    vcpu.set_lapic(type(lapic).from_buffer_copy(regs))  # type: ignore[attr-defined]
