"""Synthetic kernel images for loader tests: small, valid ELF64 ``vmlinux`` and ``bzImage`` files.

``make_elf`` lays out an ELF64 little-endian x86_64 ET_EXEC file: the ELF header, the program
headers right after it (one PT_LOAD per segment, optionally a PT_NOTE carrying the Xen
``XEN_ELFNOTE_PHYS32_ENTRY`` PVH note), then each segment's file bytes. ``make_bzimage`` builds a
boot-protocol image: ``setup_sects`` sectors of real-mode setup plus the boot sector, with the
setup header at 0x1F1 ("HdrS" at 0x202, 0xAA55 at 0x1FE), followed by the protected-mode payload.

Both return ``bytes``; the offset helpers (``ELF_*``/``PHDR_*``/``SETUP_*``) let tests mutate single
header fields.
"""

from __future__ import annotations

import struct

__all__ = [
    "EHDR",
    "ELF_HEADER_FIELDS",
    "NHDR",
    "PHDR",
    "PHDR_FIELDS",
    "SETUP_HEADER_FIELDS",
    "elf_note",
    "make_bzimage",
    "make_elf",
    "pvh_note",
]

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr, 64 bytes
PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr, 56 bytes
NHDR = struct.Struct("<III")  # Elf64_Nhdr

ET_EXEC = 2
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
PF_RWX = 7
XEN_ELFNOTE_PHYS32_ENTRY = 18

#: (name, offset in the ELF header, struct format) for every Elf64_Ehdr field after e_ident,
#: plus the e_ident bytes that matter (class, data, version).
ELF_HEADER_FIELDS: tuple[tuple[str, int, str], ...] = (
    ("ei_class", 4, "<B"),
    ("ei_data", 5, "<B"),
    ("ei_version", 6, "<B"),
    ("e_type", 16, "<H"),
    ("e_machine", 18, "<H"),
    ("e_version", 20, "<I"),
    ("e_entry", 24, "<Q"),
    ("e_phoff", 32, "<Q"),
    ("e_shoff", 40, "<Q"),
    ("e_flags", 48, "<I"),
    ("e_ehsize", 52, "<H"),
    ("e_phentsize", 54, "<H"),
    ("e_phnum", 56, "<H"),
    ("e_shentsize", 58, "<H"),
    ("e_shnum", 60, "<H"),
    ("e_shstrndx", 62, "<H"),
)

#: (name, offset inside one Elf64_Phdr, struct format).
PHDR_FIELDS: tuple[tuple[str, int, str], ...] = (
    ("p_type", 0, "<I"),
    ("p_flags", 4, "<I"),
    ("p_offset", 8, "<Q"),
    ("p_vaddr", 16, "<Q"),
    ("p_paddr", 24, "<Q"),
    ("p_filesz", 32, "<Q"),
    ("p_memsz", 40, "<Q"),
    ("p_align", 48, "<Q"),
)

#: (name, offset in the file, struct format) of the setup-header fields the loader reads or keeps.
SETUP_HEADER_FIELDS: tuple[tuple[str, int, str], ...] = (
    ("setup_sects", 0x1F1, "<B"),
    ("syssize", 0x1F4, "<I"),
    ("boot_flag", 0x1FE, "<H"),
    ("header", 0x202, "<I"),
    ("version", 0x206, "<H"),
    ("loadflags", 0x211, "<B"),
    ("code32_start", 0x214, "<I"),
    ("kernel_alignment", 0x230, "<I"),
    ("relocatable_kernel", 0x234, "<B"),
    ("xloadflags", 0x236, "<H"),
    ("cmdline_size", 0x238, "<I"),
    ("pref_address", 0x258, "<Q"),
    ("init_size", 0x260, "<I"),
)


def elf_note(name: bytes, note_type: int, desc: bytes) -> bytes:
    """One ELF note (``name`` gets its NUL here); name and descriptor padded to 4 bytes."""
    name = name + b"\0"
    return (
        NHDR.pack(len(name), len(desc), note_type)
        + name + bytes(-len(name) % 4)
        + desc + bytes(-len(desc) % 4)
    )


def pvh_note(entry: int, size: int = 4) -> bytes:
    """A Xen ``XEN_ELFNOTE_PHYS32_ENTRY`` note whose ``size``-byte (4 or 8) descriptor is ``entry``."""
    return elf_note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY, entry.to_bytes(size, "little"))


def make_elf(
    segments: list[tuple[int, bytes, int]],
    entry: int,
    *,
    pvh_entry: int | None = None,
    notes: bytes = b"",
    e_type: int = ET_EXEC,
    machine: int = EM_X86_64,
) -> bytes:
    """An ELF64 x86_64 executable with one PT_LOAD per ``(paddr, data, memsz)`` segment.

    ``memsz`` past ``len(data)`` is bss. ``pvh_entry`` adds a PT_NOTE with the PVH entry note, after
    any raw ``notes`` (see :func:`elf_note`). Segment data is 16-byte aligned in the file;
    ``p_vaddr`` equals ``p_paddr``.
    """
    if pvh_entry is not None:
        notes += pvh_note(pvh_entry)
    phnum = len(segments) + (1 if notes else 0)
    offset = EHDR.size + phnum * PHDR.size
    phdrs = bytearray()
    body = bytearray()

    def place(data: bytes) -> int:
        nonlocal offset
        pad = (-offset) % 16
        body.extend(bytes(pad))
        offset += pad
        at = offset
        body.extend(data)
        offset += len(data)
        return at

    for paddr, data, memsz in segments:
        at = place(data)
        phdrs += PHDR.pack(PT_LOAD, PF_RWX, at, paddr, paddr, len(data), memsz, 0x1000)
    if notes:
        at = place(notes)
        phdrs += PHDR.pack(PT_NOTE, 4, at, 0, 0, len(notes), len(notes), 4)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = EHDR.pack(ident, e_type, machine, 1, entry, EHDR.size, 0, 0, EHDR.size, PHDR.size, phnum, 64, 0, 0)
    return ehdr + bytes(phdrs) + bytes(body)


def make_bzimage(
    payload: bytes,
    version: int = 0x20F,
    xloadflags: int = 1,
    setup_sects: int = 4,
    init_size: int | None = None,
    *,
    syssize: int | None = None,
) -> bytes:
    """A bzImage: ``(setup_sects + 1) * 512`` bytes of setup (header at 0x1F1), then ``payload``.

    ``syssize`` defaults to the payload size in 16-byte paragraphs, the payload then being padded
    with zeros to that size as the kernel's build tool does; ``init_size`` defaults to the payload size rounded up to 4 KiB.
    """
    setup_len = (setup_sects or 4) + 1
    image = bytearray(setup_len * 512)
    if syssize is None:  # the kernel's build tool pads the payload to whole paragraphs
        payload = payload + bytes(-len(payload) % 16)
        syssize = len(payload) // 16
    if init_size is None:
        init_size = (len(payload) + 0xFFF) & ~0xFFF

    def put(name: str, value: int) -> None:
        for field, off, fmt in SETUP_HEADER_FIELDS:
            if field == name:
                struct.pack_into(fmt, image, off, value)
                return
        raise KeyError(name)  # pragma: no cover - programming error

    put("setup_sects", setup_sects)
    put("syssize", syssize)
    put("boot_flag", 0xAA55)
    struct.pack_into("<H", image, 0x200, 0x66EB)  # jump over the header, as real images do
    put("header", 0x53726448)
    put("version", version)
    put("loadflags", 0x01)  # LOADED_HIGH
    put("code32_start", 0x100000)
    put("kernel_alignment", 0x200000)
    put("relocatable_kernel", 1)
    put("xloadflags", xloadflags)
    put("cmdline_size", 2047)
    put("pref_address", 0x1000000)
    put("init_size", init_size)
    return bytes(image) + payload
