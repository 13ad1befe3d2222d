"""The host side of virtio-net: a tap interface opened as Firecracker does (catalog 5.2).

``open("/dev/net/tun")``, ``TUNSETIFF`` with ``IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`` on an existing
(normally pre-created) tap, ``TUNSETVNETHDRSZ`` = 12 (``struct virtio_net_hdr_v1``), and, once the
guest driver has acknowledged its features, ``TUNSETOFFLOAD`` with the offloads the guest can
receive (GUEST_CSUM -> TUN_F_CSUM, GUEST_TSO4/6 -> TUN_F_TSO4/6, GUEST_UFO -> TUN_F_UFO). Every
frame read or written carries the 12-byte vnet header in front of the Ethernet frame, so the
header passes through unchanged between guest and tap. The fd is non-blocking.

Constants are <linux/if_tun.h>'s; the ioctl numbers are ``_IOW('T', nr, int)``.
"""

from __future__ import annotations

import fcntl
import os
import struct

from sparkler.errors import HostError

TUN_PATH = "/dev/net/tun"
IFNAMSIZ = 16


def _iow(type_char: str, nr: int, size: int) -> int:
    """<asm-generic/ioctl.h> _IOW(type, nr, size) for x86."""
    return (1 << 30) | (size << 16) | (ord(type_char) << 8) | nr


TUNSETIFF = _iow("T", 202, 4)
TUNSETOFFLOAD = _iow("T", 208, 4)
TUNGETIFF = (2 << 30) | (4 << 16) | (ord("T") << 8) | 210  # _IOR('T', 210, unsigned int)
TUNSETVNETHDRSZ = _iow("T", 216, 4)

IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10

VNET_HDR_SIZE = 12  # struct virtio_net_hdr_v1 (with num_buffers)

_IFREQ = struct.Struct("16sH22x")  # struct ifreq: ifr_name, ifr_flags, rest of the union


class TapError(HostError):
    """A tap could not be opened or configured (the message is Firecracker's)."""


def _open_failure(name: str, e: OSError) -> TapError:
    return TapError(
        f"Could not create the network device: Open tap device failed: Error while creating ifreq "
        f"structure: {os.strerror(e.errno or 0)} (os error {e.errno}). Invalid TUN/TAP Backend provided "
        f"by {name}. Check our documentation on setting up the network devices."
    )


class Tap:
    """One open tap interface (non-blocking fd, vnet header on)."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self.offload_flags: int | None = None

    @classmethod
    def open(cls, name: str) -> Tap:
        raw = name.encode()
        if not raw or len(raw) >= IFNAMSIZ:
            raise TapError(
                "Could not create the network device: Open tap device failed: Invalid interface name"
            )
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise TapError(
                f"Could not create the network device: Open tap device failed: Couldn't open /dev/net/tun: "
                f"{e.strerror} (os error {e.errno})"
            ) from None
        try:
            try:
                fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(raw, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
            except OSError as e:
                raise _open_failure(name, e) from None
            try:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
            except OSError as e:
                raise TapError(
                    f"Could not create the network device: Open tap device failed: Error while setting size "
                    f"of the vnet header: {e.strerror} (os error {e.errno})"
                ) from None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, name)

    def set_offload(self, flags: int) -> None:
        """TUNSETOFFLOAD: which offloaded (GSO / partial-checksum) frames the tap may hand us."""
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)
        except OSError as e:
            raise TapError(f"Error while setting the offload flags: {e.strerror} (os error {e.errno})") from None
        self.offload_flags = flags

    def readv(self, buffers: list[memoryview]) -> int:
        """One frame (vnet header first) into ``buffers``; BlockingIOError when none is queued."""
        return os.readv(self.fd, buffers)

    def writev(self, buffers: list[memoryview]) -> int:
        return os.writev(self.fd, buffers)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


__all__ = [
    "IFF_NO_PI",
    "IFF_TAP",
    "IFF_VNET_HDR",
    "TUN_F_CSUM",
    "TUN_F_TSO4",
    "TUN_F_TSO6",
    "TUN_F_UFO",
    "Tap",
    "TapError",
    "VNET_HDR_SIZE",
]
