"""Kernel and initrd loaders: where each image lands, and a LoaderError naming the file for every bad one."""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import pytest

from sparkler.arch.x86_64 import layout
from sparkler.arch.x86_64.loader import LoadResult, load_initrd, load_kernel
from sparkler.errors import LoaderError
from sparkler.memory import GuestMemory
from sparkler.testing.images import EHDR, PHDR, elf_note, make_bzimage, make_elf, pvh_note

MIB = layout.MIB
KERNEL_LOAD = 0x100_0000  # 16 MiB, where a real vmlinux puts startup_64
NOBODY = 65534


@pytest.fixture(scope="module")
def memory():
    """64 MiB of guest RAM shared by the module (each test writes where it then reads)."""
    mem = GuestMemory.create(layout.ram_regions(64 * MIB))
    yield mem
    mem.close()


def _write(tmp_path: Path, data: bytes, name: str = "kernel") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _valid_elf() -> bytes:
    return make_elf([(KERNEL_LOAD, b"\x90" * 64, 0x1000)], KERNEL_LOAD)


def _load_error(memory: GuestMemory, path: str) -> str:
    with pytest.raises(LoaderError) as info:
        load_kernel(memory, path)
    message = str(info.value)
    assert path in message, f"message does not name the file: {message}"
    return message


# --- ELF ------------------------------------------------------------------------------------


def test_load_kernel_elf_segments_land_at_paddr_with_bss_zeroed(memory, tmp_path):
    text, data = b"\xf4" * 100, b"DATA" * 8
    memory.fill(0x200_0000, 0x3000, 0xAA)  # dirty the bss area so zeroing is observable
    image = make_elf([(KERNEL_LOAD, text, len(text)), (0x200_0000, data, 0x3000)], KERNEL_LOAD)

    result = load_kernel(memory, _write(tmp_path, image))

    assert memory.read(KERNEL_LOAD, len(text)) == text
    assert memory.read(0x200_0000, len(data)) == data
    assert memory.read(0x200_0000 + len(data), 0x3000 - len(data)) == bytes(0x3000 - len(data))
    assert result == LoadResult(entry=KERNEL_LOAD, kernel_start=KERNEL_LOAD, kernel_end=0x200_3000)


def test_load_kernel_elf_entry_inside_segment_returned(memory, tmp_path):
    image = make_elf([(KERNEL_LOAD, bytes(0x400), 0x400)], KERNEL_LOAD + 0x200)

    result = load_kernel(memory, _write(tmp_path, image))

    assert result.entry == KERNEL_LOAD + 0x200
    assert result.setup_header is None and result.pvh_entry is None


def test_load_kernel_elf_pvh_note_detected(memory, tmp_path):
    image = make_elf([(KERNEL_LOAD, bytes(0x100), 0x100)], KERNEL_LOAD, pvh_entry=KERNEL_LOAD + 0x40)

    result = load_kernel(memory, _write(tmp_path, image))

    assert result.pvh_entry == KERNEL_LOAD + 0x40


def test_load_kernel_elf_pvh_note_with_8_byte_descriptor_after_other_notes_detected(memory, tmp_path):
    notes = elf_note(b"GNU", 3, b"\x01" * 20) + elf_note(b"Xen", 5, b"xen-3.0\0") + pvh_note(0x100_0040, size=8)
    image = make_elf([(KERNEL_LOAD, bytes(0x100), 0x100)], KERNEL_LOAD, notes=notes)

    result = load_kernel(memory, _write(tmp_path, image))

    assert result.pvh_entry == 0x100_0040


def test_load_kernel_elf_phys32_note_from_other_vendor_ignored(memory, tmp_path):
    notes = elf_note(b"Linux", 18, (0x100_0040).to_bytes(4, "little"))
    image = make_elf([(KERNEL_LOAD, bytes(0x100), 0x100)], KERNEL_LOAD, notes=notes)

    result = load_kernel(memory, _write(tmp_path, image))

    assert result.pvh_entry is None


def test_load_kernel_elf_truncated_note_ignored(memory, tmp_path):
    notes = pvh_note(0x100_0040)[:-2]
    image = make_elf([(KERNEL_LOAD, bytes(0x100), 0x100)], KERNEL_LOAD, notes=notes)

    result = load_kernel(memory, _write(tmp_path, image))

    assert result.pvh_entry is None and result.entry == KERNEL_LOAD


def test_load_kernel_elf_zero_memsz_segment_ignored(memory, tmp_path):
    image = make_elf([(0x10, b"", 0), (KERNEL_LOAD, b"x", 1)], KERNEL_LOAD)

    result = load_kernel(memory, _write(tmp_path, image))

    assert (result.kernel_start, result.kernel_end) == (KERNEL_LOAD, KERNEL_LOAD + 1)


# --- bzImage --------------------------------------------------------------------------------


def test_load_kernel_bzimage_protected_mode_part_at_1mib(memory, tmp_path):
    payload = bytes(range(256)) * 16
    image = make_bzimage(payload, setup_sects=4)

    result = load_kernel(memory, _write(tmp_path, image))

    assert memory.read(layout.HIMEM_START, len(payload)) == payload
    assert result.entry == 0x100200
    assert result.kernel_start == layout.HIMEM_START
    assert result.kernel_end == layout.HIMEM_START + max(len(payload), 0x1000)


def test_load_kernel_bzimage_setup_header_returned(memory, tmp_path):
    image = make_bzimage(b"\xcc" * 1024, version=0x20F, setup_sects=7, init_size=0x8000)

    hdr = load_kernel(memory, _write(tmp_path, image)).setup_header

    assert hdr is not None
    assert (hdr.setup_sects, hdr.version, hdr.header, hdr.boot_flag) == (7, 0x20F, 0x53726448, 0xAA55)
    assert (hdr.init_size, hdr.xloadflags, hdr.kernel_alignment) == (0x8000, 1, 0x200000)


def test_load_kernel_bzimage_zero_setup_sects_means_four(memory, tmp_path):
    payload = b"PAYLOAD!" * 64
    image = make_bzimage(payload, setup_sects=0)

    load_kernel(memory, _write(tmp_path, image))

    assert len(image) == 5 * 512 + len(payload)
    assert memory.read(layout.HIMEM_START, len(payload)) == payload


def test_load_kernel_bzimage_init_size_area_zeroed(memory, tmp_path):
    memory.fill(layout.HIMEM_START, 0x10000, 0x55)
    image = make_bzimage(b"K" * 512, init_size=0x10000)

    result = load_kernel(memory, _write(tmp_path, image))

    assert result.kernel_end == layout.HIMEM_START + 0x10000
    assert memory.read(layout.HIMEM_START + 512, 0x10000 - 512) == bytes(0x10000 - 512)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_load_kernel_bzimage_large_init_size_commits_no_host_memory(tmp_path):
    mem = GuestMemory.create(layout.ram_regions(512 * MIB))  # fresh: nothing resident yet
    path = _write(tmp_path, make_bzimage(b"\x90" * 4096, init_size=256 * MIB))
    try:
        before = _rss_bytes()
        result = load_kernel(mem, path)
        grown = _rss_bytes() - before
    finally:
        mem.close()

    assert result.kernel_end == layout.HIMEM_START + 256 * MIB
    assert grown < 32 * MIB, f"zeroing the init_size area made {grown >> 20} MiB resident"


def test_load_kernel_elf_bss_over_dirty_whole_pages_reads_zero(memory, tmp_path):
    memory.fill(0x300_0000, 0x10_0000, 0xEE)  # 1 MiB of dirty, resident pages
    image = make_elf([(0x300_0000 + 0x10, b"\x01" * 0x20, 0x10_0000 - 0x10)], 0x300_0010)

    load_kernel(memory, _write(tmp_path, image))

    assert memory.read(0x300_0000, 0x10) == b"\xee" * 0x10  # before the segment: untouched
    assert memory.read(0x300_0010, 0x20) == b"\x01" * 0x20
    assert memory.read(0x300_0030, 0x10_0000 - 0x30) == bytes(0x10_0000 - 0x30)


# --- file errors ----------------------------------------------------------------------------


def test_load_kernel_missing_file_fails_naming_it(memory, tmp_path):
    message = _load_error(memory, str(tmp_path / "nope"))

    assert "does not exist" in message


def test_load_kernel_directory_fails_naming_it(memory, tmp_path):
    message = _load_error(memory, str(tmp_path))

    assert "is a directory" in message


def test_load_kernel_path_through_a_file_fails_naming_it(memory, tmp_path):
    path = _write(tmp_path, b"x", "plain") + "/kernel"

    message = _load_error(memory, path)

    assert "cannot be opened" in message


def test_load_kernel_fifo_rejected_without_blocking(memory, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            load_kernel(memory, str(fifo))
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - reported to the main thread
            outcome.append(e)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():  # unblock the open() so the thread ends, then fail
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("load_kernel blocked opening a FIFO")

    assert isinstance(outcome[0], LoaderError) and "not a regular file" in str(outcome[0])


def _in_child_as_nobody(memory: GuestMemory, path: str) -> str:
    """Run load_kernel in a forked child with uid/gid nobody; return its error message."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                load_kernel(memory, path)
                msg = "LOADED"
            except LoaderError as e:
                msg = "LoaderError:" + str(e)
            except BaseException as e:  # noqa: BLE001
                msg = f"{type(e).__name__}:{e}"
            os.write(write_end, msg.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def test_load_kernel_unreadable_file_fails_naming_it(memory, tmp_path):
    path = _write(tmp_path, _valid_elf())
    os.chmod(path, 0)
    if os.geteuid() != 0:
        message = _load_error(memory, path)
    else:  # root reads anything: drop to nobody in a child, where permissions bite
        os.chmod(tmp_path, 0o755)
        out = _in_child_as_nobody(memory, path)
        assert out.startswith("LoaderError:"), out
        message = out

    assert "permission denied" in message and path in message


def test_load_kernel_empty_file_fails_naming_it(memory, tmp_path):
    message = _load_error(memory, _write(tmp_path, b""))

    assert "empty" in message


def test_load_kernel_neither_elf_nor_bzimage_fails(memory, tmp_path):
    message = _load_error(memory, _write(tmp_path, b"#!/bin/sh\necho not a kernel\n" * 40))

    assert "neither an ELF vmlinux nor a bzImage" in message


# --- malformed ELF --------------------------------------------------------------------------


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


PH0 = EHDR.size  # offset of the first program header in make_elf output


@pytest.mark.parametrize("length", [4, 20, EHDR.size - 1])
def test_load_kernel_truncated_elf_header_fails(memory, tmp_path, length):
    message = _load_error(memory, _write(tmp_path, _valid_elf()[:length]))

    assert "truncated ELF header" in message


def test_load_kernel_elf_phoff_beyond_file_fails(memory, tmp_path):
    image = _patch(_valid_elf(), 32, "<Q", 1 << 20)

    message = _load_error(memory, _write(tmp_path, image))

    assert "program headers extend past the end of the file" in message


def test_load_kernel_elf_phnum_beyond_file_fails(memory, tmp_path):
    image = _patch(_valid_elf(), 56, "<H", 500)

    message = _load_error(memory, _write(tmp_path, image))

    assert "program headers extend past the end of the file" in message


def test_load_kernel_elf_segment_beyond_file_fails(memory, tmp_path):
    image = _patch(_valid_elf(), PH0 + 32, "<Q", 0x800)  # p_filesz 0x800 from a ~200-byte file

    message = _load_error(memory, _write(tmp_path, image))

    assert "segment 0 extends past the end of the file" in message


def test_load_kernel_elf_segment_offset_beyond_file_fails(memory, tmp_path):
    image = _patch(_valid_elf(), PH0 + 8, "<Q", 1 << 40)

    message = _load_error(memory, _write(tmp_path, image))

    assert "extends past the end of the file" in message


def test_load_kernel_elf_filesz_larger_than_memsz_fails(memory, tmp_path):
    image = make_elf([(KERNEL_LOAD, b"x" * 64, 16)], KERNEL_LOAD)

    message = _load_error(memory, _write(tmp_path, image))

    assert "p_filesz 0x40 larger than p_memsz 0x10" in message


def test_load_kernel_elf_segment_below_1mib_fails(memory, tmp_path):
    image = make_elf([(0xF_F000, b"x" * 16, 0x2000)], 0xF_F000)

    message = _load_error(memory, _write(tmp_path, image))

    assert "below 1 MiB" in message


def test_load_kernel_elf_segment_overlapping_mmio_gap_fails(tmp_path):
    big = GuestMemory.create(layout.ram_regions(4 * layout.GIB))  # NORESERVE: costs nothing
    try:
        image = make_elf([(layout.MMIO32_START - 0x1000, b"x", 0x2000)], layout.MMIO32_START - 0x1000)
        message = _load_error(big, _write(tmp_path, image))
    finally:
        big.close()

    assert "overlaps the MMIO gap" in message


def test_load_kernel_elf_segment_beyond_ram_fails(memory, tmp_path):
    image = make_elf([(63 * MIB, b"x", 2 * MIB)], 63 * MIB)

    message = _load_error(memory, _write(tmp_path, image))

    assert "does not fit in guest memory" in message and "64 MiB" in message


def test_load_kernel_elf32_fails(memory, tmp_path):
    image = _patch(_valid_elf(), 4, "<B", 1)  # ELFCLASS32

    message = _load_error(memory, _write(tmp_path, image))

    assert "not a 64-bit ELF" in message


def test_load_kernel_big_endian_elf_fails(memory, tmp_path):
    image = _patch(_valid_elf(), 5, "<B", 2)  # ELFDATA2MSB

    message = _load_error(memory, _write(tmp_path, image))

    assert "little-endian" in message


def test_load_kernel_elf_wrong_machine_fails(memory, tmp_path):
    image = make_elf([(KERNEL_LOAD, b"x", 1)], KERNEL_LOAD, machine=183)  # EM_AARCH64

    message = _load_error(memory, _write(tmp_path, image))

    assert "machine 183 is not x86_64" in message


def test_load_kernel_elf_dyn_fails(memory, tmp_path):
    image = make_elf([(KERNEL_LOAD, b"x", 1)], KERNEL_LOAD, e_type=3)  # ET_DYN

    message = _load_error(memory, _write(tmp_path, image))

    assert "not EXEC" in message


def test_load_kernel_elf_without_program_headers_fails(memory, tmp_path):
    image = make_elf([], KERNEL_LOAD)

    message = _load_error(memory, _write(tmp_path, image))

    assert "no program headers" in message


def test_load_kernel_elf_without_pt_load_fails(memory, tmp_path):
    image = _patch(_valid_elf(), PH0, "<I", 6)  # PT_PHDR instead of PT_LOAD

    message = _load_error(memory, _write(tmp_path, image))

    assert "no loadable segment" in message


def test_load_kernel_elf_bad_phentsize_fails(memory, tmp_path):
    image = _patch(_valid_elf(), 54, "<H", PHDR.size - 1)

    message = _load_error(memory, _write(tmp_path, image))

    assert "program header size" in message


def test_load_kernel_elf_entry_outside_segments_fails(memory, tmp_path):
    image = make_elf([(KERNEL_LOAD, b"x" * 16, 0x1000)], KERNEL_LOAD + 0x1000)

    message = _load_error(memory, _write(tmp_path, image))

    assert "entry point 0x1001000 is not inside a loaded segment" in message


# --- malformed bzImage ----------------------------------------------------------------------


def test_load_kernel_bzimage_protocol_older_than_2_12_fails(memory, tmp_path):
    image = make_bzimage(b"k" * 512, version=0x20B)

    message = _load_error(memory, _write(tmp_path, image))

    assert "boot protocol 2.11 is too old" in message


def test_load_kernel_bzimage_without_xlf_kernel_64_fails(memory, tmp_path):
    image = make_bzimage(b"k" * 512, xloadflags=0x2)

    message = _load_error(memory, _write(tmp_path, image))

    assert "XLF_KERNEL_64" in message


def test_load_kernel_bzimage_setup_covering_whole_file_fails(memory, tmp_path):
    image = make_bzimage(b"k" * 512, setup_sects=4)[: 5 * 512]

    message = _load_error(memory, _write(tmp_path, image))

    assert "covers the whole file" in message


def test_load_kernel_bzimage_setup_sects_past_end_fails(memory, tmp_path):
    image = _patch(make_bzimage(b"k" * 512, setup_sects=4), 0x1F1, "<B", 200)

    message = _load_error(memory, _write(tmp_path, image))

    assert "covers the whole file" in message


def test_load_kernel_bzimage_lying_syssize_fails(memory, tmp_path):
    image = make_bzimage(b"k" * 512, syssize=0x1000)  # claims 64 KiB, 512 bytes present

    message = _load_error(memory, _write(tmp_path, image))

    assert "syssize says 65536 bytes, 512 present" in message


def test_load_kernel_bzimage_truncated_setup_header_fails(memory, tmp_path):
    image = make_bzimage(b"k" * 512)[:0x220]

    message = _load_error(memory, _write(tmp_path, image))

    assert "truncated bzImage setup header" in message


def test_load_kernel_bzimage_init_size_larger_than_ram_fails(memory, tmp_path):
    image = make_bzimage(b"k" * 512, init_size=128 * MIB)

    message = _load_error(memory, _write(tmp_path, image))

    assert "does not fit in guest memory" in message


# --- initrd ---------------------------------------------------------------------------------


def test_load_initrd_128mib_at_top_of_ram_page_aligned(tmp_path):
    mem = GuestMemory.create(layout.ram_regions(128 * MIB))
    data = os.urandom(10_000)
    try:
        gpa, size = load_initrd(mem, _write(tmp_path, data, "initrd"), KERNEL_LOAD + MIB)
        assert (gpa, size) == ((128 * MIB - 10_000) & ~0xFFF, 10_000)
        assert gpa % 4096 == 0 and gpa + size <= 128 * MIB
        assert mem.read(gpa, size) == data
    finally:
        mem.close()


def test_load_initrd_4gib_at_top_of_first_region(tmp_path):
    mem = GuestMemory.create(layout.ram_regions(4 * layout.GIB))
    data = b"initrd" * 1000
    try:
        gpa, size = load_initrd(mem, _write(tmp_path, data, "initrd"), KERNEL_LOAD + MIB)
        assert mem.regions[0].end == 3 * layout.GIB
        assert gpa == (3 * layout.GIB - len(data)) & ~0xFFF
        assert gpa % 4096 == 0 and gpa + size <= 3 * layout.GIB
        assert mem.read(gpa, size) == data
    finally:
        mem.close()


def test_load_initrd_exact_page_multiple_ends_at_top(memory, tmp_path):
    gpa, size = load_initrd(memory, _write(tmp_path, bytes(8192), "initrd"), KERNEL_LOAD)

    assert (gpa, size) == (64 * MIB - 8192, 8192)


def test_load_initrd_overlapping_kernel_fails(memory, tmp_path):
    path = _write(tmp_path, bytes(10 * MIB), "initrd")

    with pytest.raises(LoaderError) as info:
        load_initrd(memory, path, 60 * MIB)

    assert path in str(info.value) and "does not fit in guest memory" in str(info.value)


def test_load_initrd_larger_than_ram_fails(memory, tmp_path):
    path = tmp_path / "initrd"
    with open(path, "wb") as f:
        f.truncate(65 * MIB)  # sparse: no disk needed

    with pytest.raises(LoaderError) as info:
        load_initrd(memory, str(path), KERNEL_LOAD)

    assert str(path) in str(info.value) and "does not fit" in str(info.value)


def test_load_initrd_empty_file_fails(memory, tmp_path):
    path = _write(tmp_path, b"", "initrd")

    with pytest.raises(LoaderError) as info:
        load_initrd(memory, path, KERNEL_LOAD)

    assert path in str(info.value) and "empty" in str(info.value)


def test_load_initrd_missing_file_fails(memory, tmp_path):
    path = str(tmp_path / "none")

    with pytest.raises(LoaderError) as info:
        load_initrd(memory, path, KERNEL_LOAD)

    assert f"The initrd file {path} does not exist" in str(info.value)
