"""boot_params, e820 and the command line as configure_system writes them (catalog section 4.1)."""

from __future__ import annotations

import pytest

from sparkler.arch.x86_64 import boot, layout
from sparkler.arch.x86_64.boot import build_boot_params, configure_system, e820_map
from sparkler.arch.x86_64.loader import LoadResult, load_kernel
from sparkler.arch.x86_64.mptable import MPF_SIGNATURE
from sparkler.arch.x86_64.uapi_boot import E820_RAM, E820_RESERVED, boot_params
from sparkler.errors import ConfigError
from sparkler.memory import GuestMemory
from sparkler.testing.images import make_bzimage

MIB, GIB = layout.MIB, layout.GIB
ELF_KERNEL = LoadResult(entry=0x100_0000, kernel_start=0x100_0000, kernel_end=0x120_0000)


@pytest.fixture
def memory_128m():
    mem = GuestMemory.create(layout.ram_regions(128 * MIB))
    yield mem
    mem.close()


@pytest.fixture
def memory_4g():
    mem = GuestMemory.create(layout.ram_regions(4 * GIB))  # MAP_NORESERVE: untouched pages cost nothing
    yield mem
    mem.close()


def _written_params(memory: GuestMemory) -> boot_params:
    return memory.read_obj(layout.ZERO_PAGE_START, boot_params)  # type: ignore[return-value]


def _e820_from_params(params: boot_params) -> list[tuple[int, int, int]]:
    return [(e.addr, e.size, e.type) for e in params.e820_table[: params.e820_entries]]


# --- e820 -----------------------------------------------------------------------------------


def test_e820_map_128mib_matches_firecracker():
    mem = GuestMemory.create(layout.ram_regions(128 * MIB))
    try:
        entries = e820_map(mem)
    finally:
        mem.close()

    assert entries == [
        (0, 0x9FC00, E820_RAM),
        (0x9FC00, 0xE0000 - 0x9FC00, E820_RESERVED),
        (0xEEC0_0000, 256 * MIB, E820_RESERVED),
        (0x10_0000, 128 * MIB - 0x10_0000, E820_RAM),
    ]


def test_e820_map_4gib_splits_ram_around_mmio_gap(memory_4g):
    entries = e820_map(memory_4g)

    assert entries == [
        (0, 0x9FC00, E820_RAM),
        (0x9FC00, 0x40400, E820_RESERVED),
        (0xEEC0_0000, 0x1000_0000, E820_RESERVED),
        (0x10_0000, 3 * GIB - 0x10_0000, E820_RAM),
        (4 * GIB, 1 * GIB, E820_RAM),
    ]


def test_configure_system_4gib_e820_written_to_zero_page(memory_4g):
    configure_system(memory_4g, ELF_KERNEL, b"console=ttyS0\0", None, 1)

    params = _written_params(memory_4g)

    assert params.e820_entries == 5
    assert _e820_from_params(params) == e820_map(memory_4g)


def test_e820_map_ram_total_is_memory_minus_the_hole_below_1mib(memory_128m):
    ram = sum(size for _a, size, kind in e820_map(memory_128m) if kind == E820_RAM)

    assert ram == 128 * MIB - (0x10_0000 - 0x9FC00)


# --- boot_params ----------------------------------------------------------------------------


def test_configure_system_elf_boot_params_fields(memory_128m):
    cmdline = b"console=ttyS0 reboot=k panic=1\0"

    configure_system(memory_128m, ELF_KERNEL, cmdline, None, 2)

    hdr = _written_params(memory_128m).hdr
    assert hdr.type_of_loader == 0xFF
    assert hdr.boot_flag == 0xAA55
    assert hdr.header == 0x5372_6448  # "HdrS"
    assert hdr.cmd_line_ptr == 0x20000
    assert hdr.cmdline_size == len(cmdline)  # includes the NUL
    assert hdr.kernel_alignment == 0x100_0000
    assert (hdr.ramdisk_image, hdr.ramdisk_size) == (0, 0)
    assert _written_params(memory_128m).acpi_rsdp_addr == 0xE0000


def test_configure_system_elf_setup_header_otherwise_zero(memory_128m):
    configure_system(memory_128m, ELF_KERNEL, b"a\0", None, 1)

    hdr = _written_params(memory_128m).hdr
    assert (hdr.setup_sects, hdr.version, hdr.xloadflags, hdr.init_size, hdr.loadflags) == (0, 0, 0, 0, 0)


def test_configure_system_cmdline_written_at_0x20000(memory_128m):
    cmdline = b"console=ttyS0 probe.x=1\0"

    configure_system(memory_128m, ELF_KERNEL, cmdline, None, 1)

    assert memory_128m.read(layout.CMDLINE_START, len(cmdline)) == cmdline


def test_configure_system_ramdisk_fields_set(memory_128m):
    initrd = (0x7F0_0000, 0x12345)

    configure_system(memory_128m, ELF_KERNEL, b"x\0", initrd, 1)

    hdr = _written_params(memory_128m).hdr
    assert (hdr.ramdisk_image, hdr.ramdisk_size) == initrd


def test_configure_system_bzimage_header_preserved(memory_128m, tmp_path):
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage(b"\x90" * 4096, version=0x20F, setup_sects=5, init_size=0x20000))
    kernel = load_kernel(memory_128m, str(path))
    cmdline = b"console=ttyS0\0"

    configure_system(memory_128m, kernel, cmdline, None, 1)

    hdr = _written_params(memory_128m).hdr
    assert (hdr.setup_sects, hdr.version, hdr.init_size) == (5, 0x20F, 0x20000)
    assert (hdr.xloadflags, hdr.relocatable_kernel, hdr.pref_address) == (1, 1, 0x100_0000)
    assert hdr.kernel_alignment == 0x20_0000  # the image's, not the ELF default
    assert hdr.code32_start == 0x10_0000 and hdr.syssize == 4096 // 16
    assert (hdr.type_of_loader, hdr.cmd_line_ptr, hdr.cmdline_size) == (0xFF, 0x20000, len(cmdline))


def test_build_boot_params_does_not_modify_loaded_setup_header(memory_128m, tmp_path):
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage(b"\x90" * 512))
    kernel = load_kernel(memory_128m, str(path))

    build_boot_params(memory_128m, kernel, 10, (0x100000, 5))

    assert kernel.setup_header is not None
    assert (kernel.setup_header.type_of_loader, kernel.setup_header.cmd_line_ptr) == (0, 0)


def test_configure_system_writes_mp_table(memory_128m):
    configure_system(memory_128m, ELF_KERNEL, b"x\0", None, 4)

    assert memory_128m.read(layout.SYSTEM_MEM_START, 4) == MPF_SIGNATURE


def test_configure_system_cmdline_over_2048_bytes_fails(memory_128m):
    with pytest.raises(ConfigError):
        configure_system(memory_128m, ELF_KERNEL, b"a" * 2048 + b"\0", None, 1)


def test_configure_system_cmdline_of_2048_bytes_with_nul_accepted(memory_128m):
    cmdline = b"a" * 2047 + b"\0"

    configure_system(memory_128m, ELF_KERNEL, cmdline, None, 1)

    assert _written_params(memory_128m).hdr.cmdline_size == 2048


def test_configure_system_cmdline_without_nul_fails(memory_128m):
    with pytest.raises(ConfigError):
        configure_system(memory_128m, ELF_KERNEL, b"console=ttyS0", None, 1)


def test_elf_kernel_alignment_constant_is_16mib():
    assert boot.ELF_KERNEL_ALIGNMENT == 0x100_0000
