"""PUT /drives/{drive_id} body and the config file's ``drives`` entries (catalog 1.3, Drive).

Firecracker's ``BlockDeviceConfig``: a virtio-blk drive backed by ``path_on_host``. At most one
drive is the root device; it is always attached first (``/dev/vda``), and the guest command line
gets ``root=/dev/vda`` (or ``root=PARTUUID=...``) and ``ro``/``rw``. ``io_engine`` ``Async``
(io_uring) and vhost-user drives (``socket``) are refused with a clear error.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from sparkler.config.rate_limiter import RateLimiterConfig
from sparkler.errors import ConfigError

CacheTypeName = Literal["Unsafe", "Writeback"]
IoEngineName = Literal["Sync", "Async"]

ROOT_EXISTS = "A root block device already exists!"
ASYNC_NOT_SUPPORTED = (
    "The Async io_engine (io_uring) is not supported by this version of Sparkler yet; use \"Sync\"."
)
VHOST_USER_NOT_SUPPORTED = "vhost-user block devices (socket) are not supported by this version of Sparkler."
PATH_REQUIRED = "A block device needs path_on_host."


class DriveConfig(msgspec.Struct, forbid_unknown_fields=True):
    drive_id: str
    is_root_device: bool
    partuuid: str | None = None
    cache_type: CacheTypeName = "Unsafe"
    is_read_only: bool | None = None
    path_on_host: str | None = None
    rate_limiter: RateLimiterConfig | None = None
    io_engine: IoEngineName = "Sync"
    socket: str | None = None

    def validate(self) -> None:
        if not self.drive_id or not all(c.isalnum() or c == "_" for c in self.drive_id):
            raise ConfigError(f"Invalid drive id {self.drive_id!r}: use letters, digits and '_' only.")
        if self.socket is not None:
            raise ConfigError(VHOST_USER_NOT_SUPPORTED)
        if self.io_engine == "Async":
            raise ConfigError(ASYNC_NOT_SUPPORTED)
        if not self.path_on_host:
            raise ConfigError(PATH_REQUIRED)
        if self.partuuid is not None and any(not (0x21 <= ord(c) <= 0x7E) for c in self.partuuid):
            raise ConfigError("Invalid partuuid: printable ASCII without spaces only.")

    @property
    def read_only(self) -> bool:
        return bool(self.is_read_only)

    def root_cmdline(self) -> list[str]:
        """The command-line words a root device adds (catalog 4.5)."""
        root = f"root=PARTUUID={self.partuuid}" if self.partuuid else "root=/dev/vda"
        return [root, "ro" if self.read_only else "rw"]


class DriveUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """PATCH /drives/{drive_id} (after boot): a new backing file and/or new rate limiter buckets."""

    drive_id: str
    path_on_host: str | None = None
    rate_limiter: RateLimiterConfig | None = None

    def validate(self) -> None:
        if self.path_on_host is None and self.rate_limiter is None:
            raise ConfigError("Please specify at least one property to patch: path_on_host, rate_limiter.")


def insert_drive(drives: list[DriveConfig], new: DriveConfig) -> list[DriveConfig]:
    """Firecracker's ``BlockBuilder::insert``: a new list with ``new`` added or replacing its id.

    The root device is kept first; a second root device is refused (ROOT_EXISTS).
    """
    new.validate()
    others = [d for d in drives if d.drive_id != new.drive_id]
    if new.is_root_device:
        if any(d.is_root_device for d in others):
            raise ConfigError(ROOT_EXISTS)
        return [new, *others]
    index = next((i for i, d in enumerate(drives) if d.drive_id == new.drive_id), None)
    if index is None:
        return [*others, new]
    result = list(drives)
    result[index] = new
    if drives[index].is_root_device:  # a former root loses its place at the front
        result.pop(index)
        result.append(new)
    return result


def ordered_drives(drives: list[DriveConfig] | None) -> list[DriveConfig]:
    """The attach order of a config file's list (inserted one by one, as Firecracker does)."""
    result: list[DriveConfig] = []
    for drive in drives or []:
        result = insert_drive(result, drive)
    return result


__all__ = [
    "ASYNC_NOT_SUPPORTED",
    "DriveConfig",
    "DriveUpdate",
    "ROOT_EXISTS",
    "VHOST_USER_NOT_SUPPORTED",
    "insert_drive",
    "ordered_drives",
]
