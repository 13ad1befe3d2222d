"""Guest user space: a busybox initramfs (newc cpio, gzip) and an ext4 root file system image.

Both contain Debian's ``busybox-static`` at ``/bin/busybox`` with one symlink per applet, and the
same init script (``init.sh``): at ``/init`` in the initramfs and at ``/sbin/init`` on the ext4
image. The initramfs is written by a small pure-Python newc writer (:class:`CpioWriter`), so it
needs no root for the ``/dev/console`` node; the ext4 image is made with ``mkfs.ext4 -d`` from a
staging directory (no loop mount).

newc format (``cpio(5)``, "SVR4 portable format without CRC"): each member is a 110-byte ASCII
header (magic ``070701`` and 13 eight-digit hex fields), the NUL-terminated name, padding to a
multiple of 4, then the data padded to a multiple of 4. A member named ``TRAILER!!!`` ends the
archive. The kernel's initramfs unpacker accepts exactly this, optionally gzip-compressed
(``CONFIG_RD_GZIP``).
"""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import BinaryIO

BUSYBOX_PACKAGE = "busybox-static"
BUSYBOX_PATH = Path("/bin/busybox")
BUILD_PACKAGES = ("busybox-static", "e2fsprogs")
ROOTFS_SIZE_MIB = 64
DIRECTORIES = ("bin", "sbin", "dev", "proc", "sys", "tmp", "etc", "root", "usr", "usr/bin", "usr/sbin", "mnt")

Progress = Callable[[str], None]

_NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"


def init_script() -> str:
    """The guest init script shipped with the package."""
    return resources.files("sparkler.guest").joinpath("init.sh").read_text(encoding="utf-8")


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


class CpioWriter:
    """Write a newc cpio archive member by member (inode numbers assigned in order)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 0
        self._closed = False

    def _member(
        self,
        name: str,
        mode: int,
        data: bytes = b"",
        *,
        nlink: int = 1,
        rdev: tuple[int, int] = (0, 0),
        mtime: int = 0,
    ) -> None:
        if self._closed:
            raise ValueError("archive already closed")
        encoded = name.encode() + b"\0"
        self._ino += 1
        fields = (self._ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = _NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + encoded + _pad4(len(header) + len(encoded)))
        self._out.write(data + _pad4(len(data)))

    def directory(self, name: str, perm: int = 0o755) -> None:
        self._member(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._member(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._member(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._member(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def close(self) -> None:
        """Write the trailer member (the writer does not close the stream)."""
        self._member(TRAILER, 0, nlink=1)
        self._closed = True


def parse_newc(data: bytes) -> list[tuple[str, int, bytes]]:
    """Parse a newc archive into ``(name, mode, data)`` tuples (trailer excluded); for tests."""
    members = []
    pos = 0
    while True:
        header = data[pos : pos + 110]
        if header[:6] != _NEWC_MAGIC:
            raise ValueError(f"bad newc magic at offset {pos}")
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        pos += 110
        name = data[pos : pos + namesize - 1].decode()
        pos += namesize
        pos += -pos % 4
        body = data[pos : pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == TRAILER:
            return members
        members.append((name, mode, body))


def busybox_applets(busybox: Path = BUSYBOX_PATH) -> list[str]:
    """Applet paths (``bin/sh``, ``sbin/reboot`` ...) from ``busybox --list-full``."""
    result = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True)
    return [line.strip().lstrip("/") for line in result.stdout.splitlines() if line.strip()]


def build_initramfs(out: Path, progress: Progress, busybox: Path = BUSYBOX_PATH) -> Path:
    """Write the gzip-compressed newc initramfs to ``out``."""
    progress(f"initramfs: busybox {busybox} + /init -> {out.name}")
    applets = [a for a in busybox_applets(busybox) if a != "bin/busybox"]
    with out.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        cpio = CpioWriter(gz)  # type: ignore[arg-type]
        for d in DIRECTORIES:
            cpio.directory(d)
        cpio.char_device("dev/console", 5, 1)
        cpio.char_device("dev/null", 1, 3, 0o666)
        cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
        cpio.file("init", init_script().encode(), 0o755)
        for applet in applets:
            depth = applet.count("/")
            cpio.symlink(applet, "../" * depth + "bin/busybox")
        cpio.close()
    return out


def populate_tree(root: Path, busybox: Path = BUSYBOX_PATH) -> None:
    """Lay out the rootfs directory: busybox, applet symlinks, /sbin/init, /dev/console."""
    for d in DIRECTORIES:
        (root / d).mkdir(parents=True, exist_ok=True)
    target = root / "bin" / "busybox"
    target.write_bytes(busybox.read_bytes())
    target.chmod(0o755)
    for applet in busybox_applets(busybox):
        if applet in ("bin/busybox", "sbin/init"):
            continue
        link = root / applet
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to("../" * applet.count("/") + "bin/busybox")
    init = root / "sbin" / "init"
    init.write_text(init_script(), encoding="utf-8")
    init.chmod(0o755)
    if os.geteuid() == 0:  # mknod needs CAP_MKNOD; devtmpfs covers /dev otherwise
        os.mknod(root / "dev" / "console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))


def build_rootfs(
    out: Path, work: Path, progress: Progress, busybox: Path = BUSYBOX_PATH, size_mib: int = ROOTFS_SIZE_MIB
) -> Path:
    """Make a ``size_mib`` ext4 image at ``out`` with ``mkfs.ext4 -d``."""
    tree = work / "rootfs"
    populate_tree(tree, busybox)
    progress(f"rootfs: mkfs.ext4 -d {tree} ({size_mib} MiB) -> {out.name}")
    with out.open("wb") as f:
        f.truncate(size_mib * 2**20)
    result = subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "sparkler-root", "-E", "root_owner=0:0", "-d", str(tree), str(out)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PATH": os.environ.get("PATH", "") + ":/sbin:/usr/sbin"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"mkfs.ext4 failed: {result.stderr.strip()}")
    return out
