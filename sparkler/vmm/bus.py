"""Port-I/O and MMIO buses: sorted address ranges mapped to devices.

A lookup is a bisect over the range bases; the device sees the offset inside its own range. The bus
knows nothing about device types.
"""

from __future__ import annotations

import bisect
from typing import Any


class Bus:
    def __init__(self) -> None:
        self._bases: list[int] = []
        self._entries: list[tuple[int, int, Any]] = []  # (base, end, device), sorted by base

    def insert(self, device: Any, base: int, length: int) -> None:
        if length <= 0:
            raise ValueError("a bus range needs a positive length")
        end = base + length
        i = bisect.bisect_left(self._bases, base)
        if i > 0 and self._entries[i - 1][1] > base:
            raise ValueError(f"bus range {base:#x}+{length:#x} overlaps an existing device")
        if i < len(self._entries) and self._entries[i][0] < end:
            raise ValueError(f"bus range {base:#x}+{length:#x} overlaps an existing device")
        self._bases.insert(i, base)
        self._entries.insert(i, (base, end, device))

    def _find(self, addr: int, length: int) -> tuple[int, Any] | None:
        i = bisect.bisect_right(self._bases, addr) - 1
        if i < 0:
            return None
        base, end, device = self._entries[i]
        if addr + length > end:
            return None
        return addr - base, device

    def read(self, addr: int, data: memoryview) -> bool:
        found = self._find(addr, len(data))
        if found is None:
            return False
        found[1].read(found[0], data)
        return True

    def write(self, addr: int, data: bytes) -> bool:
        found = self._find(addr, len(data))
        if found is None:
            return False
        found[1].write(found[0], data)
        return True

    def devices(self) -> list[tuple[int, int, Any]]:
        return list(self._entries)


PioBus = Bus
MmioBus = Bus
