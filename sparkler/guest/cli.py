"""``sparkler guest``: build the Linux guest artifacts and print where they are.

    sparkler guest build [--kernel-only|--rootfs-only] [--jobs N] [--cache DIR] [--profile P]
    sparkler guest path [--cache DIR] [--profile P]  # JSON: {"kernel": ..., "initramfs": ..., "rootfs": ...}

``--profile`` picks the kernel config: ``microvm`` (default) or ``pvm-test`` (trimmed for the slow
test tier that boots a stock kernel emulated on PVM hosts).

Exit codes: 0 success, 1 build failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sparkler.guest import build as guest_build
from sparkler.guest import kernel as guest_kernel


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparkler guest",
        description="Linux guest artifacts (vmlinux, busybox initramfs, ext4 rootfs) built from "
        "Debian packages and cached in $SPARKLER_CACHE or ~/.cache/sparkler/guest.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or reuse) the artifacts")
    only = build.add_mutually_exclusive_group()
    only.add_argument("--kernel-only", action="store_true", help="only the kernel")
    only.add_argument("--rootfs-only", action="store_true", help="only the initramfs and the ext4 rootfs")
    build.add_argument(
        "--jobs", "-j", type=int, default=0, metavar="N", help="parallel make jobs (default: number of CPUs)"
    )
    build.add_argument("--cache", type=Path, metavar="DIR", help="cache directory")
    path = sub.add_parser("path", help="print the artifact paths as JSON")
    path.add_argument("--cache", type=Path, metavar="DIR", help="cache directory")
    for p in (build, path):
        p.add_argument(
            "--profile",
            choices=sorted(guest_kernel.PROFILES),
            default=guest_kernel.DEFAULT_PROFILE,
            help="kernel config profile (default: %(default)s)",
        )
    return parser


def _progress(message: str) -> None:
    print(f"[guest {time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run ``sparkler guest ...``; returns the exit code."""
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse exits on --help (0) and usage errors (2)
        return int(exc.code or 0)
    if args.command == "path":
        print(guest_build.artifact_paths(args.cache, args.profile).as_json())
        return 0
    if args.jobs < 0:
        print("sparkler guest build: --jobs must be >= 0", file=sys.stderr)
        return 2
    request = guest_build.BuildRequest(
        kernel=not args.rootfs_only, userspace=not args.kernel_only, jobs=args.jobs, cache_root=args.cache,
        profile=args.profile,
    )
    started = time.monotonic()
    try:
        paths = guest_build.build(request, _progress)
    except (guest_build.GuestBuildError, OSError, RuntimeError) as exc:
        print(f"sparkler guest build: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sparkler guest build: interrupted (nothing half-written was published)", file=sys.stderr)
        return 130
    _progress(f"done in {time.monotonic() - started:.0f} s")
    print(paths.as_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
