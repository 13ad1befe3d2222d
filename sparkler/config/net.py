"""PUT /network-interfaces/{iface_id} body and the config file's ``network-interfaces`` entries.

Firecracker's ``NetworkInterfaceConfig`` (catalog 1.3): a virtio-net device backed by the host tap
``host_dev_name`` (a name shorter than 16 bytes), with an optional ``guest_mac`` (``xx:xx:xx:xx:xx:xx``,
unique among the interfaces), an optional ``mtu`` (68..65535, advertised with VIRTIO_NET_F_MTU)
and independent ``rx_rate_limiter`` / ``tx_rate_limiter``. A PUT of an existing id replaces it.
``NetworkInterfaceUpdate`` is the PATCH form (after boot): only the rate limiters change.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from sparkler.config.rate_limiter import RateLimiterConfig
from sparkler.errors import ConfigError

IFNAMSIZ = 16  # <linux/if.h>: interface names are at most 15 bytes plus the NUL
MTU_MIN = 68
MTU_MAX = 65535

Mtu = Annotated[int, msgspec.Meta(ge=MTU_MIN, le=MTU_MAX)]

MAC_IN_USE = "The MAC address is already in use: {mac}"
PATCH_NOTHING = "Please specify at least one property to patch: rx_rate_limiter, tx_rate_limiter."


def parse_mac(text: str) -> bytes:
    """``xx:xx:xx:xx:xx:xx`` (two hex digits per group) -> 6 bytes; ConfigError otherwise."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        raise ConfigError(f"Invalid MAC address {text!r}: expected six colon-separated pairs of hex digits.")
    return bytes(int(p, 16) for p in parts)


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def check_iface_id(iface_id: str) -> None:
    if not iface_id or not all(c.isalnum() or c == "_" for c in iface_id):
        raise ConfigError(f"Invalid network interface id {iface_id!r}: use letters, digits and '_' only.")


class NetworkInterfaceConfig(msgspec.Struct, forbid_unknown_fields=True):
    iface_id: str
    host_dev_name: str
    guest_mac: str | None = None
    mtu: Mtu | None = None
    rx_rate_limiter: RateLimiterConfig | None = None
    tx_rate_limiter: RateLimiterConfig | None = None

    def validate(self) -> None:
        check_iface_id(self.iface_id)
        name = self.host_dev_name.encode()
        if not name or len(name) >= IFNAMSIZ or b"\0" in name or b"/" in name:
            raise ConfigError(
                f"Invalid tap name {self.host_dev_name!r}: 1 to {IFNAMSIZ - 1} bytes, no '/' or NUL."
            )
        if self.guest_mac is not None:
            parse_mac(self.guest_mac)

    @property
    def mac_bytes(self) -> bytes | None:
        return parse_mac(self.guest_mac) if self.guest_mac is not None else None


class NetworkInterfaceUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """PATCH /network-interfaces/{iface_id} (after boot): new rate-limiter buckets."""

    iface_id: str
    rx_rate_limiter: RateLimiterConfig | None = None
    tx_rate_limiter: RateLimiterConfig | None = None


def insert_interface(interfaces: list[NetworkInterfaceConfig], new: NetworkInterfaceConfig) -> list[NetworkInterfaceConfig]:
    """A new list with ``new`` added (or replacing its id in place); the MAC must be unique."""
    new.validate()
    if new.guest_mac is not None:
        mac = parse_mac(new.guest_mac)
        new = msgspec.structs.replace(new, guest_mac=format_mac(mac))  # reported as Firecracker does
        for other in interfaces:
            if other.iface_id != new.iface_id and other.guest_mac is not None and parse_mac(other.guest_mac) == mac:
                raise ConfigError(MAC_IN_USE.format(mac=new.guest_mac))
    for other in interfaces:
        if other.iface_id != new.iface_id and other.host_dev_name == new.host_dev_name:
            raise ConfigError(
                f"Could not create the network device: the tap {new.host_dev_name!r} is already used by "
                f"interface {other.iface_id!r}."
            )
    index = next((i for i, n in enumerate(interfaces) if n.iface_id == new.iface_id), None)
    if index is None:
        return [*interfaces, new]
    result = list(interfaces)
    result[index] = new
    return result


def ordered_interfaces(interfaces: list[NetworkInterfaceConfig] | None) -> list[NetworkInterfaceConfig]:
    """The config file's list inserted one by one (duplicate MACs refused), as Firecracker does."""
    result: list[NetworkInterfaceConfig] = []
    for iface in interfaces or []:
        result = insert_interface(result, iface)
    return result


__all__ = [
    "MAC_IN_USE",
    "NetworkInterfaceConfig",
    "NetworkInterfaceUpdate",
    "check_iface_id",
    "format_mac",
    "insert_interface",
    "ordered_interfaces",
    "parse_mac",
]
