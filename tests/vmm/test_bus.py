"""Bus: range insertion rules and dispatch with the in-device offset."""

from __future__ import annotations

import ast
import inspect

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparkler.vmm import bus as bus_module
from sparkler.vmm.bus import Bus, MmioBus, PioBus


class Recorder:
    def __init__(self, fill: int = 0xAB) -> None:
        self.fill = fill
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, bytes]] = []

    def read(self, offset: int, data: memoryview) -> None:
        self.reads.append((offset, len(data)))
        data[:] = bytes([self.fill]) * len(data)

    def write(self, offset: int, data: bytes) -> None:
        self.writes.append((offset, bytes(data)))


def test_bus_aliases_same_class() -> None:
    assert PioBus is Bus and MmioBus is Bus


def test_bus_read_dispatches_offset_inside_range() -> None:
    b = Bus()
    dev = Recorder()
    b.insert(dev, 0x3F8, 8)
    buf = bytearray(1)
    assert b.read(0x3FD, memoryview(buf))
    assert dev.reads == [(5, 1)] and buf == b"\xab"


def test_bus_write_dispatches_offset_inside_range() -> None:
    b = Bus()
    dev = Recorder()
    b.insert(dev, 0xC000_0000, 0x1000)
    assert b.write(0xC000_0000 + 0x10, b"\x01\x02\x03\x04")
    assert dev.writes == [(0x10, b"\x01\x02\x03\x04")]


def test_bus_unmapped_address_returns_false() -> None:
    b = Bus()
    dev = Recorder()
    b.insert(dev, 0x60, 5)
    buf = bytearray(b"\x11")
    assert not b.read(0x5F, memoryview(buf))
    assert not b.read(0x65, memoryview(buf))
    assert not b.write(0x1000, b"\0")
    assert buf == b"\x11" and dev.reads == [] and dev.writes == []


def test_bus_empty_bus_returns_false() -> None:
    assert not Bus().read(0, memoryview(bytearray(1)))


def test_bus_access_straddling_range_end_returns_false() -> None:
    b = Bus()
    b.insert(Recorder(), 0x60, 5)
    assert not b.read(0x63, memoryview(bytearray(4)))


def test_bus_many_devices_each_dispatched_to_its_own() -> None:
    b = Bus()
    devs = [Recorder(fill=i) for i in range(50)]
    for i, d in enumerate(devs):
        b.insert(d, 0x1000 * (49 - i), 0x800)  # inserted out of order
    for i, d in enumerate(devs):
        buf = bytearray(1)
        assert b.read(0x1000 * (49 - i) + 0x7FF, memoryview(buf))
        assert buf[0] == i and d.reads == [(0x7FF, 1)]
        assert not b.read(0x1000 * (49 - i) + 0x800, memoryview(buf))


@pytest.mark.parametrize(
    ("base", "length"),
    [(0x100, 0x10), (0xF8, 0x10), (0x108, 0x10), (0x104, 1), (0xF0, 0x100)],
)
def test_bus_overlapping_insert_raises_value_error(base: int, length: int) -> None:
    b = Bus()
    b.insert(Recorder(), 0x100, 0x10)
    with pytest.raises(ValueError):
        b.insert(Recorder(), base, length)


def test_bus_adjacent_ranges_accepted() -> None:
    b = Bus()
    b.insert(Recorder(), 0x100, 0x10)
    b.insert(Recorder(), 0x110, 0x10)
    b.insert(Recorder(), 0xF0, 0x10)
    assert [e[0] for e in b.devices()] == [0xF0, 0x100, 0x110]


@pytest.mark.parametrize("length", [0, -1])
def test_bus_non_positive_length_raises_value_error(length: int) -> None:
    with pytest.raises(ValueError):
        Bus().insert(Recorder(), 0x100, length)


def test_bus_module_imports_no_device_module() -> None:
    tree = ast.parse(inspect.getsource(bus_module))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if "devices" in n]


@given(st.lists(st.tuples(st.integers(0, 0x400), st.integers(1, 0x40)), max_size=30), st.integers(0, 0x480))
def test_bus_lookup_matches_linear_scan(ranges: list[tuple[int, int]], addr: int) -> None:
    b = Bus()
    accepted: list[tuple[int, int, Recorder]] = []
    for base, length in ranges:
        dev = Recorder()
        overlaps = any(base < e and bb < base + length for bb, e, _ in accepted)
        if overlaps:
            with pytest.raises(ValueError):
                b.insert(dev, base, length)
        else:
            b.insert(dev, base, length)
            accepted.append((base, base + length, dev))
    expected = [(d, addr - bb) for bb, e, d in accepted if bb <= addr < e]
    assert b.read(addr, memoryview(bytearray(1))) == bool(expected)
    if expected:
        dev, off = expected[0]
        assert dev.reads == [(off, 1)]
