"""The boot-timer pseudo-device (``--boot-timer``): the guest marks "booted" with one MMIO write.

A one-byte write of 123 at offset 0 of the 4 KiB device at 0xC0000000 calls ``on_boot``; the VMM
then logs Firecracker's ``Guest-boot-time`` line. Other writes and all reads are ignored.
"""

from __future__ import annotations

from collections.abc import Callable

BOOT_TIMER_MAGIC = 123  # == arch.x86_64.layout.BOOT_TIMER_MAGIC (devices may not import arch)


def format_boot_time(wall_us: int, cpu_us: int) -> str:
    """Firecracker's line: ``Guest-boot-time = <us:6> us <ms> ms, <cpu_us:6> CPU us <cpu_ms> CPU ms``."""
    return f"Guest-boot-time = {wall_us:>6} us {wall_us // 1000} ms, {cpu_us:>6} CPU us {cpu_us // 1000} CPU ms"


class BootTimer:
    """MMIO device; ``fired`` counts how often the guest wrote the magic byte."""

    def __init__(self, on_boot: Callable[[], None]) -> None:
        self._on_boot = on_boot
        self.fired = 0

    def read(self, offset: int, data: memoryview) -> None:
        data[:] = bytes(len(data))

    def write(self, offset: int, data: bytes) -> None:
        if offset == 0 and len(data) == 1 and data[0] == BOOT_TIMER_MAGIC:
            self.fired += 1
            self._on_boot()
