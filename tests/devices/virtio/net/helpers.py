"""A guest virtio-net driver in miniature and a tap stand-in, for the net device tests."""

from __future__ import annotations

import os
import socket

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.mmio import MmioTransport
from sparkler.devices.virtio.net.device import NetDevice
from sparkler.testing.fake_memory import guest_memory
from sparkler.testing.mock_driver import MmioDriver, MockDriver, readable, writable
from tests.devices.virtio.helpers import counting_irq

MEM_SIZE = 8 << 20
RX_RING = 0x1000
TX_RING = 0x8000
RX_BUFS = 0x100000
TX_BUFS = 0x400000
HDR = spec.VIRTIO_NET_HDR_V1_SIZE
MAC = bytes.fromhex("02aabbccdd01")


class FakeTap:
    """A datagram socketpair: frame boundaries kept, like a tap; ``peer`` is the host's side."""

    def __init__(self) -> None:
        self.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.peer.setblocking(False)
        self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.fd = self.sock.fileno()
        self.offload_flags: int | None = None

    def set_offload(self, flags: int) -> None:
        self.offload_flags = flags

    def readv(self, buffers):  # noqa: ANN001, ANN201
        return os.readv(self.fd, buffers)

    def writev(self, buffers):  # noqa: ANN001, ANN201
        return os.writev(self.fd, buffers)

    def close(self) -> None:
        self.sock.close()
        self.peer.close()

    # host side
    def host_send(self, data: bytes) -> None:
        self.peer.send(data)

    def host_recv_all(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.peer.recv(1 << 17))
            except BlockingIOError:
                return out


class FakeHost:
    """DeviceHost stand-in: remembers the registered fds."""

    def __init__(self) -> None:
        self.fds: dict[int, object] = {}

    def add_fd(self, fd, callback, events=1):  # noqa: ANN001, ANN201
        assert fd not in self.fds
        self.fds[fd] = callback

    def modify_fd(self, fd, events, callback=None):  # noqa: ANN001, ANN201
        pass

    def remove_fd(self, fd):  # noqa: ANN001, ANN201
        self.fds.pop(fd, None)

    def fire(self, fd: int) -> bool:
        cb = self.fds.get(fd)
        if cb is None:
            return False
        cb(1)
        return True


def frame(payload: bytes = b"hello", src: bytes = MAC, dst: bytes = b"\xff" * 6, ethertype: int = 0x88B5) -> bytes:
    return dst + src + ethertype.to_bytes(2, "big") + payload


class NetRig:
    def __init__(self, *, features=None, probe=True, tap=None, **kwargs) -> None:  # noqa: ANN001
        self.memory = guest_memory(MEM_SIZE)
        self.tap = tap if tap is not None else FakeTap()
        kwargs.setdefault("guest_mac", MAC)
        self.device = NetDevice("eth0", self.tap, **kwargs)
        self.host = FakeHost()
        self.device.attach_host(self.host)
        self.irq, self.line = counting_irq()
        self.transport = MmioTransport(self.device, self.memory, self.irq)
        self.mmio = MmioDriver(self.transport)
        self.rx = MockDriver(self.memory, RX_RING, 256)
        self.tx = MockDriver(self.memory, TX_RING, 256)
        self.rx_next = RX_BUFS
        self.tx_next = TX_BUFS
        self.rx_heads: dict[int, int] = {}
        if probe:
            status = self.mmio.probe([self.rx, self.tx], features)
            assert status & spec.VIRTIO_CONFIG_S_DRIVER_OK

    def close(self) -> None:
        self.device.close()
        self.memory.close()

    def add_rx(self, size: int = 2048, count: int = 1, kick: bool = True) -> None:
        for _ in range(count):
            head = self.rx.add_chain([writable(self.rx_next, size)])
            self.rx_heads[head] = self.rx_next
            self.rx_next += size
        if kick:
            self.device.queue_notify(0)

    def send(self, data: bytes, hdr: bytes = bytes(HDR), split: int | None = None, kick: bool = True) -> int:
        gpa = self.tx_next
        whole = hdr + data
        self.memory.write(gpa, whole)
        self.tx_next += len(whole) + 64
        if split is None:
            bufs = [readable(gpa, len(whole))]
        else:
            bufs = [readable(gpa, split), readable(gpa + split, len(whole) - split)]
        head = self.tx.add_chain(bufs)
        if kick:
            self.device.queue_notify(1)
        return head

    def received(self) -> list[bytes]:
        """Frames the device put in RX chains (vnet header included), merging num_buffers."""
        out = []
        used = self.rx.take_used()
        i = 0
        while i < len(used):
            head, length = used[i]
            data = self.memory.read(self.rx_heads[head], length)
            if length >= HDR:
                nbuf = int.from_bytes(data[10:12], "little")
                for j in range(1, nbuf):
                    h, n = used[i + j]
                    data += self.memory.read(self.rx_heads[h], n)
                i += max(nbuf, 1)
            else:
                i += 1
            out.append(data)
        return out

    def pump_tap(self) -> None:
        """What the event loop does while the tap is readable."""
        while self.host.fire(self.tap.fd):
            if not self.host.fds:
                break
            if not _readable(self.tap.fd):
                break


def _readable(fd: int) -> bool:
    import select

    r, _, _ = select.select([fd], [], [], 0)
    return bool(r)
