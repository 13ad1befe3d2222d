"""Boot-timer pseudo-device and Firecracker's Guest-boot-time line."""

from __future__ import annotations

from sparkler.arch.x86_64 import layout
from sparkler.devices.pseudo.boot_timer import BOOT_TIMER_MAGIC, BootTimer, format_boot_time


def test_boot_timer_magic_matches_layout() -> None:
    assert BOOT_TIMER_MAGIC == layout.BOOT_TIMER_MAGIC == 123


def test_boot_timer_magic_write_calls_on_boot() -> None:
    calls: list[int] = []
    dev = BootTimer(lambda: calls.append(1))
    dev.write(0, bytes([123]))
    assert calls == [1] and dev.fired == 1


def test_boot_timer_other_writes_ignored() -> None:
    calls: list[int] = []
    dev = BootTimer(lambda: calls.append(1))
    dev.write(0, bytes([122]))
    dev.write(1, bytes([123]))
    dev.write(0, bytes([123, 0]))
    dev.write(0, (123).to_bytes(4, "little"))
    assert calls == []


def test_boot_timer_read_returns_zeros() -> None:
    dev = BootTimer(lambda: None)
    buf = bytearray(b"\xff" * 4)
    dev.read(0, memoryview(buf))
    assert buf == bytes(4)


def test_format_boot_time_firecracker_line() -> None:
    assert format_boot_time(123456, 7890) == "Guest-boot-time = 123456 us 123 ms,   7890 CPU us 7 CPU ms"


def test_format_boot_time_small_values_right_aligned_to_six() -> None:
    assert format_boot_time(999, 42) == "Guest-boot-time =    999 us 0 ms,     42 CPU us 0 CPU ms"


def test_format_boot_time_wide_values_not_truncated() -> None:
    assert format_boot_time(12345678, 5) == "Guest-boot-time = 12345678 us 12345 ms,      5 CPU us 0 CPU ms"
