"""Guest page-table walks (arch/x86_64/paging.py) over real GuestMemory with tables we write."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkler.arch.x86_64.paging import (
    CR0_PG,
    CR4_LA57,
    CR4_PAE,
    CR4_PSE,
    EFER_LMA,
    PagingContext,
    TranslationFault,
    read_virtual,
    translate,
)
from sparkler.memory import GuestMemory

MIB = 1 << 20
P, RW, PS = 1, 2, 0x80
LONG = PagingContext(cr0=CR0_PG, cr3=0x1000, cr4=CR4_PAE, efer=EFER_LMA)
KERNEL_VA = 0xFFFF_FFFF_8100_0000  # PML4 511, PDPT 510, PD 8


@pytest.fixture
def mem():
    m = GuestMemory.create([(0, 8 * MIB)])
    yield m
    m.close()


def _long_tables(mem: GuestMemory) -> None:
    """PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000 for KERNEL_VA (4K page at 0x200000),
    PD entry 9 a 2 MiB page at 0x400000, identity 1 GiB page for VA 0 (PML4 0 -> PDPT 0x5000)."""
    mem.write_u64(0x1000 + 511 * 8, 0x2000 | P | RW)
    mem.write_u64(0x2000 + 510 * 8, 0x3000 | P | RW)
    mem.write_u64(0x3000 + 8 * 8, 0x4000 | P | RW)
    mem.write_u64(0x4000 + 0 * 8, 0x20_0000 | P)
    mem.write_u64(0x3000 + 9 * 8, 0x40_0000 | P | PS)
    mem.write_u64(0x1000, 0x5000 | P)
    mem.write_u64(0x5000, 0 | P | PS)


def test_long_mode_4k_2m_and_1g_pages(mem) -> None:
    _long_tables(mem)
    assert translate(mem, LONG, KERNEL_VA + 0x123) == 0x20_0123
    assert translate(mem, LONG, KERNEL_VA + 0x20_0000 + 0x1_2345) == 0x41_2345
    assert translate(mem, LONG, 0x7F_F000) == 0x7F_F000  # inside the 1 GiB identity page


def test_not_present_entries_fault_naming_the_level(mem) -> None:
    _long_tables(mem)
    with pytest.raises(TranslationFault, match="PT entry"):
        translate(mem, LONG, KERNEL_VA + 0x1000)  # PT entry 1 empty
    with pytest.raises(TranslationFault, match="PML4 entry"):
        translate(mem, LONG, 0x0000_4000_0000_0000)


def test_tables_or_pages_outside_guest_ram_fault(mem) -> None:
    _long_tables(mem)
    mem.write_u64(0x4000 + 8, 0x10_0000_0000 | P)  # page far beyond 8 MiB of RAM
    with pytest.raises(TranslationFault, match="outside guest RAM"):
        translate(mem, LONG, KERNEL_VA + 0x1000)
    bad_cr3 = PagingContext(CR0_PG, 0x7FFF_F000, CR4_PAE, EFER_LMA)
    with pytest.raises(TranslationFault, match="outside guest RAM"):
        translate(mem, bad_cr3, KERNEL_VA)
    mem.write_u64(0x3000 + 10 * 8, 0x8000_0000_0000 | P | RW)  # PT pointer beyond RAM
    with pytest.raises(TranslationFault, match="outside guest RAM"):
        translate(mem, LONG, KERNEL_VA + 0x40_0000)


def test_non_canonical_addresses_fault(mem) -> None:
    _long_tables(mem)
    with pytest.raises(TranslationFault, match="canonical"):
        translate(mem, LONG, 0x0000_8000_0000_0000)
    with pytest.raises(TranslationFault):
        translate(mem, LONG, 1 << 64)


def test_five_level_walk(mem) -> None:
    ctx = PagingContext(CR0_PG, 0x6000, CR4_PAE | CR4_LA57, EFER_LMA)
    mem.write_u64(0x6000, 0x1000 | P)  # PML5[0] -> PML4 0x1000
    mem.write_u64(0x1000, 0x5000 | P)
    mem.write_u64(0x5000, 0 | P | PS)
    assert translate(mem, ctx, 0x12_3456) == 0x12_3456


def test_paging_off_is_identity_within_ram(mem) -> None:
    ctx = PagingContext(0, 0, 0, 0)
    assert translate(mem, ctx, 0x7000) == 0x7000
    with pytest.raises(TranslationFault):
        translate(mem, ctx, 0x9000_0000)


def test_pae_and_32bit_walks(mem) -> None:
    pae = PagingContext(CR0_PG, 0x1000, CR4_PAE, 0)
    mem.write_u64(0x1000 + 3 * 8, 0x2000 | P)  # PDPT[3]
    mem.write_u64(0x2000 + 8, 0x20_0000 | P | PS)  # PD[1]: 2 MiB page
    mem.write_u64(0x2000, 0x3000 | P)  # PD[0] -> PT
    mem.write_u64(0x3000 + 5 * 8, 0x6000 | P)
    assert translate(mem, pae, 0xC020_0010) == 0x20_0010
    assert translate(mem, pae, 0xC000_5004) == 0x6004
    two = PagingContext(CR0_PG, 0x4000, CR4_PSE, 0)
    mem.write_u32(0x4000 + 0x300 * 4, 0x40_0000 | P | PS)  # 4 MiB page for 0xC000_0000
    mem.write_u32(0x4000 + 1 * 4, 0x5000 | P)
    mem.write_u32(0x5000 + 2 * 4, 0x7000 | P)
    assert translate(mem, two, 0xC012_3456) == 0x52_3456
    assert translate(mem, two, 0x0040_2abc) == 0x7ABC
    no_pse = PagingContext(CR0_PG, 0x4000, 0, 0)  # PS ignored without CR4.PSE: the entry is a table
    mem.write_u32(0x40_0000, 0x9000 | P)
    assert translate(mem, no_pse, 0xC000_0123) == 0x9123


def test_read_virtual_crosses_pages_translating_each(mem) -> None:
    _long_tables(mem)
    mem.write_u64(0x4000 + 8, 0x60_0000 | P)  # VA page 1 -> 0x600000 (not contiguous)
    mem.write(0x20_0FFF, b"\xcd")
    mem.write(0x60_0000, b"\x80")
    assert read_virtual(mem, LONG, KERNEL_VA + 0xFFF, 2) == b"\xcd\x80"
    with pytest.raises(TranslationFault):
        read_virtual(mem, LONG, KERNEL_VA + 0x1FFF, 2)  # second byte on an unmapped page
    with pytest.raises(TranslationFault):
        read_virtual(mem, LONG, KERNEL_VA, 4097)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    pages=st.dictionaries(st.integers(0, 511), st.integers(0x10, 0x7FF), min_size=1, max_size=20),
    probe=st.integers(0, 511),
    offset=st.integers(0, 0xFFF),
)
def test_property_4k_mappings_translate_exactly(pages, probe, offset) -> None:
    mem = GuestMemory.create([(0, 8 * MIB)])
    try:
        _long_tables(mem)
        mem.write_u64(0x4000, 0)  # only the generated PT entries
        for index, frame in pages.items():
            mem.write_u64(0x4000 + index * 8, (frame << 12) | P)
        va = KERNEL_VA + probe * 0x1000 + offset
        if probe in pages:
            assert translate(mem, LONG, va) == (pages[probe] << 12) + offset
        else:
            with pytest.raises(TranslationFault):
                translate(mem, LONG, va)
    finally:
        mem.close()


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(garbage=st.binary(min_size=8 * 8, max_size=8 * 8), va=st.integers(0, (1 << 64) - 1))
def test_property_garbage_tables_never_escape_guest_ram(garbage, va) -> None:
    """Whatever the guest writes into its tables, a walk either faults cleanly or lands in RAM."""
    mem = GuestMemory.create([(0, 1 * MIB)])
    try:
        for i in range(8):
            for table in (0x1000, 0x2000, 0x3000, 0x4000):
                mem.write(table + i * 8 * 64, garbage[i * 8 : i * 8 + 8])
        try:
            gpa = translate(mem, LONG, va)
        except TranslationFault:
            return
        assert mem.contains(gpa)
    finally:
        mem.close()
