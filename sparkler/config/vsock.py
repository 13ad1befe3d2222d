"""PUT /vsock body and the config file's ``vsock`` section (catalog 1.3 Vsock, 5.3).

Firecracker's ``VsockDeviceConfig``: ``guest_cid`` (u32, the guest's context id; the swagger
document says at least 3, since 0-2 are reserved: hypervisor, local, host) and ``uds_path``, the
host-side Unix socket. Firecracker binds ``uds_path`` when the request arrives, so a path that
exists already (or cannot be bound) fails the PUT, not the boot. ``vsock_id`` is deprecated: it is
accepted and ignored (the API adds ``Deprecation: true``). There is at most one vsock device.
"""

from __future__ import annotations

import msgspec

from sparkler.errors import ConfigError

VSOCK_HOST_CID = 2
MIN_GUEST_CID = 3
DEPRECATION = "PUT /vsock: vsock_id field is deprecated."
# sockaddr_un.sun_path is 108 bytes including the terminating NUL; "<uds_path>_<port>" must fit too.
UNIX_PATH_MAX = 107


class VsockConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    guest_cid: int
    uds_path: str
    vsock_id: str | None = None

    def validate(self) -> None:
        if not MIN_GUEST_CID <= self.guest_cid <= 0xFFFF_FFFF:
            raise ConfigError(
                f"Invalid guest_cid {self.guest_cid}: it must be a u32 of at least {MIN_GUEST_CID} "
                "(0, 1 and 2 are reserved)."
            )
        if not self.uds_path:
            raise ConfigError("The vsock uds_path cannot be empty.")
        if "\0" in self.uds_path:
            raise ConfigError("The vsock uds_path cannot contain a NUL byte.")
        if len(self.uds_path.encode()) > UNIX_PATH_MAX:
            raise ConfigError(
                f"The vsock uds_path is too long ({len(self.uds_path.encode())} bytes, at most {UNIX_PATH_MAX})."
            )

    def without_deprecated(self) -> VsockConfig:
        """The configuration as Firecracker keeps it: vsock_id is dropped."""
        return msgspec.structs.replace(self, vsock_id=None)


__all__ = ["DEPRECATION", "MIN_GUEST_CID", "UNIX_PATH_MAX", "VSOCK_HOST_CID", "VsockConfig"]
