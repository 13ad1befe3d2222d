"""Guest-virtual to guest-physical translation by walking the guest's own page tables.

The VMM needs this to look at guest code (the instruction at RIP) when KVM cannot; the tables
live in guest RAM and are written by the guest, so every entry is read through
:class:`~sparkler.memory.GuestMemory` (bounds-checked) and every failure is a
:class:`TranslationFault`, never an exception from deeper down.

Supported modes (chosen from CR0.PG, CR4.PAE/PSE/LA57 and EFER.LMA, as the CPU does):

* paging off: linear = physical;
* 32-bit paging: 2 levels of 4-byte entries, 4 MiB pages with CR4.PSE;
* PAE paging: a 4-entry PDPT, then 2 levels of 8-byte entries, 2 MiB pages;
* 4-level (and 5-level with CR4.LA57) long-mode paging: 1 GiB and 2 MiB pages.

Only presence and page size matter for reading: access rights (U/S, R/W, NX) are not checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparkler.memory import GuestFault, GuestMemory

CR0_PG = 1 << 31
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_LA57 = 1 << 12
EFER_LMA = 1 << 10

PTE_PRESENT = 1 << 0
PTE_PS = 1 << 7
PAGE_SIZE = 4096
#: Physical address bits 12..51 of a 64-bit entry (MAXPHYADDR is at most 52).
ADDR_MASK_64 = ((1 << 52) - 1) & ~0xFFF


class TranslationFault(Exception):
    """The address is not mapped, not canonical, or a table lies outside guest RAM."""


@dataclass(frozen=True)
class PagingContext:
    """The control registers a walk depends on (from ``KVM_GET_SREGS``)."""

    cr0: int
    cr3: int
    cr4: int
    efer: int

    @classmethod
    def from_sregs(cls, sregs: object) -> PagingContext:
        return cls(sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer)  # type: ignore[attr-defined]

    @property
    def mode(self) -> str:
        """``none``, ``32bit``, ``pae``, ``4level`` or ``5level``."""
        if not self.cr0 & CR0_PG:
            return "none"
        if self.efer & EFER_LMA:
            return "5level" if self.cr4 & CR4_LA57 else "4level"
        return "pae" if self.cr4 & CR4_PAE else "32bit"


def _entry64(memory: GuestMemory, table: int, index: int, level: str, gva: int) -> int:
    addr = table + index * 8
    try:
        entry = memory.read_u64(addr)
    except GuestFault:
        raise TranslationFault(f"{level} entry for {gva:#x} at {addr:#x} is outside guest RAM") from None
    if not entry & PTE_PRESENT:
        raise TranslationFault(f"{gva:#x} is not mapped ({level} entry {entry:#x} not present)")
    return entry


def _walk_long(memory: GuestMemory, ctx: PagingContext, gva: int, levels: int) -> int:
    bits = 12 + 9 * levels  # 48 or 57
    top = gva >> (bits - 1)
    if top not in (0, (1 << (64 - bits + 1)) - 1):
        raise TranslationFault(f"{gva:#x} is not canonical for {levels}-level paging")
    table = ctx.cr3 & ADDR_MASK_64
    names = ["PML5", "PML4", "PDPT", "PD", "PT"][5 - levels :]
    for depth, name in enumerate(names):
        shift = 12 + 9 * (levels - 1 - depth)
        entry = _entry64(memory, table, (gva >> shift) & 0x1FF, name, gva)
        if name in ("PDPT", "PD") and entry & PTE_PS:
            base = entry & ADDR_MASK_64 & ~((1 << shift) - 1)
            return base | (gva & ((1 << shift) - 1))
        table = entry & ADDR_MASK_64
    return table | (gva & 0xFFF)


def _walk_pae(memory: GuestMemory, ctx: PagingContext, gva: int) -> int:
    gva &= 0xFFFF_FFFF
    pdpt = ctx.cr3 & 0xFFFF_FFE0
    pdpte = _entry64(memory, pdpt, gva >> 30, "PDPT", gva)
    pde = _entry64(memory, pdpte & ADDR_MASK_64, (gva >> 21) & 0x1FF, "PD", gva)
    if pde & PTE_PS:
        return (pde & ADDR_MASK_64 & ~0x1F_FFFF) | (gva & 0x1F_FFFF)
    pte = _entry64(memory, pde & ADDR_MASK_64, (gva >> 12) & 0x1FF, "PT", gva)
    return (pte & ADDR_MASK_64) | (gva & 0xFFF)


def _entry32(memory: GuestMemory, table: int, index: int, level: str, gva: int) -> int:
    addr = table + index * 4
    try:
        entry = memory.read_u32(addr)
    except GuestFault:
        raise TranslationFault(f"{level} entry for {gva:#x} at {addr:#x} is outside guest RAM") from None
    if not entry & PTE_PRESENT:
        raise TranslationFault(f"{gva:#x} is not mapped ({level} entry {entry:#x} not present)")
    return entry


def _walk_32(memory: GuestMemory, ctx: PagingContext, gva: int) -> int:
    gva &= 0xFFFF_FFFF
    pde = _entry32(memory, ctx.cr3 & 0xFFFF_F000, gva >> 22, "PD", gva)
    if pde & PTE_PS and ctx.cr4 & CR4_PSE:
        # PSE-36: bits 13..20 of the entry are physical address bits 32..39.
        high = ((pde >> 13) & 0xFF) << 32
        return high | (pde & 0xFFC0_0000) | (gva & 0x3F_FFFF)
    pte = _entry32(memory, pde & 0xFFFF_F000, (gva >> 12) & 0x3FF, "PT", gva)
    return (pte & 0xFFFF_F000) | (gva & 0xFFF)


def translate(memory: GuestMemory, ctx: PagingContext, gva: int) -> int:
    """The guest-physical address of linear address ``gva``; it is checked to lie in guest RAM."""
    if gva < 0 or gva >= 1 << 64:
        raise TranslationFault(f"{gva:#x} is not a 64-bit address")
    mode = ctx.mode
    if mode == "none":
        gpa = gva & 0xFFFF_FFFF
    elif mode == "32bit":
        gpa = _walk_32(memory, ctx, gva)
    elif mode == "pae":
        gpa = _walk_pae(memory, ctx, gva)
    else:
        gpa = _walk_long(memory, ctx, gva, 5 if mode == "5level" else 4)
    if not memory.contains(gpa):
        raise TranslationFault(f"{gva:#x} maps to {gpa:#x}, outside guest RAM")
    return gpa


def read_virtual(memory: GuestMemory, ctx: PagingContext, gva: int, length: int) -> bytes:
    """``length`` bytes at linear address ``gva``, translating each page separately."""
    if not 0 <= length <= PAGE_SIZE:
        raise TranslationFault(f"read of {length} bytes refused (at most one page)")
    out = bytearray()
    wrap = (1 << 64) - 1 if ctx.mode in ("4level", "5level") else 0xFFFF_FFFF
    addr = gva
    while len(out) < length:
        chunk = min(length - len(out), PAGE_SIZE - (addr & 0xFFF))
        gpa = translate(memory, ctx, addr)
        if not memory.contains(gpa, chunk):
            raise TranslationFault(f"{addr:#x}+{chunk} maps to {gpa:#x}, outside guest RAM")
        out += memory.read(gpa, chunk)
        addr = (addr + chunk) & wrap
    return bytes(out)


__all__ = ["PagingContext", "TranslationFault", "read_virtual", "translate"]
