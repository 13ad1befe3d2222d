"""Intel MultiProcessor Specification 1.4 table: how the guest finds its CPUs and its IOAPIC.

Layout written at layout.SYSTEM_MEM_START: the 16-byte floating pointer ("_MP_"), then the
configuration table header ("PCMP", 44 bytes) followed by its entries: one processor entry per
vCPU (APIC id = index, BSP flag on vCPU 0), one ISA bus, one IOAPIC (id = vCPUs + 1), an I/O
interrupt entry for each IOAPIC pin (ISA IRQ n -> pin n) and the two local interrupt entries
(LINT0 ExtINT, LINT1 NMI). Both structures carry checksums that make their bytes sum to zero.
"""

from __future__ import annotations

import struct

from sparkler.arch.x86_64 import layout
from sparkler.memory import GuestMemory

MPC_SIGNATURE = b"PCMP"
MPF_SIGNATURE = b"_MP_"
MPC_SPEC_REV = 4  # 1.4
APIC_VERSION = 0x14
IOAPIC_VERSION = 0x11
CPU_ENABLED = 0x1
CPU_BOOTPROCESSOR = 0x2
CPU_STEPPING = 0x600
CPU_FEATURES = 0x201  # FPU + APIC
MP_PROCESSOR, MP_BUS, MP_IOAPIC, MP_INTSRC, MP_LINTSRC = 0, 1, 2, 3, 4
MP_IRQ_INT, MP_IRQ_NMI, MP_IRQ_EXTINT = 0, 1, 3
BUS_ISA_ID = 0

_MPF = struct.Struct("<4sIBBB5s")  # 16 bytes
_MPC = struct.Struct("<4sHBB8s12sIHHIHBB")  # 44 bytes
_CPU = struct.Struct("<BBBBII8x")  # 20 bytes
_BUS = struct.Struct("<BB6s")  # 8 bytes
_IOAPIC = struct.Struct("<BBBBI")  # 8 bytes
_INT = struct.Struct("<BBHBBBB")  # 8 bytes


def _checksum(data: bytes | bytearray) -> int:
    return (-sum(data)) & 0xFF


def mptable_bytes(num_cpus: int, base: int = layout.SYSTEM_MEM_START) -> bytes:
    if not 1 <= num_cpus <= layout.MAX_VCPUS:
        raise ValueError(f"MP table supports 1..{layout.MAX_VCPUS} CPUs, not {num_cpus}")
    ioapic_id = num_cpus + 1
    entries = bytearray()
    for cpu in range(num_cpus):
        flags = CPU_ENABLED | (CPU_BOOTPROCESSOR if cpu == 0 else 0)
        entries += _CPU.pack(MP_PROCESSOR, cpu, APIC_VERSION, flags, CPU_STEPPING, CPU_FEATURES)
    entries += _BUS.pack(MP_BUS, BUS_ISA_ID, b"ISA   ")
    entries += _IOAPIC.pack(MP_IOAPIC, ioapic_id, IOAPIC_VERSION, 1, layout.IOAPIC_ADDR)
    for irq in range(layout.IOAPIC_PINS):
        entries += _INT.pack(MP_INTSRC, MP_IRQ_INT, 0, BUS_ISA_ID, irq, ioapic_id, irq)
    entries += _INT.pack(MP_LINTSRC, MP_IRQ_EXTINT, 0, BUS_ISA_ID, 0, 0xFF, 0)
    entries += _INT.pack(MP_LINTSRC, MP_IRQ_NMI, 0, BUS_ISA_ID, 0, 0xFF, 1)
    count = num_cpus + 1 + 1 + layout.IOAPIC_PINS + 2
    header = bytearray(
        _MPC.pack(MPC_SIGNATURE, _MPC.size + len(entries), MPC_SPEC_REV, 0, b"FC      ", b"000000000000",
                  0, 0, count, layout.APIC_ADDR, 0, 0, 0)
    )
    table = header + entries
    table[7] = _checksum(table)
    pointer = bytearray(_MPF.pack(MPF_SIGNATURE, base + _MPF.size, 1, MPC_SPEC_REV, 0, bytes(5)))
    pointer[10] = _checksum(pointer)
    return bytes(pointer + table)


def setup_mptable(memory: GuestMemory, num_cpus: int) -> None:
    data = mptable_bytes(num_cpus)
    if layout.SYSTEM_MEM_START + len(data) > layout.SYSTEM_MEM_START + layout.SYSTEM_MEM_SIZE:
        raise ValueError("MP table does not fit in the system memory area")
    memory.write(layout.SYSTEM_MEM_START, data)
