"""The MP table parsed back the way a guest reads it (Intel MP spec 1.4)."""

from __future__ import annotations

import struct

import pytest

from sparkler.arch.x86_64 import layout
from sparkler.arch.x86_64.mptable import mptable_bytes, setup_mptable
from sparkler.memory import GuestMemory

BASE = layout.SYSTEM_MEM_START
ENTRY_SIZE = {0: 20, 1: 8, 2: 8, 3: 8, 4: 8}  # processor, bus, IOAPIC, I/O interrupt, local interrupt


def _parse(memory: GuestMemory) -> dict:
    """Find the floating pointer at 0x9fc00, follow it and decode every entry."""
    fp = memory.read(BASE, 16)
    sig, phys, length, spec, checksum = struct.unpack_from("<4sIBBB", fp)
    table_addr = phys
    header = memory.read(table_addr, 44)
    csig, base_len, cspec, _ck, oem, _product, _oemptr, _oemsz, count, lapic = struct.unpack_from(
        "<4sHBB8s12sIHHI", header
    )
    table = memory.read(table_addr, base_len)
    entries = []
    pos = 44
    for _ in range(count):
        kind = table[pos]
        entries.append((kind, table[pos : pos + ENTRY_SIZE[kind]]))
        pos += ENTRY_SIZE[kind]
    return {
        "fp": fp, "fp_sig": sig, "fp_len": length, "fp_spec": spec, "fp_checksum": checksum,
        "table_addr": table_addr, "table": table, "sig": csig, "spec": cspec, "oem": oem,
        "count": count, "lapic": lapic, "entries": entries, "parsed_len": pos,
    }


@pytest.fixture(scope="module")
def memory():
    mem = GuestMemory.create(layout.ram_regions(16 * layout.MIB))
    yield mem
    mem.close()


@pytest.mark.parametrize("cpus", [1, 4, 32])
def test_mptable_signatures_and_pointer(memory, cpus):
    setup_mptable(memory, cpus)

    t = _parse(memory)

    assert t["fp_sig"] == b"_MP_" and t["sig"] == b"PCMP"
    assert t["fp_len"] == 1 and t["fp_spec"] == 4 and t["spec"] == 4
    assert t["table_addr"] == BASE + 16
    assert t["oem"].startswith(b"FC") and t["lapic"] == layout.APIC_ADDR


@pytest.mark.parametrize("cpus", [1, 4, 32])
def test_mptable_checksums_sum_to_zero(memory, cpus):
    setup_mptable(memory, cpus)

    t = _parse(memory)

    assert sum(t["fp"]) % 256 == 0
    assert sum(t["table"]) % 256 == 0


@pytest.mark.parametrize("cpus", [1, 4, 32])
def test_mptable_entry_counts(memory, cpus):
    setup_mptable(memory, cpus)

    t = _parse(memory)
    kinds = [kind for kind, _ in t["entries"]]

    assert t["count"] == cpus + 1 + 1 + 24 + 2
    assert (kinds.count(0), kinds.count(1), kinds.count(2), kinds.count(3), kinds.count(4)) == (cpus, 1, 1, 24, 2)
    assert t["parsed_len"] == len(t["table"])  # the base table length covers exactly the entries


@pytest.mark.parametrize("cpus", [1, 4, 32])
def test_mptable_processors_bsp_flag_only_on_cpu0(memory, cpus):
    setup_mptable(memory, cpus)

    cpu_entries = [raw for kind, raw in _parse(memory)["entries"] if kind == 0]

    apic_ids = [raw[1] for raw in cpu_entries]
    flags = [raw[3] for raw in cpu_entries]
    assert apic_ids == list(range(cpus))
    assert flags == [0x3] + [0x1] * (cpus - 1)  # enabled everywhere, BSP only on vCPU 0


@pytest.mark.parametrize("cpus", [1, 4, 32])
def test_mptable_ioapic_id_is_cpus_plus_one(memory, cpus):
    setup_mptable(memory, cpus)

    t = _parse(memory)
    (ioapic,) = [raw for kind, raw in t["entries"] if kind == 2]
    _type, ioapic_id, _ver, flags, addr = struct.unpack("<BBBBI", ioapic)
    intsrc = [struct.unpack("<BBHBBBB", raw) for kind, raw in t["entries"] if kind == 3]

    assert (ioapic_id, flags, addr) == (cpus + 1, 1, layout.IOAPIC_ADDR)
    assert [(src_irq, dst_id, dst_pin) for *_x, src_irq, dst_id, dst_pin in intsrc] == [
        (irq, cpus + 1, irq) for irq in range(24)
    ]


def test_mptable_local_interrupts_extint_and_nmi(memory):
    setup_mptable(memory, 2)

    lint = [struct.unpack("<BBHBBBB", raw) for kind, raw in _parse(memory)["entries"] if kind == 4]

    assert [(irqtype, dst_pin) for _t, irqtype, _f, _b, _i, _d, dst_pin in lint] == [(3, 0), (1, 1)]


def test_mptable_fits_in_system_memory_for_32_cpus():
    assert len(mptable_bytes(32)) <= layout.SYSTEM_MEM_SIZE


@pytest.mark.parametrize("cpus", [0, 33])
def test_mptable_cpu_count_out_of_range_rejected(memory, cpus):
    with pytest.raises(ValueError, match=r"1\.\.32"):
        setup_mptable(memory, cpus)
