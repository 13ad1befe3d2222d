"""virtio-blk host I/O: execute parsed Requests against the backing file (Firecracker's Sync engine).

Data moves with ``os.preadv`` / ``os.pwritev`` straight between the file and memoryviews of guest
RAM from :meth:`GuestMemory.slice` -- no copy in Python. A short transfer is continued; a
transfer that makes no progress (the file shrank under us) or any ``OSError`` completes the
request with ``VIRTIO_BLK_S_IOERR``.

``cache_type`` (catalog 5.1): ``Unsafe`` never syncs (and the device does not offer FLUSH);
``Writeback`` offers VIRTIO_BLK_F_FLUSH and executes FLUSH as ``fsync`` of the backing file.
A read-only disk refuses OUT with IOERR before touching the file (spec 5.2.6.1).

The disk id for GET_ID is Firecracker's (kvmtool's) scheme: the decimal concatenation of the
backing file's ``st_dev``, ``st_rdev`` and ``st_ino``, cut or zero-padded to 20 bytes.
"""

from __future__ import annotations

import enum
import os
from typing import NamedTuple

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.block.request import Request, RequestType
from sparkler.errors import HostError
from sparkler.memory import GuestMemory


class CacheType(enum.Enum):
    UNSAFE = "Unsafe"
    WRITEBACK = "Writeback"


class Outcome(NamedTuple):
    """How a request ended: the status byte and how many bytes went into guest buffers."""

    status: int
    bytes_to_guest: int
    bytes_from_guest: int = 0


def disk_image_id(fd: int) -> bytes:
    st = os.fstat(fd)
    text = f"{st.st_dev}{st.st_rdev}{st.st_ino}".encode()[: spec.VIRTIO_BLK_ID_BYTES]
    return text.ljust(spec.VIRTIO_BLK_ID_BYTES, b"\0")


class DiskBackend:
    """An open backing file plus the Sync I/O engine over it."""

    def __init__(self, fd: int, *, read_only: bool = False, cache_type: CacheType = CacheType.UNSAFE) -> None:
        self.fd = fd
        self.read_only = read_only
        self.cache_type = cache_type
        size = os.lseek(fd, 0, os.SEEK_END)  # works for regular files and block devices
        self.capacity_sectors = size >> spec.SECTOR_SHIFT
        self.unaligned_tail = size % spec.SECTOR_SIZE  # invisible to the guest (Firecracker warns)
        self.disk_id = disk_image_id(fd)

    @classmethod
    def open(cls, path: str, *, read_only: bool = False, cache_type: CacheType = CacheType.UNSAFE) -> DiskBackend:
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except OSError as e:
            raise HostError(f"Cannot open block device file {path}: {e.strerror}") from e
        try:
            return cls(fd, read_only=read_only, cache_type=cache_type)
        except OSError as e:
            os.close(fd)
            raise HostError(f"Cannot use block device file {path}: {e.strerror}") from e

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # --- execution ----------------------------------------------------------------------------------
    def execute(self, request: Request, memory: GuestMemory) -> Outcome:
        try:
            match request.type:
                case RequestType.IN:
                    n = self._transfer(os.preadv, request, memory)
                    return Outcome(spec.VIRTIO_BLK_S_OK, n)
                case RequestType.OUT:
                    if self.read_only:
                        return Outcome(spec.VIRTIO_BLK_S_IOERR, 0)
                    n = self._transfer(os.pwritev, request, memory)
                    return Outcome(spec.VIRTIO_BLK_S_OK, 0, n)
                case RequestType.FLUSH:
                    if self.cache_type is CacheType.WRITEBACK:
                        os.fsync(self.fd)
                    return Outcome(spec.VIRTIO_BLK_S_OK, 0)
                case RequestType.GET_ID:
                    return Outcome(spec.VIRTIO_BLK_S_OK, self._write_id(request, memory))
        except (OSError, _ShortTransfer):
            return Outcome(spec.VIRTIO_BLK_S_IOERR, 0)
        raise AssertionError(f"unhandled request type {request.type}")

    def _transfer(self, op, request: Request, memory: GuestMemory) -> int:  # noqa: ANN001 - os.preadv/pwritev
        segments = request.segments
        views = [memory.slice(gpa, length) for gpa, length in segments]
        offset = request.sector << spec.SECTOR_SHIFT
        total = segments[0][1] if len(segments) == 1 else sum(length for _, length in segments)
        n = op(self.fd, views, offset)
        if n == total:  # the usual case: everything in one call
            return n
        if n <= 0:
            raise _ShortTransfer
        done = n
        views = _advance(views, n)
        while done < total:
            n = op(self.fd, views, offset + done)
            if n <= 0:
                raise _ShortTransfer
            done += n
            views = _advance(views, n)
        return done

    def _write_id(self, request: Request, memory: GuestMemory) -> int:
        remaining = memoryview(self.disk_id)
        for gpa, length in request.segments:
            chunk = remaining[:length]
            memory.write(gpa, chunk)
            remaining = remaining[len(chunk) :]
            if not remaining:
                break
        return spec.VIRTIO_BLK_ID_BYTES - len(remaining)


class _ShortTransfer(Exception):
    pass


def _advance(views: list[memoryview], n: int) -> list[memoryview]:
    """Drop the first ``n`` bytes from a list of buffers (after a short preadv/pwritev)."""
    out = []
    for view in views:
        if n >= len(view):
            n -= len(view)
            continue
        out.append(view[n:])
        n = 0
    return out
