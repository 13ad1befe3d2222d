"""Small guest memories for tests: real anonymous mappings, laid out like a tiny guest."""

from __future__ import annotations

from sparkler.memory import GuestMemory

PAGE = 4096


def guest_memory(size: int = 1 << 20, *, gap_at: int | None = None, gap: int = 4 * PAGE) -> GuestMemory:
    """``size`` bytes of RAM at guest address 0; with ``gap_at``, split there by a hole of ``gap``.

    The hole mimics the 32-bit MMIO gap: no access may straddle it, and addresses inside it are
    outside guest RAM.
    """
    if gap_at is None:
        return GuestMemory.create([(0, size)])
    return GuestMemory.create([(0, gap_at), (gap_at + gap, size - gap_at)])
