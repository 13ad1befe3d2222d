"""Kernel and initrd loaders for the Linux x86_64 64-bit boot protocol.

Two kernel formats, told apart by their magic:

* ELF ``vmlinux`` (ELF64, x86_64, ET_EXEC): every PT_LOAD segment is copied to its *physical*
  address (``p_paddr``), which must lie at or above 1 MiB and inside guest RAM; the part of
  ``p_memsz`` past ``p_filesz`` is zeroed; the entry point is ``e_entry``.
* ``bzImage``: "HdrS" at 0x202 and the 0xAA55 boot flag at 0x1FE. Boot protocol 2.12 or later with
  ``XLF_KERNEL_64`` is required; the protected-mode kernel after the ``(setup_sects + 1) * 512``
  bytes of real-mode setup is copied to 1 MiB and entered at its 64-bit entry, 1 MiB + 0x200. The
  image's setup header seeds boot_params.

Files are mapped, not read, and copied straight into guest memory. Every field read from the image
is checked against the file size and guest RAM first: a malformed image is a LoaderError naming
the file and the problem, never another exception.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from dataclasses import dataclass

from sparkler.arch.x86_64 import layout
from sparkler.arch.x86_64.uapi_boot import (
    BOOT_FLAG_MAGIC,
    HDRS_MAGIC,
    SETUP_HEADER_OFFSET,
    XLF_KERNEL_64,
    setup_header,
)
from sparkler.errors import GuestFault, LoaderError
from sparkler.memory import GuestMemory

# ELF constants (elf.h)
ELFMAG = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
ET_EXEC = 2
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr
_PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr
_NHDR = struct.Struct("<III")  # Elf64_Nhdr

BZIMAGE_MIN_VERSION = 0x020C  # 64-bit entry point (xloadflags) appeared in protocol 2.12
BZIMAGE_64BIT_ENTRY_OFFSET = 0x200
SECTOR = 512
INITRD_ALIGN = 4096


@dataclass(frozen=True)
class LoadResult:
    entry: int
    kernel_start: int
    kernel_end: int  # exclusive
    setup_header: setup_header | None = None  # bzImage only
    pvh_entry: int | None = None  # ELF with a PVH note


class _Image:
    """A read-only mapping of a kernel or initrd file; empty files get an empty buffer."""

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        try:
            # O_NONBLOCK: a FIFO (or a device) given as a kernel must not hang the VMM in open();
            # it is rejected below as not a regular file. It changes nothing for regular files.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise LoaderError(f"The {what} file {path} does not exist.") from None
        except PermissionError:
            raise LoaderError(f"The {what} file {path} cannot be read: permission denied.") from None
        except OSError as e:
            raise LoaderError(f"The {what} file {path} cannot be opened: {e.strerror}.") from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise LoaderError(f"The {what} file {path} is a directory.")
            if not stat.S_ISREG(st.st_mode):
                raise LoaderError(f"The {what} file {path} is not a regular file.")
            self.size = st.st_size
            self._map = mmap.mmap(fd, self.size, prot=mmap.PROT_READ) if self.size else None
        except OSError as e:
            raise LoaderError(f"The {what} file {path} cannot be read: {e.strerror}.") from None
        finally:
            os.close(fd)
        self.data = memoryview(self._map) if self._map is not None else memoryview(b"")

    def fail(self, problem: str) -> LoaderError:
        return LoaderError(f"Invalid kernel image {self.path}: {problem}.")

    def unpack(self, fmt: struct.Struct, offset: int, what: str) -> tuple[int, ...]:
        if offset < 0 or offset + fmt.size > self.size:
            raise self.fail(f"truncated {what} at offset {offset:#x}")
        return fmt.unpack_from(self.data, offset)

    def close(self) -> None:
        self.data.release()
        if self._map is not None:
            self._map.close()

    def __enter__(self) -> _Image:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def load_kernel(memory: GuestMemory, path: str) -> LoadResult:
    """Load the kernel at ``path`` into guest memory; LoaderError if it is not a usable kernel."""
    with _Image(path, "kernel") as image:
        if image.size == 0:
            raise image.fail("the file is empty")
        if bytes(image.data[:4]) == ELFMAG:
            return _load_elf(memory, image)
        if _is_bzimage(image):
            return _load_bzimage(memory, image)
        raise image.fail("the file is neither an ELF vmlinux nor a bzImage")


def _copy_in(memory: GuestMemory, image: _Image, gpa: int, offset: int, filesz: int, memsz: int) -> None:
    end = gpa + memsz
    if gpa < layout.HIMEM_START:
        raise image.fail(f"segment at {gpa:#x} lies below 1 MiB, where the boot structures live")
    if end > layout.MMIO32_START and gpa < layout.RAM_64BIT_START:
        raise image.fail(f"segment {gpa:#x}-{end:#x} overlaps the MMIO gap at 3 GiB")
    if not memory.contains(gpa, memsz):
        raise LoaderError(
            f"Invalid kernel image {image.path}: segment {gpa:#x}-{end:#x} does not fit in guest memory "
            f"({memory.total_size >> 20} MiB); increase mem_size_mib."
        )
    try:
        memory.write(gpa, image.data[offset : offset + filesz])
        if memsz > filesz:  # bss / the bzImage init_size area: zero pages are dropped, not written
            memory.zero(gpa + filesz, memsz - filesz)
    except GuestFault as e:  # pragma: no cover - contains() was checked above
        raise image.fail(str(e)) from None


def _load_elf(memory: GuestMemory, image: _Image) -> LoadResult:
    (ident, e_type, e_machine, _version, e_entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize, e_phnum,
     *_rest) = image.unpack(_EHDR, 0, "ELF header")
    if ident[4] != ELFCLASS64:
        raise image.fail("not a 64-bit ELF (ELFCLASS64 required)")
    if ident[5] != ELFDATA2LSB:
        raise image.fail("not a little-endian ELF")
    if e_machine != EM_X86_64:
        raise image.fail(f"ELF machine {e_machine} is not x86_64")
    if e_type != ET_EXEC:
        raise image.fail("ELF type is not EXEC")
    if e_phnum == 0:
        raise image.fail("the ELF has no program headers")
    if e_phentsize != _PHDR.size:
        raise image.fail(f"program header size {e_phentsize} is not {_PHDR.size}")
    if e_phoff + e_phnum * e_phentsize > image.size:
        raise image.fail("program headers extend past the end of the file")

    start, end = None, 0
    pvh_entry = None
    entry_in_segment = False
    for i in range(e_phnum):
        p_type, _pflags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _align = image.unpack(
            _PHDR, e_phoff + i * e_phentsize, "program header"
        )
        if p_type == PT_NOTE:
            pvh_entry = _find_pvh_note(image, p_offset, p_filesz) or pvh_entry
            continue
        if p_type != PT_LOAD:
            continue
        if p_filesz > p_memsz:
            raise image.fail(f"segment {i} has p_filesz {p_filesz:#x} larger than p_memsz {p_memsz:#x}")
        if p_offset + p_filesz > image.size:
            raise image.fail(f"segment {i} extends past the end of the file")
        if p_memsz == 0:
            continue
        _copy_in(memory, image, p_paddr, p_offset, p_filesz, p_memsz)
        start = p_paddr if start is None else min(start, p_paddr)
        end = max(end, p_paddr + p_memsz)
        if p_paddr <= e_entry < p_paddr + p_memsz:
            entry_in_segment = True
    if start is None:
        raise image.fail("the ELF has no loadable segment")
    if not entry_in_segment:
        raise image.fail(f"entry point {e_entry:#x} is not inside a loaded segment")
    return LoadResult(entry=e_entry, kernel_start=start, kernel_end=end, pvh_entry=pvh_entry)


def _find_pvh_note(image: _Image, offset: int, size: int) -> int | None:
    pos, limit = offset, min(offset + size, image.size)
    while pos + _NHDR.size <= limit:
        namesz, descsz, ntype = _NHDR.unpack_from(image.data, pos)
        name_at = pos + _NHDR.size
        desc_at = name_at + ((namesz + 3) & ~3)
        nxt = desc_at + ((descsz + 3) & ~3)
        if nxt > limit:
            return None
        if ntype == XEN_ELFNOTE_PHYS32_ENTRY and bytes(image.data[name_at : name_at + namesz]).rstrip(b"\0") == b"Xen":
            if descsz == 4:
                return int(struct.unpack_from("<I", image.data, desc_at)[0])
            if descsz == 8:
                return int(struct.unpack_from("<Q", image.data, desc_at)[0])
        pos = nxt
    return None


def _is_bzimage(image: _Image) -> bool:
    if image.size < 0x206:
        return False
    boot_flag = struct.unpack_from("<H", image.data, 0x1FE)[0]
    header = struct.unpack_from("<I", image.data, 0x202)[0]
    return boot_flag == BOOT_FLAG_MAGIC and header == HDRS_MAGIC


def _load_bzimage(memory: GuestMemory, image: _Image) -> LoadResult:
    hdr_size = 0x1F1 + 123
    if image.size < hdr_size:
        raise image.fail("truncated bzImage setup header")
    hdr = setup_header.from_buffer_copy(image.data[SETUP_HEADER_OFFSET:hdr_size])
    if hdr.version < BZIMAGE_MIN_VERSION:
        raise image.fail(
            f"bzImage boot protocol {hdr.version >> 8}.{hdr.version & 0xFF:02d} is too old (2.12 or later needed)"
        )
    if not hdr.xloadflags & XLF_KERNEL_64:
        raise image.fail("bzImage has no 64-bit entry point (XLF_KERNEL_64)")
    setup_sects = hdr.setup_sects or 4
    kernel_offset = (setup_sects + 1) * SECTOR
    if kernel_offset >= image.size:
        raise image.fail("bzImage setup code covers the whole file; no protected-mode kernel follows")
    kernel_size = image.size - kernel_offset
    if hdr.syssize and hdr.syssize * 16 > kernel_size:
        raise image.fail(f"bzImage is truncated: syssize says {hdr.syssize * 16} bytes, {kernel_size} present")
    # The kernel decompresses in place and needs init_size bytes from its load address.
    memsz = max(kernel_size, hdr.init_size)
    _copy_in(memory, image, layout.HIMEM_START, kernel_offset, kernel_size, memsz)
    return LoadResult(
        entry=layout.HIMEM_START + BZIMAGE_64BIT_ENTRY_OFFSET,
        kernel_start=layout.HIMEM_START,
        kernel_end=layout.HIMEM_START + memsz,
        setup_header=hdr,
    )


def load_initrd(memory: GuestMemory, path: str, kernel_end: int) -> tuple[int, int]:
    """Copy the initrd to the top of the first RAM region; returns (guest address, size)."""
    with _Image(path, "initrd") as image:
        size = image.size
        if size == 0:  # Firecracker rejects an empty initrd too ("seek returned a size of zero")
            raise LoaderError(f"The initrd file {path} is empty.")
        top = memory.regions[0].end
        gpa = (top - size) & ~(INITRD_ALIGN - 1) if size <= top else -1
        if gpa < kernel_end:
            raise LoaderError(
                f"The initrd {path} ({size} bytes) does not fit in guest memory above the kernel "
                f"(kernel ends at {kernel_end:#x}, low memory ends at {top:#x}); increase mem_size_mib."
            )
        memory.slice(gpa, size)[:] = image.data
        return gpa, size
