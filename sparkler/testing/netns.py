"""A fresh network namespace with a tap in it, for tests and benchmarks (unique names, always deleted).

``in_netns(name, fn)`` runs ``fn`` on a thread that has joined the namespace (setns affects only
the calling thread), so fds it opens -- a tap, an AF_PACKET socket -- belong to the namespace and
stay usable from any thread afterwards.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_counter = itertools.count()


def netns_available() -> bool:
    """Root, iproute2 and /dev/net/tun: what netns_with_tap needs."""
    return os.geteuid() == 0 and shutil.which("ip") is not None and os.path.exists("/dev/net/tun")


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=True)


@contextmanager
def netns_with_tap(
    address: str | None = "192.168.241.1/24", mtu: int | None = None, txqueuelen: int | None = None
) -> Iterator[tuple[str, str]]:
    """Yield ``(netns name, tap name)``: a persistent tap, up, with ``address`` on it."""
    n = next(_counter)
    ns = f"spk-net-{os.getpid()}-{n}"
    tap = f"spktap{n}"
    ip("netns", "add", ns)
    try:
        ip("-n", ns, "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr")
        ip("-n", ns, "link", "set", "lo", "up")
        if mtu is not None:
            ip("-n", ns, "link", "set", tap, "mtu", str(mtu))
        if txqueuelen is not None:
            ip("-n", ns, "link", "set", tap, "txqueuelen", str(txqueuelen))
        if address is not None:
            ip("-n", ns, "addr", "add", address, "dev", tap)
        ip("-n", ns, "link", "set", tap, "up")
        yield ns, tap
    finally:
        for _ in range(5):  # a namespace whose last process is still exiting may be busy for a moment
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)
            if not os.path.exists(f"/run/netns/{ns}"):
                break
            time.sleep(0.2)


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    result: list[Any] = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        try:
            result.append(("ok", fn()))
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            result.append(("err", e))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    kind, value = result[0]
    if kind == "err":
        raise value
    return value
