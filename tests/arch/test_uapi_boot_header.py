"""sparkler.arch.x86_64.uapi_boot against <asm/bootparam.h> (rule R2), and the boot protocol's offsets.

The header test is generated from uapi_boot.py's own ``_fields_``; the documented-offsets test runs
always (it is the fallback when the header is not installed, and a second opinion when it is).
"""

from __future__ import annotations

import ctypes
import os

import pytest

from sparkler.arch.x86_64 import uapi_boot
from sparkler.arch.x86_64.uapi_boot import boot_params, setup_header
from tests.kvm.cheader import (
    c_program,
    compile_and_run,
    constant_checks,
    is_mirrored_struct,
    mismatches,
    struct_checks,
)

BOOTPARAM_HEADERS = ("/usr/include/x86_64-linux-gnu/asm/bootparam.h", "/usr/include/asm/bootparam.h")
# Names uapi_boot.py shares with the kernel (the rest are Sparkler's own: magic values, offsets).
KERNEL_CONSTANTS = ("E820_MAX_ENTRIES_ZEROPAGE", "XLF_KERNEL_64", "LOADED_HIGH")

# Documentation/arch/x86/boot.rst and zero-page.rst: offset in the zero page.
DOCUMENTED_OFFSETS = {
    "hdr": 0x1F1,
    "hdr.setup_sects": 0x1F1,
    "hdr.boot_flag": 0x1FE,
    "hdr.header": 0x202,
    "hdr.version": 0x206,
    "hdr.type_of_loader": 0x210,
    "hdr.loadflags": 0x211,
    "hdr.code32_start": 0x214,
    "hdr.ramdisk_image": 0x218,
    "hdr.ramdisk_size": 0x21C,
    "hdr.heap_end_ptr": 0x224,
    "hdr.cmd_line_ptr": 0x228,
    "hdr.initrd_addr_max": 0x22C,
    "hdr.kernel_alignment": 0x230,
    "hdr.relocatable_kernel": 0x234,
    "hdr.xloadflags": 0x236,
    "hdr.cmdline_size": 0x238,
    "hdr.setup_data": 0x250,
    "hdr.pref_address": 0x258,
    "hdr.init_size": 0x260,
    "hdr.handover_offset": 0x264,
    "hdr.kernel_info_offset": 0x268,
    "acpi_rsdp_addr": 0x70,
    "ext_ramdisk_image": 0xC0,
    "ext_ramdisk_size": 0xC4,
    "ext_cmd_line_ptr": 0xC8,
    "e820_entries": 0x1E8,
    "sentinel": 0x1EF,
    "e820_table": 0x2D0,
}


def _offset(path: str) -> int:
    struct: type = boot_params
    offset = 0
    for name in path.split("."):
        desc = getattr(struct, name)
        offset += desc.offset
        struct = dict((f[0], f[1]) for f in struct._fields_)[name]
    return offset


def _bootparam_header() -> str | None:
    return next((h for h in BOOTPARAM_HEADERS if os.path.exists(h)), None)


@pytest.mark.parametrize(("path", "expected"), sorted(DOCUMENTED_OFFSETS.items()))
def test_boot_params_field_documented_offset_matches(path: str, expected: int) -> None:
    assert _offset(path) == expected, f"{path} at {_offset(path):#x}, boot.rst says {expected:#x}"


def test_boot_params_sizes_zero_page_4096_e820_entry_20() -> None:
    assert ctypes.sizeof(boot_params) == 4096
    assert ctypes.sizeof(uapi_boot.boot_e820_entry) == 20
    assert boot_params.e820_table.size == 20 * uapi_boot.E820_MAX_ENTRIES_ZEROPAGE
    # the setup header ends where _pad7 starts, and the kernel copies up to 0x202 + byte at 0x201
    assert boot_params.hdr.offset == uapi_boot.SETUP_HEADER_OFFSET
    assert boot_params.hdr.offset + ctypes.sizeof(setup_header) == boot_params._pad7.offset


def test_boot_params_ctypes_writes_land_at_documented_bytes() -> None:
    bp = boot_params()
    bp.hdr.boot_flag = uapi_boot.BOOT_FLAG_MAGIC
    bp.hdr.header = uapi_boot.HDRS_MAGIC
    bp.hdr.cmd_line_ptr = 0x20000
    bp.e820_entries = 2
    bp.e820_table[1].addr = 0x100000
    raw = bytes(bp)
    assert raw[0x1FE:0x200] == b"\x55\xaa"
    assert raw[0x202:0x206] == b"HdrS"
    assert raw[0x228:0x22C] == (0x20000).to_bytes(4, "little")
    assert raw[0x1E8] == 2
    assert raw[0x2D0 + 20 : 0x2D0 + 28] == (0x100000).to_bytes(8, "little")


def test_uapi_boot_against_bootparam_header_sizes_offsets_constants_match(tmp_path) -> None:
    header = _bootparam_header()
    if header is None:
        pytest.skip("host limitation: asm/bootparam.h not installed (linux-libc-dev); documented offsets checked")
    structs = [v for v in vars(uapi_boot).values() if is_mirrored_struct(v)]
    assert {s.__name__ for s in structs} >= {"setup_header", "boot_e820_entry", "boot_params"}
    checks = []
    for s in structs:
        checks += struct_checks(s)
    consts = constant_checks({name: getattr(uapi_boot, name) for name in KERNEL_CONSTANTS})
    checks += consts
    values = compile_and_run(c_program(["asm/bootparam.h"], checks), tmp_path)
    assert len(values) == len(checks) > 150
    assert mismatches(checks, values) == []
