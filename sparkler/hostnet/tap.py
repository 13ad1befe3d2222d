"""Host networking for microVMs: a persistent tap, optionally in its own network namespace, with an
address and NAT. Netlink through pyroute2; NAT through nftables (the ``nft`` program).

What ``create_tap`` does, in order (and undoes, in reverse, if a later step fails):

1. the network namespace ``netns`` (``/run/netns/<netns>``, as ``ip netns add``), unless it exists;
2. the tap ``name`` (persistent, ``IFF_TAP | IFF_NO_PI | IFF_VNET_HDR``), owned by ``owner`` /
   ``group`` when given, so that an unprivileged (jailed) VMM may open it;
3. the address (``172.16.0.1/30``: the host's end; the guest takes another address of the
   subnet) and the link up;
4. with ``nat``: IPv4 forwarding on in that namespace, and an nftables table
   ``ip sparkler_<hex of name>`` whose postrouting chain masquerades traffic from the tap's subnet
   that leaves through any other interface.

``delete_tap`` removes the table and the tap, and with ``delete_netns`` the namespace too.

Every check that needs no privilege comes first: interface and namespace names (Linux's
``dev_valid_name``: 1..15 bytes, not ``.`` or ``..``, no ``/``, ``:`` or white space), the address,
the ``nft`` program. Missing privileges (CAP_NET_ADMIN, or CAP_SYS_ADMIN for a new namespace) are
reported as such, not as a bare EPERM.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass

from sparkler.errors import SparklerError

IFNAMSIZ = 16
NETNS_DIR = "/run/netns"
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21


class NetSetupError(SparklerError):
    """A clear, user-facing reason why the host networking step failed."""


@dataclass(frozen=True)
class TapRequest:
    name: str
    netns: str | None = None
    address: str | None = None  # "172.16.0.1/30"
    nat: bool = False
    owner: int | None = None
    group: int | None = None
    mtu: int | None = None


def check_ifname(name: str, what: str = "interface") -> str:
    raw = name.encode("utf-8", "surrogateescape")
    if not raw:
        raise NetSetupError(f"Invalid {what} name: it is empty.")
    if len(raw) >= IFNAMSIZ:
        raise NetSetupError(f"Invalid {what} name {name!r}: at most {IFNAMSIZ - 1} bytes.")
    if name in (".", "..") or any(c in "/:" or not c.isascii() or not c.isprintable() or c.isspace() for c in name):
        raise NetSetupError(
            f"Invalid {what} name {name!r}: printable ASCII without '/', ':' or white space, not '.' or '..'."
        )
    return name


def check_netns_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\0" in name or len(name.encode()) > 255:
        raise NetSetupError(f"Invalid network namespace name {name!r}: non-empty, no '/', not '.' or '..'.")
    return name


def check_address(address: str) -> ipaddress.IPv4Interface:
    try:
        iface = ipaddress.IPv4Interface(address)
    except ValueError:
        raise NetSetupError(f"Invalid address {address!r}: use an IPv4 address with a prefix, like 172.16.0.1/30.") from None
    if "/" not in address:
        raise NetSetupError(f"Invalid address {address!r}: give the prefix length too, like 172.16.0.1/30.")
    if iface.network.prefixlen < 31 and iface.ip in (iface.network.network_address, iface.network.broadcast_address):
        raise NetSetupError(f"Invalid address {address!r}: that is the network or broadcast address of its subnet.")
    return iface


def has_capability(bit: int) -> bool:
    """Whether the effective capability set holds ``bit`` (from /proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def _privilege_error(action: str, capability: str) -> NetSetupError:
    return NetSetupError(
        f"Permission denied: {action} needs {capability}. Run `sparkler net` as root (for example with sudo), "
        f"then hand the tap to the VMM's user with --owner/--group."
    )


def _nat_table(name: str) -> str:
    return "sparkler_" + name.encode().hex()


def _netns_exists(netns: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, netns))


def _nft(netns: str | None, script: str) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, "nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=30)


def _sysctl_forwarding(netns: str | None) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    proc = subprocess.run(
        [*prefix, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"], capture_output=True, text=True, timeout=30
    )
    if proc.returncode != 0:
        raise NetSetupError(f"Cannot enable IPv4 forwarding: {proc.stderr.strip()}")


def _iproute(netns: str | None):  # type: ignore[no-untyped-def]
    from pyroute2 import IPRoute, NetNS

    return NetNS(netns) if netns else IPRoute()


def create_tap(request: TapRequest, log=print) -> None:  # type: ignore[no-untyped-def]
    from pyroute2 import netns as pyroute2_netns
    from pyroute2.netlink.exceptions import NetlinkError

    name = check_ifname(request.name, "tap")
    netns = check_netns_name(request.netns) if request.netns is not None else None
    iface = check_address(request.address) if request.address is not None else None
    if request.nat and iface is None:
        raise NetSetupError("--nat needs --address (NAT masquerades the tap's subnet).")
    if request.mtu is not None and not 68 <= request.mtu <= 65535:
        raise NetSetupError(f"Invalid MTU {request.mtu}: 68..65535.")
    if request.nat and shutil.which("nft") is None:
        raise NetSetupError("--nat needs the nft program (Debian package nftables).")
    if not has_capability(CAP_NET_ADMIN):
        raise _privilege_error("creating a tap", "CAP_NET_ADMIN")

    undo: list[tuple[str, object]] = []
    try:
        if netns is not None and not _netns_exists(netns):
            if not has_capability(CAP_SYS_ADMIN):
                raise _privilege_error("creating a network namespace", "CAP_SYS_ADMIN")
            pyroute2_netns.create(netns)
            undo.append(("netns", netns))
            log(f"created network namespace {netns}")
        with _iproute(netns) as ip:
            if ip.link_lookup(ifname=name):
                raise NetSetupError(f"An interface named {name} already exists{_where(netns)}.")
            # IFF_NO_PI and IFF_VNET_HDR need not be persistent: the VMM's TUNSETIFF sets them.
            options: dict[str, object] = {"mode": "tap"}
            if request.owner is not None:
                options["uid"] = request.owner
            if request.group is not None:
                options["gid"] = request.group
            ip.link("add", ifname=name, kind="tuntap", **options)
            undo.append(("tap", name))
            (index,) = ip.link_lookup(ifname=name)
            if request.mtu is not None:
                ip.link("set", index=index, mtu=request.mtu)
            if iface is not None:
                ip.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            ip.link("set", index=index, state="up")
        log(f"created tap {name}{_where(netns)}" + (f" with address {iface}" if iface else ""))
        if request.nat and iface is not None:
            _add_nat(name, netns, iface)
            undo.append(("nat", name))
            log(f"NAT: traffic from {iface.network} leaving through other interfaces is masqueraded")
    except NetlinkError as e:
        _undo(undo, netns)
        if e.code == errno.EPERM:
            raise _privilege_error("creating a tap", "CAP_NET_ADMIN") from None
        raise NetSetupError(f"Cannot create tap {name}: {os.strerror(e.code)} (netlink error {e.code}).") from None
    except (OSError, ValueError) as e:
        _undo(undo, netns)
        if isinstance(e, OSError) and e.errno in (errno.EPERM, errno.EACCES):
            raise _privilege_error("creating a tap", "CAP_NET_ADMIN") from None
        raise NetSetupError(f"Cannot create tap {name}: {getattr(e, 'strerror', None) or e}.") from None
    except BaseException:
        _undo(undo, netns)
        raise


def _where(netns: str | None) -> str:
    return f" in network namespace {netns}" if netns else ""


def _add_nat(name: str, netns: str | None, iface: ipaddress.IPv4Interface) -> None:
    _sysctl_forwarding(netns)
    table = _nat_table(name)
    script = (
        f"table ip {table} {{\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    ip saddr {iface.network} oifname != "{name}" masquerade\n'
        "  }\n"
        "}\n"
    )
    proc = _nft(netns, script)
    if proc.returncode != 0:
        raise NetSetupError(f"nft could not add the NAT rules: {proc.stderr.strip()}")


def _undo(steps: list[tuple[str, object]], netns: str | None) -> None:
    for kind, value in reversed(steps):
        try:
            if kind == "nat":
                _nft(netns, f"delete table ip {_nat_table(str(value))}\n")
            elif kind == "tap":
                with _iproute(netns) as ip:
                    for index in ip.link_lookup(ifname=str(value)):
                        ip.link("del", index=index)
            elif kind == "netns":
                from pyroute2 import netns as pyroute2_netns

                pyroute2_netns.remove(str(value))
        except Exception:  # noqa: BLE001 - best effort: the original error is what matters
            pass


def delete_tap(name: str, netns: str | None = None, *, delete_netns: bool = False, log=print) -> None:  # type: ignore[no-untyped-def]
    from pyroute2 import netns as pyroute2_netns
    from pyroute2.netlink.exceptions import NetlinkError

    check_ifname(name, "tap")
    if netns is not None:
        check_netns_name(netns)
        if not _netns_exists(netns):
            raise NetSetupError(f"There is no network namespace {netns}.")
    if not has_capability(CAP_NET_ADMIN):
        raise _privilege_error("deleting a tap", "CAP_NET_ADMIN")
    try:
        with _iproute(netns) as ip:
            indices = ip.link_lookup(ifname=name)
            if not indices:
                raise NetSetupError(f"There is no interface {name}{_where(netns)}.")
            links = ip.get_links(indices[0])
            kind = links[0].get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") if links else None
            if kind != "tun":
                raise NetSetupError(f"{name} is not a tap (its kind is {kind}); not deleting it.")
            ip.link("del", index=indices[0])
    except NetlinkError as e:
        if e.code == errno.EPERM:
            raise _privilege_error("deleting a tap", "CAP_NET_ADMIN") from None
        raise NetSetupError(f"Cannot delete tap {name}: {os.strerror(e.code)}.") from None
    log(f"deleted tap {name}{_where(netns)}")
    if shutil.which("nft") is not None:
        proc = _nft(netns, f"delete table ip {_nat_table(name)}\n")
        if proc.returncode == 0:
            log(f"deleted the NAT rules of {name}")
    if netns is not None and delete_netns:
        pyroute2_netns.remove(netns)
        log(f"deleted network namespace {netns}")


__all__ = [
    "NetSetupError",
    "TapRequest",
    "check_address",
    "check_ifname",
    "check_netns_name",
    "create_tap",
    "delete_tap",
    "has_capability",
]
