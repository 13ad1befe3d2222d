"""virtio-vsock device (virtio 1.2 section 5.10) with Firecracker's host side (catalog 5.3).

Three queues of 256 entries: RX (device -> driver packets), TX (driver -> device packets) and
the event queue (``virtio_vsock_event``; the only event is TRANSPORT_RESET). Features:
VIRTIO_F_VERSION_1, VIRTIO_F_IN_ORDER (buffers are used in the order they were made available)
and VIRTIO_RING_F_EVENT_IDX. Config space: ``le64 guest_cid``. Host CID is 2; stream sockets only.

Work happens on the VMM thread, under ``device.lock``:

* a TX kick drains the TX queue: each chain is parsed (``packet.py``), its CIDs checked (source
  must be the guest's CID, destination the host's; otherwise the packet is dropped, as
  Firecracker does) and handed to the muxer; the chain is returned with nothing written;
* an RX kick, or a host socket event the muxer served, fills RX buffers while the muxer has
  packets for the guest; when the guest has no buffer posted the muxer simply waits (it stops
  polling streams it cannot deliver, so host data stays in the host's socket buffers);
* the connect/shutdown timeouts ride on the device's timer (``timer_deadline_ns``).

A chain that is not a packet (too short, wrong direction, ``len`` beyond the buffer or 64 KiB) is
returned unused and counted (``tx_queue_event_fails`` / ``rx_queue_event_fails``); only ring
corruption (the queue's GuestFault) breaks the device.

TRANSPORT_RESET is what Firecracker sends after a snapshot is created or restored, so that the
guest drops its connections; Sparkler has no snapshots yet, so nothing sends it automatically.
:meth:`send_transport_reset` exists for that day (and the tests).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields, make_dataclass
from typing import Any

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.device import VirtioDevice
from sparkler.devices.virtio.queue import Queue
from sparkler.devices.virtio.vsock import packet as P
from sparkler.devices.virtio.vsock.muxer import VSOCK_HOST_CID, VsockMuxer
from sparkler.errors import GuestFault

QUEUE_SIZE = 256
RX_QUEUE = 0
TX_QUEUE = 1
EVENT_QUEUE = 2
NUM_QUEUES = 3

_CID = struct.Struct("<Q")
_EVENT = struct.Struct("<I")


@dataclass
class VsockCounters:
    """Cumulative counters with Firecracker's ``vsock`` metric names (catalog 8.2)."""

    activate_fails: int = 0
    cfg_fails: int = 0
    rx_queue_event_fails: int = 0
    tx_queue_event_fails: int = 0
    ev_queue_event_fails: int = 0
    muxer_event_fails: int = 0
    conn_event_fails: int = 0
    rx_queue_event_count: int = 0
    tx_queue_event_count: int = 0
    rx_bytes_count: int = 0
    tx_bytes_count: int = 0
    rx_packets_count: int = 0
    tx_packets_count: int = 0
    conns_added: int = 0
    conns_killed: int = 0
    conns_removed: int = 0
    killq_resync: int = 0
    tx_flush_fails: int = 0
    tx_write_fails: int = 0
    rx_read_fails: int = 0


VsockStatistics = make_dataclass(
    "VsockStatistics", [(f.name, int, f.default) for f in fields(VsockCounters)], frozen=True
)


class VsockDevice(VirtioDevice):
    device_type = spec.VIRTIO_ID_VSOCK

    def __init__(self, guest_cid: int, uds_path: str, *, muxer: VsockMuxer | None = None) -> None:
        features = (1 << spec.VIRTIO_F_IN_ORDER) | (1 << spec.VIRTIO_RING_F_EVENT_IDX)
        queues = [Queue(QUEUE_SIZE) for _ in range(NUM_QUEUES)]
        super().__init__(features, queues, _CID.pack(guest_cid))
        self.guest_cid = guest_cid
        self.uds_path = uds_path
        self.counters = VsockCounters()
        self.muxer = muxer if muxer is not None else VsockMuxer(guest_cid, uds_path, self.counters)
        self.muxer.counters = self.counters

    def statistics(self):  # noqa: ANN201 - VsockStatistics (a make_dataclass type)
        return VsockStatistics(**{f.name: getattr(self.counters, f.name) for f in fields(VsockCounters)})

    # --- host side ----------------------------------------------------------------------------
    def attach_host(self, host: Any) -> None:
        self.muxer.attach(host, self._after_host_event)

    def _after_host_event(self) -> None:
        with self.lock:
            if self.is_activated and not self.broken:
                self._guarded(self._fill_rx)

    def timer_deadline_ns(self) -> int | None:
        return self.muxer.deadline_ns()

    def process_rate_limiter_event(self) -> None:
        """The device timer fired: connection timeouts (connect, shutdown)."""
        with self.lock:
            self.muxer.process_timeouts()
            if self.is_activated and not self.broken:
                self._guarded(self._fill_rx)

    def _guarded(self, work: Any) -> None:
        try:
            work()
        except GuestFault as fault:
            self.mark_broken(str(fault))

    # --- queues -------------------------------------------------------------------------------
    def queue_notify(self, index: int) -> None:
        with self.lock:
            if index == RX_QUEUE:
                self.counters.rx_queue_event_count += 1
            elif index == TX_QUEUE:
                self.counters.tx_queue_event_count += 1
            super().queue_notify(index)

    def process_queue(self, index: int) -> None:
        if index == TX_QUEUE:
            self._process_tx()
            self._fill_rx()
        elif index == RX_QUEUE:
            self._fill_rx()
        # EVENT_QUEUE: the driver posted event buffers; they wait for a transport reset.

    def _process_tx(self) -> None:
        queue = self.queues[TX_QUEUE]
        memory = self.memory
        assert memory is not None
        used = 0
        while True:
            chain = queue.pop_or_enable_notification()
            if chain is None:
                break
            try:
                pkt = P.parse_tx(chain, memory)
            except P.BadPacket as bad:
                self.counters.tx_queue_event_fails += 1
                self.report_error(f"vsock: dropped a TX chain: {bad}")
                pkt = None
            if pkt is not None:
                self._send_to_host(pkt)
            queue.add_used(chain.head, 0)
            used += 1
        if used:
            self.signal_used_queue(TX_QUEUE)

    def _send_to_host(self, pkt: P.TxPacket) -> None:
        h = pkt.header
        if h.src_cid != self.guest_cid or h.dst_cid != VSOCK_HOST_CID:
            self.counters.tx_queue_event_fails += 1
            return  # spoofed source or a destination other than the host: dropped
        self.counters.tx_packets_count += 1
        if h.op == P.VIRTIO_VSOCK_OP_RW:
            self.counters.tx_bytes_count += h.len
        self.muxer.send_pkt(pkt)

    def _fill_rx(self) -> None:
        queue = self.queues[RX_QUEUE]
        memory = self.memory
        assert memory is not None
        used = 0
        while self.muxer.has_pending_rx:
            chain = queue.pop_or_enable_notification()
            if chain is None:
                break
            try:
                buf = P.parse_rx(chain, memory)
            except P.BadPacket as bad:
                self.counters.rx_queue_event_fails += 1
                self.report_error(f"vsock: returned an unusable RX chain: {bad}")
                queue.add_used(chain.head, 0)
                used += 1
                continue
            header = self.muxer.recv_pkt(buf)
            if header is None:
                queue.undo_pop()
                break
            queue.add_used(chain.head, P.HDR_SIZE + header.len)
            used += 1
            self.counters.rx_packets_count += 1
            self.counters.rx_bytes_count += header.len
        if used:
            self.signal_used_queue(RX_QUEUE)

    # --- events -------------------------------------------------------------------------------
    def send_transport_reset(self) -> bool:
        """Post VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (Firecracker: after snapshot create/restore)
        and drop every connection. False when the driver has no event buffer posted."""
        with self.lock:
            self.muxer.reset_connections()
            if not self.is_activated or self.broken:
                return False
            queue = self.queues[EVENT_QUEUE]
            memory = self.memory
            assert memory is not None
            try:
                chain = queue.pop()
                if chain is None:
                    return False
                writable = chain.writable()
                if not writable or writable[0].len < P.EVENT_SIZE:
                    self.counters.ev_queue_event_fails += 1
                    queue.add_used(chain.head, 0)
                    self.signal_used_queue(EVENT_QUEUE)
                    return False
                memory.write(writable[0].addr, _EVENT.pack(P.VIRTIO_VSOCK_EVENT_TRANSPORT_RESET))
                queue.add_used(chain.head, P.EVENT_SIZE)
                self.signal_used_queue(EVENT_QUEUE)
                return True
            except GuestFault as fault:
                self.mark_broken(str(fault))
                return False

    # --- life cycle ---------------------------------------------------------------------------
    def on_reset(self) -> None:
        """A driver reset drops every connection (their state lived in the old queues)."""
        self.muxer.reset_connections()

    def close(self) -> None:
        with self.lock:
            self.muxer.close()


__all__ = ["EVENT_QUEUE", "NUM_QUEUES", "RX_QUEUE", "TX_QUEUE", "VsockCounters", "VsockDevice"]
