"""A guest virtio-vsock driver in miniature and a real event loop, for the vsock tests."""

from __future__ import annotations

import socket
import time

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.mmio import MmioTransport
from sparkler.devices.virtio.vsock import packet as P
from sparkler.devices.virtio.vsock.device import RX_QUEUE, TX_QUEUE, VsockDevice
from sparkler.testing.fake_memory import guest_memory
from sparkler.testing.mock_driver import MmioDriver, MockDriver, readable, writable
from sparkler.vmm.event_loop import DeviceHost, EventLoop
from tests.devices.virtio.helpers import counting_irq

GUEST_CID = 3
HOST_CID = 2
QSIZE = 64
MEM_SIZE = 16 << 20
RINGS = (0x1000, 0x4000, 0x7000)
RX_BUFS = 0x100000  # RX buffers, RX_BUF_SIZE each
TX_BUFS = 0x800000  # TX packets, TX_BUF_SIZE each
RX_BUF_SIZE = P.HDR_SIZE + 64 * 1024
TX_BUF_SIZE = P.HDR_SIZE + 64 * 1024
EVENTS = 0xF00000


def hdr(op: int, src_port: int, dst_port: int, length: int = 0, *, flags: int = 0, buf_alloc: int = 256 * 1024,
        fwd_cnt: int = 0, src_cid: int = GUEST_CID, dst_cid: int = HOST_CID,
        type_: int = P.VIRTIO_VSOCK_TYPE_STREAM) -> P.Header:
    return P.Header(src_cid, dst_cid, src_port, dst_port, length, type_, op, flags, buf_alloc, fwd_cnt)


class VsockRig:
    """Device + MMIO transport + three mock queues + the VMM's event loop."""

    def __init__(self, uds_path: str, *, split_rx: bool = False, clock_ns=time.monotonic_ns) -> None:
        from sparkler.devices.virtio.vsock.device import VsockCounters
        from sparkler.devices.virtio.vsock.muxer import VsockMuxer

        self.memory = guest_memory(MEM_SIZE)
        self.uds_path = uds_path
        muxer = VsockMuxer(GUEST_CID, uds_path, VsockCounters(), clock_ns=clock_ns)
        self.device = VsockDevice(GUEST_CID, uds_path, muxer=muxer)
        self.irq, self.line = counting_irq()
        self.transport = MmioTransport(self.device, self.memory, self.irq)
        self.mmio = MmioDriver(self.transport)
        self.queues = [MockDriver(self.memory, base, QSIZE) for base in RINGS]
        self.loop = EventLoop()
        self.device.attach_host(DeviceHost(self.loop, lambda: None))
        self.split_rx = split_rx
        self._rx_slot = 0
        self._tx_slot = 0
        self.rx_heads: dict[int, int] = {}
        assert self.mmio.probe(self.queues, features=1 << spec.VIRTIO_F_VERSION_1) & spec.VIRTIO_CONFIG_S_DRIVER_OK

    def close(self) -> None:
        self.device.close()
        self.loop.close()
        self.memory.close()

    # --- guest side -----------------------------------------------------------------------------
    def post_rx(self, count: int = 1) -> None:
        for _ in range(count):
            slot = self._rx_slot % QSIZE
            self._rx_slot += 1
            gpa = RX_BUFS + slot * RX_BUF_SIZE
            if self.split_rx:
                chain = [writable(gpa, P.HDR_SIZE), writable(gpa + P.HDR_SIZE, RX_BUF_SIZE - P.HDR_SIZE)]
            else:
                chain = [writable(gpa, RX_BUF_SIZE)]
            head = self.queues[RX_QUEUE].add_chain(chain)
            self.rx_heads[head] = gpa
        self.mmio.kick(RX_QUEUE)

    def send(self, header: P.Header, payload: bytes = b"", *, split: bool = True) -> None:
        slot = self._tx_slot % QSIZE
        self._tx_slot += 1
        gpa = TX_BUFS + slot * TX_BUF_SIZE
        self.memory.write(gpa, header.pack() + payload)
        if split and payload:
            chain = [readable(gpa, P.HDR_SIZE), readable(gpa + P.HDR_SIZE, len(payload))]
        else:
            chain = [readable(gpa, P.HDR_SIZE + len(payload))]
        self.queues[TX_QUEUE].add_chain(chain)
        self.mmio.kick(TX_QUEUE)
        assert not self.device.broken, self.device.broken_reason

    def send_raw(self, buffers) -> None:
        self.queues[TX_QUEUE].add_chain(buffers)
        self.mmio.kick(TX_QUEUE)

    def received(self) -> list[tuple[P.Header, bytes]]:
        out = []
        for head, used_len in self.queues[RX_QUEUE].take_used():
            gpa = self.rx_heads.pop(head)
            if used_len < P.HDR_SIZE:
                out.append((None, b""))
                continue
            header = P.Header.unpack(self.memory.read(gpa, P.HDR_SIZE))
            out.append((header, self.memory.read(gpa + P.HDR_SIZE, header.len)))
        return out

    # --- host side ------------------------------------------------------------------------------
    def pump(self, seconds: float = 0.05) -> None:
        """Serve host socket events for a while."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            self.loop.run_once(min(left, 0.01))
            deadline = self.device.timer_deadline_ns()
            if deadline is not None and time.monotonic_ns() >= deadline:
                self.device.process_rate_limiter_event()

    def pump_until(self, predicate, seconds: float = 5.0):
        end = time.monotonic() + seconds
        got = []
        while time.monotonic() < end:
            self.pump(0.01)
            got += self.received()
            if predicate(got):
                return got
            self.post_rx(max(0, 8 - self.pending_rx()))
        raise AssertionError(f"condition not met; received {[(h.describe() if h else None) for h, _ in got]}")

    def pending_rx(self) -> int:
        return len(self.rx_heads)

    def host_connect(self, port: int) -> socket.socket:
        """A host program connecting to the guest's ``port`` through uds_path."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.uds_path)
        s.sendall(f"CONNECT {port}\n".encode())
        return s
