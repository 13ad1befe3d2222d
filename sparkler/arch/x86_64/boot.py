"""boot_params (the zero page), the e820 memory map and the command line, as the kernel reads them.

e820 follows Firecracker exactly: [0, 0x9fc00) RAM, the EBDA/system area [0x9fc00, 0xe0000)
reserved, the PCI MMCONFIG window reserved, then each RAM region (the first one from 1 MiB).
"""

from __future__ import annotations

from sparkler.arch.x86_64 import layout, mptable
from sparkler.arch.x86_64.loader import LoadResult
from sparkler.arch.x86_64.uapi_boot import (
    BOOT_FLAG_MAGIC,
    E820_MAX_ENTRIES_ZEROPAGE,
    E820_RAM,
    E820_RESERVED,
    HDRS_MAGIC,
    LOADER_TYPE_UNDEFINED,
    boot_params,
)
from sparkler.errors import ConfigError
from sparkler.memory import GuestMemory

ELF_KERNEL_ALIGNMENT = 0x100_0000


def e820_map(memory: GuestMemory) -> list[tuple[int, int, int]]:
    """(address, size, type) entries for ``memory``."""
    entries = [
        (0, layout.EBDA_START, E820_RAM),
        (layout.EBDA_START, layout.RSDP_ADDR - layout.EBDA_START, E820_RESERVED),
        (layout.PCI_MMCONFIG_START, layout.PCI_MMCONFIG_SIZE, E820_RESERVED),
    ]
    for i, region in enumerate(memory.regions):
        start = layout.HIMEM_START if i == 0 else region.gpa
        if region.end > start:
            entries.append((start, region.end - start, E820_RAM))
    return entries


def build_boot_params(memory: GuestMemory, kernel: LoadResult, cmdline_size: int,
                      initrd: tuple[int, int] | None) -> boot_params:
    params = boot_params()
    if kernel.setup_header is not None:
        params.hdr = kernel.setup_header
    else:
        params.hdr.kernel_alignment = ELF_KERNEL_ALIGNMENT
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED
    params.hdr.boot_flag = BOOT_FLAG_MAGIC
    params.hdr.header = HDRS_MAGIC
    params.hdr.cmd_line_ptr = layout.CMDLINE_START
    params.hdr.cmdline_size = cmdline_size
    if initrd is not None:
        params.hdr.ramdisk_image, params.hdr.ramdisk_size = initrd
    params.acpi_rsdp_addr = layout.RSDP_ADDR
    entries = e820_map(memory)
    if len(entries) > E820_MAX_ENTRIES_ZEROPAGE:
        raise ConfigError("too many e820 entries")
    params.e820_entries = len(entries)
    for i, (addr, size, kind) in enumerate(entries):
        params.e820_table[i].addr = addr
        params.e820_table[i].size = size
        params.e820_table[i].type = kind
    return params


def configure_system(memory: GuestMemory, kernel: LoadResult, cmdline: bytes,
                     initrd: tuple[int, int] | None, num_cpus: int) -> None:
    """Write the command line, boot_params and the MP table into guest memory."""
    if len(cmdline) > layout.CMDLINE_MAX_SIZE or not cmdline.endswith(b"\0"):
        raise ConfigError("the kernel command line is too long")
    memory.write(layout.CMDLINE_START, cmdline)
    memory.write_obj(layout.ZERO_PAGE_START, build_boot_params(memory, kernel, len(cmdline), initrd))
    mptable.setup_mptable(memory, num_cpus)
