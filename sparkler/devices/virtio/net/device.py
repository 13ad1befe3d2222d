"""virtio-net device (virtio 1.2 section 5.1) on a tap, with Firecracker's feature set (catalog 5.2).

Two queues of 256: RX (0) and TX (1); no control queue, no multiqueue, no STATUS. Features offered:
CSUM, GUEST_CSUM, GUEST_TSO4/6, GUEST_UFO, HOST_TSO4/6, HOST_UFO, MRG_RXBUF, RING_EVENT_IDX and
VERSION_1; MAC when a guest MAC is configured; MTU when an MTU is. Config space: ``mac[6]``,
``status`` (unused), ``max_virtqueue_pairs`` (unused), ``mtu``.

Every frame carries the 12-byte ``virtio_net_hdr_v1`` in front of the Ethernet frame, in guest
buffers and on the tap alike (TUNSETVNETHDRSZ 12), so headers pass through unchanged and no byte
is copied in Python:

* **TX**: the readable buffers of a chain are handed to ``writev`` on the tap as memoryviews of
  guest RAM. A chain shorter than the header or longer than 65,562 bytes is dropped
  (``tx_malformed_frames``); the kernel validates the vnet header itself, so a bad header is a
  failed write (``tap_write_fails``), never an exception. Frames whose source MAC differs from
  the configured one are counted (``tx_spoofed_mac_count``) and sent.
* **RX**: ``readv`` from the tap straight into the writable buffers of the guest's RX chains. With
  MRG_RXBUF one frame may fill several chains: the device gathers chains until they can hold the
  largest frame the guest negotiated (65,562 bytes with any GUEST_TSO/UFO, else MTU + 30), reads,
  writes ``num_buffers`` into the header and returns the unused chains to its own cache for the
  next frame. When the guest has no buffers, the device stops polling the tap (the frames wait in
  the tap's queue, where the kernel drops them when it is full) and resumes on the next RX kick.

MMDS: when the interface has an MMDS stack, every guest TX frame (without the vnet header) first
goes to ``mmds_stack.detour_frame(frame)``; consumed frames never reach the tap. Frames the stack
has pending are delivered to the guest before tap frames.

Rate limiters (RX and TX independent): each frame costs one op and its length in bytes (vnet
header included). A throttled TX chain stays in the ring; a throttled RX frame that was already
read stays in the guest's buffers, unpublished, until the limiter's timer fires. While RX is
throttled the tap is not polled.

Host-side threading: ``queue_notify``, the tap callback and the timer run on the VMM thread; MMIO
(activation, reset) comes from vCPU threads. All take ``self.lock``. The tap is registered with
the event loop only from the VMM thread (RX kicks and callbacks), so a reset merely makes the next
callback unregister it.
"""

from __future__ import annotations

import errno
import struct
from collections import deque
from dataclasses import dataclass, fields, make_dataclass
from typing import Any

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.device import VirtioDevice
from sparkler.devices.virtio.queue import DescriptorChain, Queue
from sparkler.errors import GuestFault, SparklerError
from sparkler.ratelimit import RateLimiter, TokenType

QUEUE_SIZE = 256
RX_INDEX = 0
TX_INDEX = 1
NUM_QUEUES = 2

VNET_HDR_SIZE = spec.VIRTIO_NET_HDR_V1_SIZE
ETH_HLEN = 14
MAX_BUFFER_SIZE = 65562  # Firecracker's: 64 KiB + vnet header + Ethernet header
DEFAULT_MTU = 1500
_VLAN_HLEN = 4
# MMDS frames are at most MTU-sized (its TCP MSS is 536): what an RX read for one must hold.
MMDS_FRAME_CAPACITY = VNET_HDR_SIZE + ETH_HLEN + _VLAN_HLEN + DEFAULT_MTU
_NUM_BUFFERS_OFFSET = 10  # le16 num_buffers, the last field of virtio_net_hdr_v1
_IOV_MAX = 1024
_READ_EVENT = 1  # selectors.EVENT_READ

_CONFIG = struct.Struct("<6sHHH")  # mac, status, max_virtqueue_pairs, mtu

OFFERED = (
    spec.VIRTIO_NET_F_CSUM,
    spec.VIRTIO_NET_F_GUEST_CSUM,
    spec.VIRTIO_NET_F_GUEST_TSO4,
    spec.VIRTIO_NET_F_GUEST_TSO6,
    spec.VIRTIO_NET_F_GUEST_UFO,
    spec.VIRTIO_NET_F_HOST_TSO4,
    spec.VIRTIO_NET_F_HOST_TSO6,
    spec.VIRTIO_NET_F_HOST_UFO,
    spec.VIRTIO_NET_F_MRG_RXBUF,
    spec.VIRTIO_RING_F_EVENT_IDX,
)

# guest feature -> TUN_F_* offload (<linux/if_tun.h>): what the tap may hand the guest.
_OFFLOADS = (
    (spec.VIRTIO_NET_F_GUEST_CSUM, 0x01),  # TUN_F_CSUM
    (spec.VIRTIO_NET_F_GUEST_TSO4, 0x02),  # TUN_F_TSO4
    (spec.VIRTIO_NET_F_GUEST_TSO6, 0x04),  # TUN_F_TSO6
    (spec.VIRTIO_NET_F_GUEST_UFO, 0x10),  # TUN_F_UFO
)
_GSO_GUEST = (spec.VIRTIO_NET_F_GUEST_TSO4, spec.VIRTIO_NET_F_GUEST_TSO6, spec.VIRTIO_NET_F_GUEST_UFO)


@dataclass
class NetCounters:
    """Cumulative per-interface counters (Firecracker's ``net_<iface_id>`` metric names)."""

    activate_fails: int = 0
    cfg_fails: int = 0
    no_rx_avail_buffer: int = 0
    no_tx_avail_buffer: int = 0
    event_fails: int = 0
    rx_queue_event_count: int = 0
    rx_event_rate_limiter_count: int = 0
    rx_rate_limiter_throttled: int = 0
    rx_tap_event_count: int = 0
    rx_bytes_count: int = 0
    rx_packets_count: int = 0
    rx_fails: int = 0
    rx_count: int = 0
    tap_read_fails: int = 0
    tap_write_fails: int = 0
    tx_bytes_count: int = 0
    tx_malformed_frames: int = 0
    tx_fails: int = 0
    tx_count: int = 0
    tx_packets_count: int = 0
    tx_queue_event_count: int = 0
    tx_rate_limiter_event_count: int = 0
    tx_rate_limiter_throttled: int = 0
    tx_spoofed_mac_count: int = 0
    tx_remaining_reqs_count: int = 0


NetStatistics = make_dataclass(
    "NetStatistics", [(f.name, int, f.default) for f in fields(NetCounters)], frozen=True
)


@dataclass
class _RxSlot:
    """A popped RX chain the device holds: its head, the writable buffers and their capacity."""

    head: int
    views: list[memoryview]
    capacity: int


class NetDevice(VirtioDevice):
    device_type = spec.VIRTIO_ID_NET
    metrics_group = "net"  # metrics: "net_<iface_id>" groups plus the "net" aggregate

    def __init__(
        self,
        iface_id: str,
        tap: Any,
        guest_mac: bytes | None = None,
        mtu: int | None = None,
        rx_rate_limiter: RateLimiter | None = None,
        tx_rate_limiter: RateLimiter | None = None,
        mmds_stack: Any = None,
    ) -> None:
        features = 0
        for bit in OFFERED:
            features |= 1 << bit
        if guest_mac is not None:
            features |= 1 << spec.VIRTIO_NET_F_MAC
        if mtu is not None:
            features |= 1 << spec.VIRTIO_NET_F_MTU
        config = _CONFIG.pack(guest_mac or bytes(6), 0, 0, mtu or 0)
        super().__init__(features, [Queue(QUEUE_SIZE) for _ in range(NUM_QUEUES)], config)
        self.iface_id = iface_id
        self.tap = tap
        self.guest_mac = guest_mac
        self.mtu = mtu
        self.rx_rate_limiter = rx_rate_limiter
        self.tx_rate_limiter = tx_rate_limiter
        self.mmds_stack = mmds_stack
        self.counters = NetCounters()
        self._host: Any = None
        self._tap_polled = False
        self._rx_slots: deque[_RxSlot] = deque()
        self._rx_deferred: tuple[list[_RxSlot], int] | None = None  # read but not yet charged
        self._mmds_scratch: bytearray | None = None

    @property
    def metrics_id(self) -> str:
        return self.iface_id

    def statistics(self):  # noqa: ANN201 - NetStatistics (a make_dataclass type)
        return NetStatistics(**{f.name: getattr(self.counters, f.name) for f in fields(NetCounters)})

    # --- life cycle -----------------------------------------------------------------------------
    def on_activate(self) -> None:
        flags = 0
        for bit, tun_flag in _OFFLOADS:
            if self.has_feature(bit):
                flags |= tun_flag
        try:
            self.tap.set_offload(flags)
        except (OSError, SparklerError) as e:  # a host failure: the device runs without offloads
            self.counters.activate_fails += 1
            self.report_error(f"net {self.iface_id}: {e}")

    def on_reset(self) -> None:
        self._rx_slots.clear()
        self._rx_deferred = None

    @property
    def rx_frame_capacity(self) -> int:
        """Bytes (vnet header included) an RX read must be able to take for the largest frame."""
        if any(self.has_feature(bit) for bit in _GSO_GUEST):
            return MAX_BUFFER_SIZE
        return VNET_HDR_SIZE + ETH_HLEN + _VLAN_HLEN + max(self.mtu or DEFAULT_MTU, DEFAULT_MTU)

    # --- host side ------------------------------------------------------------------------------
    def attach_host(self, host: Any) -> None:
        self._host = host

    def _poll_tap(self, wanted: bool) -> None:
        """Register (or drop) the tap's READ interest with the event loop, on the VMM thread."""
        if self._host is None or wanted == self._tap_polled:
            return
        if wanted:
            self._host.add_fd(self.tap.fd, self._on_tap_readable, _READ_EVENT)
        else:
            self._host.remove_fd(self.tap.fd)
        self._tap_polled = wanted

    def _on_tap_readable(self, _mask: int) -> None:
        with self.lock:
            self.counters.rx_tap_event_count += 1
            if not self.is_activated or self.broken:
                self._poll_tap(False)
                return
            self._guarded(self._process_rx)

    def _guarded(self, work: Any) -> None:
        try:
            work()
        except GuestFault as fault:
            self.counters.event_fails += 1
            self._poll_tap(False)
            self.mark_broken(str(fault))

    def timer_deadline_ns(self) -> int | None:
        deadlines = [
            rl.timer_deadline_ns
            for rl in (self.rx_rate_limiter, self.tx_rate_limiter)
            if rl is not None and rl.timer_deadline_ns is not None
        ]
        return min(deadlines) if deadlines else None

    def process_rate_limiter_event(self) -> None:
        import time

        now = time.monotonic_ns()
        with self.lock:
            rx, tx = self.rx_rate_limiter, self.tx_rate_limiter
            rx_fired = rx is not None and rx.timer_deadline_ns is not None and rx.timer_deadline_ns <= now
            tx_fired = tx is not None and tx.timer_deadline_ns is not None and tx.timer_deadline_ns <= now
            if rx_fired:
                rx.on_timer()  # type: ignore[union-attr]
                self.counters.rx_event_rate_limiter_count += 1
            if tx_fired:
                tx.on_timer()  # type: ignore[union-attr]
                self.counters.tx_rate_limiter_event_count += 1
            if not self.is_activated or self.broken:
                return
            if tx_fired:
                self._guarded(self._process_tx)
            if rx_fired:
                self._guarded(self._process_rx)

    def update_rate_limiters(self, rx: Any, tx: Any) -> None:
        """PATCH: ``rx``/``tx`` are callables applying the change to a limiter (or None: unchanged)."""
        with self.lock:
            if rx is not None:
                self.rx_rate_limiter = rx(self.rx_rate_limiter)
            if tx is not None:
                self.tx_rate_limiter = tx(self.tx_rate_limiter)

    def close(self) -> None:
        with self.lock:
            self._poll_tap(False)
            self.tap.close()

    # --- queue kicks ----------------------------------------------------------------------------
    def queue_notify(self, index: int) -> None:
        with self.lock:
            if index == RX_INDEX:
                self.counters.rx_queue_event_count += 1
            elif index == TX_INDEX:
                self.counters.tx_queue_event_count += 1
            super().queue_notify(index)

    def on_queue_fault(self) -> None:
        self.counters.event_fails += 1
        self._poll_tap(False)

    def process_queue(self, index: int) -> None:
        if index == RX_INDEX:
            self._process_rx()
        else:
            self._process_tx()

    # --- TX -------------------------------------------------------------------------------------
    def _process_tx(self) -> None:
        queue = self.queues[TX_INDEX]
        memory = self.memory
        assert memory is not None
        limiter = self.tx_rate_limiter
        done = 0
        to_mmds = False
        while True:
            if limiter is not None and limiter.is_blocked:
                self.counters.tx_rate_limiter_throttled += 1
                break
            chain = queue.pop_or_enable_notification()
            if chain is None:
                if done == 0:
                    self.counters.no_tx_avail_buffer += 1
                break
            buffers = chain.readable()
            length = sum(d.len for d in buffers)
            if length < VNET_HDR_SIZE or length > MAX_BUFFER_SIZE:
                self.counters.tx_malformed_frames += 1
                queue.add_used(chain.head, 0)
                done += 1
                continue
            if limiter is not None and not _charge(limiter, length):
                queue.undo_pop()
                self.counters.tx_rate_limiter_throttled += 1
                break
            views = [memory.slice(d.addr, d.len) for d in buffers if d.len]
            self._send(views, length)
            if self.mmds_stack is not None and self.mmds_stack.has_pending():
                to_mmds = True
            queue.add_used(chain.head, 0)
            done += 1
        if done:
            self.counters.tx_count += 1
            self.signal_used_queue(TX_INDEX)
        if to_mmds:
            self._process_rx()

    def _send(self, views: list[memoryview], length: int) -> None:
        head = _gather(views, 0, VNET_HDR_SIZE + ETH_HLEN)
        if self.mmds_stack is not None and len(head) >= VNET_HDR_SIZE + ETH_HLEN:
            frame = b"".join(views)[VNET_HDR_SIZE:]
            try:
                consumed = self.mmds_stack.detour_frame(frame)
            except Exception as e:  # noqa: BLE001 - an MMDS bug must not take the interface down
                self.report_error(f"net {self.iface_id}: MMDS stack failed on a frame: {e!r}")
                consumed = True
            if consumed:
                self.counters.tx_packets_count += 1
                return
        if (
            self.guest_mac is not None
            and len(head) >= VNET_HDR_SIZE + ETH_HLEN
            and head[VNET_HDR_SIZE + 6 : VNET_HDR_SIZE + 12] != self.guest_mac
        ):
            self.counters.tx_spoofed_mac_count += 1
        try:
            self.tap.writev(views)
        except OSError:
            # EINVAL for a vnet header the kernel refuses, EIO when the tap is down, ENOBUFS,
            # EAGAIN: the frame is dropped, as on a real NIC.
            self.counters.tap_write_fails += 1
            self.counters.tx_fails += 1
            return
        self.counters.tx_packets_count += 1
        self.counters.tx_bytes_count += length

    # --- RX -------------------------------------------------------------------------------------
    def _process_rx(self) -> None:
        limiter = self.rx_rate_limiter
        delivered = 0
        want_tap = False
        while True:
            if self._rx_deferred is not None:
                slots, n = self._rx_deferred
                if limiter is not None and not _charge(limiter, n):
                    self.counters.rx_rate_limiter_throttled += 1
                    break
                self._rx_deferred = None
                self._publish(slots, n)
                delivered += 1
                continue
            if limiter is not None and limiter.is_blocked:
                self.counters.rx_rate_limiter_throttled += 1
                break
            if self.mmds_stack is not None and self.mmds_stack.has_pending():
                result = self._rx_from_mmds()
                if result is None:
                    break  # no guest buffer
                delivered += result
                continue
            slots = self._take_rx_slots(self.rx_frame_capacity)
            if slots is None:
                self.counters.no_rx_avail_buffer += 1
                break
            iov = [v for slot in slots for v in slot.views]
            try:
                n = self.tap.readv(iov)
            except BlockingIOError:
                self._rx_slots.extendleft(reversed(slots))
                want_tap = True  # drained: wait for the next frame
                break
            except OSError as e:
                self._rx_slots.extendleft(reversed(slots))
                self.counters.tap_read_fails += 1
                if e.errno in (errno.EAGAIN, errno.EINTR):
                    want_tap = True
                    break
                # EBADFD/EIO: the tap is gone or down; stop polling until the next kick
                break
            if n < VNET_HDR_SIZE:
                self._rx_slots.extendleft(reversed(slots))
                self.counters.rx_fails += 1
                continue
            if limiter is not None and not _charge(limiter, n):
                self._rx_deferred = (slots, n)
                self.counters.rx_rate_limiter_throttled += 1
                break
            self._publish(slots, n)
            delivered += 1
        self._poll_tap(want_tap)
        if delivered:
            self.counters.rx_count += 1
            self.signal_used_queue(RX_INDEX)

    def _take_rx_slots(self, needed: int) -> list[_RxSlot] | None:
        """Chains (the device's cached ones first) that together hold ``needed`` bytes, or None.

        Without MRG_RXBUF one chain takes one frame whatever its size. Chains the frame does not
        need stay cached for the next one.
        """
        queue = self.queues[RX_INDEX]
        memory = self.memory
        assert memory is not None
        merge = self.has_feature(spec.VIRTIO_NET_F_MRG_RXBUF)
        taken: list[_RxSlot] = []
        capacity = 0
        iovs = 0
        while True:
            if self._rx_slots:
                slot = self._rx_slots.popleft()
            else:
                chain = queue.pop_or_enable_notification()
                if chain is None:
                    self._rx_slots.extendleft(reversed(taken))
                    return None
                slot = self._slot(chain)
                if slot is None:
                    continue
            if iovs + len(slot.views) > _IOV_MAX:
                self._rx_slots.appendleft(slot)
                return taken if taken else None
            taken.append(slot)
            capacity += slot.capacity
            iovs += len(slot.views)
            if not merge or capacity >= needed:
                return taken

    def _slot(self, chain: DescriptorChain) -> _RxSlot | None:
        """An RX chain as a slot; a chain the device cannot write a header into is returned empty."""
        memory = self.memory
        assert memory is not None
        views = [memory.slice(d.addr, d.len) for d in chain.writable() if d.len]
        capacity = sum(len(v) for v in views)
        if capacity < VNET_HDR_SIZE or len(chain.readable()):
            self.counters.rx_fails += 1
            self.queues[RX_INDEX].add_used(chain.head, 0)
            return None
        return _RxSlot(chain.head, views, capacity)

    def _publish(self, slots: list[_RxSlot], n: int) -> None:
        """Return the chains a frame of ``n`` bytes filled, with num_buffers in its header; the
        chains it did not need go back to the front of the cache, in order."""
        queue = self.queues[RX_INDEX]
        remaining = n
        used: list[tuple[int, int]] = []
        for slot in slots:
            if remaining <= 0:
                break
            take = min(slot.capacity, remaining)
            used.append((slot.head, take))
            remaining -= take
        self._rx_slots.extendleft(reversed(slots[len(used) :]))
        _scatter(slots[0].views, _NUM_BUFFERS_OFFSET, struct.pack("<H", len(used)))
        for head, take in used:
            queue.add_used(head, take)
        self.counters.rx_packets_count += 1
        self.counters.rx_bytes_count += n

    def _rx_from_mmds(self) -> int | None:
        """Deliver one pending MMDS frame: 1, or 0 when none was written; None: no guest buffer."""
        stack = self.mmds_stack
        slots = self._take_rx_slots(MMDS_FRAME_CAPACITY)
        if slots is None:
            self.counters.no_rx_avail_buffer += 1
            return None
        if self._mmds_scratch is None:
            self._mmds_scratch = bytearray(MAX_BUFFER_SIZE - VNET_HDR_SIZE)
        room = min(sum(s.capacity for s in slots) - VNET_HDR_SIZE, len(self._mmds_scratch))
        scratch = memoryview(self._mmds_scratch)[:room]
        try:
            length = stack.write_next_frame(scratch)
            pending = stack.has_pending()
        except Exception as e:  # noqa: BLE001 - an MMDS bug must not take the interface down
            self.report_error(f"net {self.iface_id}: MMDS stack failed writing a frame: {e!r}")
            length, pending = None, False
            self.mmds_stack = None
        if not length:
            if pending:  # the frame does not fit this chain: the chain goes back empty
                self.counters.rx_fails += 1
                self.queues[RX_INDEX].add_used(slots[0].head, 0)
                slots = slots[1:]
            self._rx_slots.extendleft(reversed(slots))
            return 0
        iov = [v for s in slots for v in s.views]
        _scatter(iov, 0, bytes(VNET_HDR_SIZE))
        _scatter(iov, VNET_HDR_SIZE, scratch[:length])
        self._publish(slots, VNET_HDR_SIZE + length)
        return 1


def _charge(limiter: RateLimiter, length: int) -> bool:
    """One op, then ``length`` bytes; the op is given back when the bytes are refused."""
    if not limiter.consume(1, TokenType.OPS):
        return False
    if not limiter.consume(length, TokenType.BYTES):
        limiter.manual_replenish(1, TokenType.OPS)
        return False
    return True


def _gather(views: list[memoryview], offset: int, length: int) -> bytes:
    """Bytes ``[offset, offset + length)`` of the concatenation of ``views`` (fewer at the end)."""
    out = bytearray()
    for v in views:
        if offset >= len(v):
            offset -= len(v)
            continue
        out += v[offset : offset + length - len(out)]
        offset = 0
        if len(out) >= length:
            break
    return bytes(out)


def _scatter(views: list[memoryview], offset: int, data: bytes | memoryview) -> None:
    """Write ``data`` at ``offset`` of the concatenation of ``views`` (as far as they reach)."""
    pos = 0
    for v in views:
        if offset >= len(v):
            offset -= len(v)
            continue
        chunk = min(len(v) - offset, len(data) - pos)
        v[offset : offset + chunk] = data[pos : pos + chunk]
        pos += chunk
        offset = 0
        if pos >= len(data):
            break


__all__ = ["MAX_BUFFER_SIZE", "NetCounters", "NetDevice", "NetStatistics", "RX_INDEX", "TX_INDEX"]
