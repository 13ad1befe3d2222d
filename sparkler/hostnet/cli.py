"""``sparkler net``: create and delete the tap a microVM's network interface uses.

    sparkler net create-tap NAME [--netns NS] [--address 172.16.0.1/30] [--nat]
                                 [--owner UID] [--group GID] [--mtu N]
    sparkler net delete-tap NAME [--netns NS] [--delete-netns]

``create-tap`` makes the namespace when it does not exist yet. Run it as root (it needs
CAP_NET_ADMIN); ``--owner``/``--group`` let an unprivileged VMM open the tap afterwards. Then
``PUT /network-interfaces/eth0 {"iface_id": "eth0", "host_dev_name": NAME}`` (run the VMM in the
namespace: ``ip netns exec NS sparkler ...`` or the jailer's ``--netns /run/netns/NS``).

Exit codes: 0 success, 1 failure (the message says why: privileges, a name in use ...), 2 usage
error (including invalid names and addresses).
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparkler net", description="Taps for microVMs, optionally in a network namespace with NAT."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create-tap", help="create a persistent tap (and the namespace if needed)")
    create.add_argument("name", help="tap name (at most 15 bytes)")
    create.add_argument("--netns", metavar="NS", help="network namespace (/run/netns/NS), created if missing")
    create.add_argument("--address", metavar="ADDR/PREFIX", help="host address of the tap, e.g. 172.16.0.1/30")
    create.add_argument("--nat", action="store_true", help="masquerade the tap's subnet (nftables)")
    create.add_argument("--owner", type=int, metavar="UID", help="user allowed to open the tap")
    create.add_argument("--group", type=int, metavar="GID", help="group allowed to open the tap")
    create.add_argument("--mtu", type=int, metavar="N", help="MTU of the tap")
    delete = sub.add_parser("delete-tap", help="delete a tap and its NAT rules")
    delete.add_argument("name", help="tap name")
    delete.add_argument("--netns", metavar="NS", help="network namespace the tap is in")
    delete.add_argument("--delete-netns", action="store_true", help="delete the namespace too")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``sparkler net ...``; returns the exit code."""
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse exits on --help (0) and usage errors (2)
        return int(exc.code or 0)
    from sparkler.hostnet import tap

    def usage(message: str) -> int:
        print(f"sparkler net {args.command}: {message}", file=sys.stderr)
        return 2

    try:
        tap.check_ifname(args.name, "tap")
        if args.netns is not None:
            tap.check_netns_name(args.netns)
        if getattr(args, "address", None) is not None:
            tap.check_address(args.address)
    except tap.NetSetupError as e:
        return usage(str(e))
    for flag in ("owner", "group"):
        value = getattr(args, flag, None)
        if value is not None and not 0 <= value < 2**32 - 1:
            return usage(f"--{flag} must be a user/group id (0..4294967294).")
    if args.command == "delete-tap" and args.delete_netns and args.netns is None:
        return usage("--delete-netns needs --netns.")
    try:
        if args.command == "create-tap":
            request = tap.TapRequest(
                name=args.name,
                netns=args.netns,
                address=args.address,
                nat=args.nat,
                owner=args.owner,
                group=args.group,
                mtu=args.mtu,
            )
            tap.create_tap(request)
        else:
            tap.delete_tap(args.name, args.netns, delete_netns=args.delete_netns)
    except tap.NetSetupError as e:
        print(f"sparkler net {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


__all__ = ["main"]
