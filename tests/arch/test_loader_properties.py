"""Property tests: whatever bytes the kernel file holds, load_kernel returns an image inside guest RAM
at or above 1 MiB, or raises LoaderError; never any other exception."""

from __future__ import annotations

import os
import struct
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparkler.arch.x86_64 import layout
from sparkler.arch.x86_64.loader import LoadResult, load_kernel
from sparkler.errors import LoaderError
from sparkler.memory import GuestMemory
from sparkler.testing.images import (
    EHDR,
    ELF_HEADER_FIELDS,
    PHDR,
    PHDR_FIELDS,
    SETUP_HEADER_FIELDS,
    make_bzimage,
    make_elf,
)

MIB = layout.MIB
RAM = 64 * MIB
SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

VALID_ELF = make_elf(
    [(0x100_0000, bytes(range(256)) * 2, 0x2000), (0x180_0000, b"data" * 16, 0x100)],
    0x100_0000,
    pvh_entry=0x100_0010,
)
VALID_BZIMAGE = make_bzimage(b"\x90" * 1500, setup_sects=4, init_size=0x4000)


@pytest.fixture(scope="module")
def memory():
    mem = GuestMemory.create(layout.ram_regions(RAM))
    yield mem
    mem.close()


@pytest.fixture(scope="module")
def kernel_path():
    fd, path = tempfile.mkstemp(prefix="sparkler-kernel-")
    os.close(fd)
    yield path
    os.unlink(path)


def _check(memory: GuestMemory, path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
    try:
        result = load_kernel(memory, path)
    except LoaderError as e:
        assert path in str(e)
        return
    assert isinstance(result, LoadResult)
    assert layout.HIMEM_START <= result.kernel_start < result.kernel_end <= RAM
    assert memory.contains(result.kernel_start, result.kernel_end - result.kernel_start)


def _field_value(fmt: str) -> st.SearchStrategy[int]:
    bits = struct.calcsize(fmt) * 8
    return st.one_of(
        st.integers(0, (1 << bits) - 1),
        st.sampled_from([0, 1, 2, 3, 4, 0x38, 0x40, 0x100000, 0x1000000, RAM, RAM - 1, (1 << bits) - 1]).map(
            lambda v: v & ((1 << bits) - 1)
        ),
    )


def _mutate(image: bytes, offset: int, fmt: str, value: int) -> bytes:
    buf = bytearray(image)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


@SETTINGS
@given(data=st.binary(max_size=4096))
def test_load_kernel_random_bytes_loads_or_raises_loader_error(memory, kernel_path, data):
    _check(memory, kernel_path, data)


@SETTINGS
@given(prefix=st.sampled_from([b"\x7fELF", b"\x7fELF\x02\x01\x01"]), data=st.binary(max_size=2048))
def test_load_kernel_random_bytes_after_elf_magic_loads_or_raises_loader_error(memory, kernel_path, prefix, data):
    _check(memory, kernel_path, prefix + data)


@SETTINGS
@given(length=st.integers(0, len(VALID_ELF)))
def test_load_kernel_truncated_elf_loads_or_raises_loader_error(memory, kernel_path, length):
    _check(memory, kernel_path, VALID_ELF[:length])


@SETTINGS
@given(length=st.integers(0, len(VALID_BZIMAGE)))
def test_load_kernel_truncated_bzimage_loads_or_raises_loader_error(memory, kernel_path, length):
    _check(memory, kernel_path, VALID_BZIMAGE[:length])


@st.composite
def _elf_mutation(draw: st.DrawFn) -> tuple[int, str, int]:
    """(offset, fmt, value) for one ELF header field or one field of one program header."""
    phnum = 3  # two PT_LOAD + the PVH note
    if draw(st.booleans()):
        _name, offset, fmt = draw(st.sampled_from(ELF_HEADER_FIELDS))
    else:
        index = draw(st.integers(0, phnum - 1))
        _name, inner, fmt = draw(st.sampled_from(PHDR_FIELDS))
        offset = EHDR.size + index * PHDR.size + inner
    return offset, fmt, draw(_field_value(fmt))


@SETTINGS
@given(mutations=st.lists(_elf_mutation(), min_size=1, max_size=3))
def test_load_kernel_elf_mutated_header_fields_load_or_raise_loader_error(memory, kernel_path, mutations):
    image = VALID_ELF
    for offset, fmt, value in mutations:
        image = _mutate(image, offset, fmt, value)
    _check(memory, kernel_path, image)


@st.composite
def _bzimage_mutation(draw: st.DrawFn) -> tuple[int, str, int]:
    _name, offset, fmt = draw(st.sampled_from(SETUP_HEADER_FIELDS))
    return offset, fmt, draw(_field_value(fmt))


@SETTINGS
@given(mutations=st.lists(_bzimage_mutation(), min_size=1, max_size=3))
def test_load_kernel_bzimage_mutated_setup_header_loads_or_raises_loader_error(memory, kernel_path, mutations):
    image = VALID_BZIMAGE
    for offset, fmt, value in mutations:
        image = _mutate(image, offset, fmt, value)
    _check(memory, kernel_path, image)


@SETTINGS
@given(offset=st.integers(0, len(VALID_ELF) - 1), value=st.integers(0, 255))
def test_load_kernel_elf_any_byte_flipped_loads_or_raises_loader_error(memory, kernel_path, offset, value):
    _check(memory, kernel_path, _mutate(VALID_ELF, offset, "<B", value))


@st.composite
def _valid_segments(draw: st.DrawFn) -> list[tuple[int, bytes, int]]:
    """1-3 non-overlapping segments in [1 MiB, 64 MiB), each with file data and maybe bss."""
    count = draw(st.integers(1, 3))
    slots = draw(st.lists(st.integers(1, 62), min_size=count, max_size=count, unique=True))
    segments = []
    for slot in sorted(slots):
        paddr = slot * MIB + draw(st.integers(0, 0xFFFF))
        data = draw(st.binary(min_size=1, max_size=512))
        bss = draw(st.sampled_from([0, 1, 0xFFF, 0x1000, 0x12345, 0x80000]))
        segments.append((paddr, data, len(data) + bss))
    return segments


@SETTINGS
@given(segments=_valid_segments(), entry_index=st.integers(0, 2), dirty=st.integers(1, 255))
def test_load_kernel_valid_random_elf_lands_exactly(memory, kernel_path, segments, entry_index, dirty):
    paddr, data, memsz = segments[entry_index % len(segments)]
    entry = paddr + len(data) - 1
    for p, _d, m in segments:
        memory.fill(p, m, dirty)  # whatever a previous example left there must be overwritten
    with open(kernel_path, "wb") as f:
        f.write(make_elf(segments, entry))

    result = load_kernel(memory, kernel_path)

    assert result.entry == entry
    assert result.kernel_start == segments[0][0]
    assert result.kernel_end == max(p + m for p, _d, m in segments)
    for p, d, m in segments:
        assert memory.read(p, len(d)) == d
        assert memory.read(p + len(d), m - len(d)) == bytes(m - len(d))


def test_load_kernel_valid_images_load(memory, kernel_path):
    """The unmutated images load, so the properties above exercise more than the error paths."""
    for image in (VALID_ELF, VALID_BZIMAGE):
        with open(kernel_path, "wb") as f:
            f.write(image)
        assert load_kernel(memory, kernel_path).kernel_start >= layout.HIMEM_START
