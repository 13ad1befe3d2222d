"""GuestMemory: bounds checks, region split around the MMIO gap, demand paging."""

import ctypes
import resource

import pytest

from sparkler.arch.x86_64 import layout
from sparkler.errors import GuestFault
from sparkler.memory import GuestMemory

MIB = 1 << 20


@pytest.fixture
def mem():
    m = GuestMemory.create([(0, 16 * MIB), (64 * MIB, 4 * MIB)])
    yield m
    m.close()


def test_memory_read_write_roundtrip_in_each_region(mem):
    mem.write(0x1000, b"hello")
    mem.write_u64(64 * MIB + 8, 0x1122334455667788)
    assert mem.read(0x1000, 5) == b"hello"
    assert mem.read_u64(64 * MIB + 8) == 0x1122334455667788
    assert mem.read_u8(64 * MIB + 8) == 0x88


@pytest.mark.parametrize(
    "gpa,length",
    [
        (16 * MIB - 2, 4),  # straddles the end of region 1
        (16 * MIB, 1),  # in the hole between regions
        (68 * MIB, 1),  # past the last region
        (-1, 1),
        (0, -1),
        (2**64, 1),
    ],
)
def test_memory_access_outside_ram_raises_guestfault(mem, gpa, length):
    with pytest.raises(GuestFault):
        mem.slice(gpa, length)
    assert not mem.contains(gpa, length)


def test_memory_slice_is_zero_copy_view(mem):
    view = mem.slice(0x2000, 4)
    view[:] = b"abcd"
    assert mem.read(0x2000, 4) == b"abcd"


def test_memory_read_obj_write_obj_roundtrip(mem):
    class Pair(ctypes.LittleEndianStructure):
        _pack_ = 1
        _fields_ = [("a", ctypes.c_uint32), ("b", ctypes.c_uint16)]

    mem.write_obj(0x3000, Pair(7, 9))
    got = mem.read_obj(0x3000, Pair)
    assert (got.a, got.b) == (7, 9)
    with pytest.raises(GuestFault):
        mem.read_obj(16 * MIB - 3, Pair)


def test_memory_overlapping_regions_rejected():
    with pytest.raises(ValueError):
        GuestMemory.create([(0, 8 * MIB), (4 * MIB, 8 * MIB)])


def test_layout_ram_regions_small_guest_is_one_region():
    assert layout.ram_regions(128 * MIB) == [(0, 128 * MIB)]


def test_layout_ram_regions_4gib_guest_splits_around_mmio_gap():
    assert layout.ram_regions(4 * layout.GIB) == [(0, 3 * layout.GIB), (4 * layout.GIB, 1 * layout.GIB)]


def test_layout_ram_regions_past_mmio64_gap():
    regions = layout.ram_regions(300 * layout.GIB)
    assert regions[1] == (4 * layout.GIB, 252 * layout.GIB)
    assert regions[2] == (512 * layout.GIB, 45 * layout.GIB)
    assert sum(size for _, size in regions) == 300 * layout.GIB


def test_memory_large_guest_is_demand_paged():
    """4 GiB of guest RAM costs almost no host memory until it is touched."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    m = GuestMemory.create(layout.ram_regions(4 * layout.GIB))
    try:
        m.write_u8(0, 1)
        m.write_u8(4 * layout.GIB, 1)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
        assert after - before < 64 * 1024
        assert m.total_size == 4 * layout.GIB
    finally:
        m.close()
