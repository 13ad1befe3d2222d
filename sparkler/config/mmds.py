"""PUT /mmds/config body and the config file's ``mmds-config`` section (catalog 1.3, 7.1).

Firecracker's ``MmdsConfig``: which network interfaces forward guest traffic for the metadata
address to the in-VMM MMDS stack, the MMDS version (``V1``, the deprecated default, or ``V2`` with
session tokens), the IPv4 address the stack answers on (link-local ``169.254.x.y`` with ``x`` not 0
or 255; default ``169.254.169.254``) and ``imds_compat`` (always answer in IMDS text form).

``network_interfaces`` must name interfaces that already exist; that check needs the VM's
interface list, so it is :func:`check_interfaces`, called by the controller and by
``VmmConfig.validate`` with the IDs they know.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Literal

import msgspec

from sparkler.errors import ConfigError

DEFAULT_IPV4_ADDRESS = "169.254.169.254"

EMPTY_IFACE_LIST = "The list of network interface IDs that allow forwarding MMDS requests is empty."
INVALID_IPV4 = "The MMDS IPv4 address is not link local."
UNKNOWN_IFACE = (
    "The list of network interface IDs provided contains at least one ID that does not correspond to any "
    "existing network interface."
)
V1_DEPRECATION = "PUT /mmds/config: V1 is deprecated. Use V2 instead."

MmdsVersionName = Literal["V1", "V2"]


class MmdsConfig(msgspec.Struct, forbid_unknown_fields=True):
    network_interfaces: list[str]
    version: MmdsVersionName = "V1"
    ipv4_address: str | None = None
    imds_compat: bool = False

    def validate(self) -> None:
        """Checks that need nothing but the body: a non-empty list, a link-local address."""
        if not self.network_interfaces:
            raise ConfigError(EMPTY_IFACE_LIST)
        parse_ipv4(self.ipv4)

    @property
    def ipv4(self) -> str:
        return DEFAULT_IPV4_ADDRESS if self.ipv4_address is None else self.ipv4_address

    def normalized(self) -> MmdsConfig:
        """The form GET /vm/config shows: the address spelt out even when it was omitted."""
        return msgspec.structs.replace(self, ipv4_address=str(parse_ipv4(self.ipv4)))


def parse_ipv4(text: str) -> ipaddress.IPv4Address:
    """A usable MMDS address: 169.254.x.y with x not in {0, 255} (Firecracker's rule)."""
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise ConfigError(INVALID_IPV4) from None
    first, second, third, _ = address.packed
    if (first, second) != (169, 254) or third in (0, 255):
        raise ConfigError(INVALID_IPV4)
    return address


def check_interfaces(config: MmdsConfig, known_ids: Iterable[str]) -> None:
    """Every listed interface must exist (``known_ids``: the VM's ``iface_id`` values)."""
    known = set(known_ids)
    if any(iface not in known for iface in config.network_interfaces):
        raise ConfigError(UNKNOWN_IFACE)


__all__ = [
    "DEFAULT_IPV4_ADDRESS",
    "EMPTY_IFACE_LIST",
    "INVALID_IPV4",
    "MmdsConfig",
    "UNKNOWN_IFACE",
    "V1_DEPRECATION",
    "check_interfaces",
    "parse_ipv4",
]
