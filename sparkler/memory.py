"""Guest memory: the only door into guest RAM.

Guest RAM is a set of non-overlapping regions, each an anonymous private mapping created with
MAP_NORESERVE, so the host commits a page only when the guest (or the VMM) first touches it and a
large guest that uses little memory costs little host memory. Every access names a guest-physical
address (gpa) and a length and is checked to lie wholly inside one region; anything else raises
GuestFault. Zero-copy I/O takes a writable ``memoryview`` from :meth:`GuestMemory.slice` and hands
it to ``os.preadv``/``os.pwritev``.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import struct
from dataclasses import dataclass

from sparkler.errors import GuestFault, HostError

# Not exported by Python 3.11's mmap module; the value is the same on every Linux architecture we run on.
MAP_NORESERVE = 0x4000

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class GuestRegion:
    """One contiguous range of guest RAM backed by one host mapping."""

    gpa: int
    size: int
    mapping: mmap.mmap
    host_addr: int  # userspace address of the mapping, for KVM_SET_USER_MEMORY_REGION

    @property
    def end(self) -> int:
        return self.gpa + self.size


class GuestMemory:
    """Guest RAM as bounds-checked regions."""

    def __init__(self, regions: list[GuestRegion]) -> None:
        regions = sorted(regions, key=lambda r: r.gpa)
        for a, b in zip(regions, regions[1:], strict=False):
            if a.end > b.gpa:
                raise ValueError("guest memory regions overlap")
        self.regions: tuple[GuestRegion, ...] = tuple(regions)
        self._starts = [r.gpa for r in regions]
        self._views = [memoryview(r.mapping) for r in regions]
        # True when every region is private anonymous memory (create()): there a page dropped with
        # MADV_DONTNEED reads back as zeros on the next touch, which zero() relies on.
        self._anonymous = False

    @classmethod
    def create(cls, layout: list[tuple[int, int]], *, populate: bool = False) -> GuestMemory:
        """Map anonymous private NORESERVE memory for each (gpa, size) in ``layout``."""
        regions = []
        for gpa, size in layout:
            if size <= 0 or size % mmap.PAGESIZE or gpa % mmap.PAGESIZE:
                raise ValueError(f"guest region {gpa:#x}+{size:#x} is not page aligned")
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
            if populate:
                flags |= mmap.MAP_POPULATE
            try:
                mapping = mmap.mmap(-1, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError as e:
                raise HostError(f"Cannot allocate {size >> 20} MiB of guest memory: {e.strerror}") from e
            # The address of the first byte; the temporary export is released at once.
            anchor = ctypes.c_char.from_buffer(mapping)
            host_addr = ctypes.addressof(anchor)
            del anchor
            regions.append(GuestRegion(gpa, size, mapping, host_addr))
        memory = cls(regions)
        memory._anonymous = True
        return memory

    # --- geometry -----------------------------------------------------------------------------
    @property
    def total_size(self) -> int:
        return sum(r.size for r in self.regions)

    @property
    def last_addr(self) -> int:
        """The last valid guest-physical address."""
        return self.regions[-1].end - 1

    def _locate(self, gpa: int, length: int) -> tuple[int, int]:
        """(region index, offset) of a range that lies wholly inside one region, else GuestFault."""
        if gpa < 0 or length < 0:
            raise GuestFault(f"invalid guest memory access {gpa:#x}+{length:#x}")
        i = bisect.bisect_right(self._starts, gpa) - 1
        if i >= 0:
            region = self.regions[i]
            offset = gpa - region.gpa
            if offset + length <= region.size:
                return i, offset
        raise GuestFault(f"guest memory access {gpa:#x}+{length:#x} is outside guest RAM")

    def contains(self, gpa: int, length: int = 1) -> bool:
        try:
            self._locate(gpa, length)
        except GuestFault:
            return False
        return True

    def region_end(self, gpa: int) -> int:
        """End (exclusive) of the region holding ``gpa``."""
        i, _ = self._locate(gpa, 0)
        return self.regions[i].end

    # --- access -------------------------------------------------------------------------------
    def slice(self, gpa: int, length: int) -> memoryview:
        """A writable view of ``length`` bytes at ``gpa`` (zero-copy)."""
        i, off = self._locate(gpa, length)
        return self._views[i][off : off + length]

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.slice(gpa, length))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.slice(gpa, len(data))[:] = data

    def fill(self, gpa: int, length: int, value: int = 0) -> None:
        self.slice(gpa, length)[:] = bytes([value]) * length

    def zero(self, gpa: int, length: int) -> None:
        """Zero ``length`` bytes at ``gpa`` without committing host memory for whole pages.

        Whole pages of anonymous private memory are dropped with MADV_DONTNEED (the next touch maps a
        fresh zero page), so zeroing a kernel's bss or a large ``init_size`` area costs neither time
        nor resident memory; partial pages at either end are written. Other mappings are written in
        1 MiB chunks.
        """
        i, off = self._locate(gpa, length)
        view = self._views[i]
        end = off + length
        page = mmap.PAGESIZE
        first, last = -(-off // page) * page, end // page * page
        if self._anonymous and last > first:
            view[off:first] = bytes(first - off)
            self.regions[i].mapping.madvise(mmap.MADV_DONTNEED, first, last - first)
            view[last:end] = bytes(end - last)
            return
        chunk = 1 << 20
        for start in range(off, end, chunk):
            stop = min(start + chunk, end)
            view[start:stop] = bytes(stop - start)

    def read_obj(self, gpa: int, ctype: type[ctypes.Structure]) -> ctypes.Structure:
        """A copy of the ctypes structure stored at ``gpa``."""
        return ctype.from_buffer_copy(self.slice(gpa, ctypes.sizeof(ctype)))

    def write_obj(self, gpa: int, obj: ctypes.Structure | ctypes.Array) -> None:  # type: ignore[type-arg]
        self.write(gpa, bytes(obj))

    def read_u8(self, gpa: int) -> int:
        i, off = self._locate(gpa, 1)
        return int(_U8.unpack_from(self._views[i], off)[0])

    def read_u16(self, gpa: int) -> int:
        i, off = self._locate(gpa, 2)
        return int(_U16.unpack_from(self._views[i], off)[0])

    def read_u32(self, gpa: int) -> int:
        i, off = self._locate(gpa, 4)
        return int(_U32.unpack_from(self._views[i], off)[0])

    def read_u64(self, gpa: int) -> int:
        i, off = self._locate(gpa, 8)
        return int(_U64.unpack_from(self._views[i], off)[0])

    def write_u8(self, gpa: int, value: int) -> None:
        i, off = self._locate(gpa, 1)
        _U8.pack_into(self._views[i], off, value)

    def write_u16(self, gpa: int, value: int) -> None:
        i, off = self._locate(gpa, 2)
        _U16.pack_into(self._views[i], off, value)

    def write_u32(self, gpa: int, value: int) -> None:
        i, off = self._locate(gpa, 4)
        _U32.pack_into(self._views[i], off, value)

    def write_u64(self, gpa: int, value: int) -> None:
        i, off = self._locate(gpa, 8)
        _U64.pack_into(self._views[i], off, value)

    def close(self) -> None:
        for view in self._views:
            view.release()
        self._views = []
        for region in self.regions:
            try:
                region.mapping.close()
            except BufferError:
                pass  # a view is still exported somewhere; the mapping goes with the process
