"""One vsock stream connection between a guest port and a host Unix stream (Firecracker's csm).

States (``ConnState``) and what moves between them::

    LOCAL_INIT    host connected to uds_path and sent "CONNECT <port>\\n"; a REQUEST is pending
                  to the guest  --guest RESPONSE--> ESTABLISHED (the host reads "OK <port>\\n")
                                --guest RST / 2 s timeout--> closed (timeout: also RST)
    ESTABLISHED   data both ways; guest-initiated connections start here (RESPONSE pending)
                  --guest SHUTDOWN RCV|SEND--> PEER_CLOSED
                  --host stream EOF--> LOCAL_CLOSED (SHUTDOWN RCV|SEND pending to the guest)
    PEER_CLOSED   the guest will neither send nor receive: flush what it sent, then RST
    LOCAL_CLOSED  waiting for the guest's RST (2 s timeout, then RST from us)
    KILLED        an RST is pending to the guest; once it is delivered the connection is removed

A guest RST in any state removes the connection at once. Anything the guest does against the
protocol (data beyond the credit we granted, a stray REQUEST) kills the connection, never more.

Flow control (spec 5.10.6.3): each side advertises ``buf_alloc`` (its receive buffer) and
``fwd_cnt`` (bytes consumed from it) in every header. We grant the guest ``CONN_TX_BUF_SIZE`` =
64 KiB, so the bytes it may have in flight towards the host stream -- what we buffer when the
stream is slow (``tx_buf``) -- never exceed 64 KiB per connection; a guest that sends more is
killed. Towards the guest we read from the stream at most the guest's free credit
``peer_buf_alloc - (rx_cnt - peer_fwd_cnt)``; with no credit we stop polling the stream (so a guest
that never reads stalls only its own host peer) and ask for a CREDIT_UPDATE. We send a
CREDIT_UPDATE whenever 4 KiB more have been forwarded since the guest last heard our ``fwd_cnt``.

The connection does the stream I/O itself (the stream is a non-blocking ``socket``); the muxer
owns registration with the event loop (:meth:`interest`) and the mapping of ports to connections.
"""

from __future__ import annotations

import enum
import errno
import socket
from typing import Any

from sparkler.devices.virtio.vsock import packet as P

CONN_TX_BUF_SIZE = 64 * 1024
CONN_CREDIT_UPDATE_THRESHOLD = 4 * 1024
CONNECT_TIMEOUT_NS = 2_000_000_000
SHUTDOWN_TIMEOUT_NS = 2_000_000_000

READ = 1  # selectors.EVENT_READ
WRITE = 2  # selectors.EVENT_WRITE

U32 = 0xFFFF_FFFF


class ConnState(enum.Enum):
    LOCAL_INIT = "LocalInit"
    ESTABLISHED = "Established"
    PEER_CLOSED = "PeerClosed"
    LOCAL_CLOSED = "LocalClosed"
    KILLED = "Killed"


class Pending(enum.IntEnum):
    """Packets a connection wants to send to the guest, in the order they go out."""

    RST = 0
    REQUEST = 1
    RESPONSE = 2
    CREDIT_REQUEST = 3
    CREDIT_UPDATE = 4
    RW = 5
    SHUTDOWN = 6


class VsockConnection:
    def __init__(
        self,
        stream: socket.socket,
        *,
        local_port: int,
        peer_port: int,
        local_cid: int,
        peer_cid: int,
        state: ConnState,
        counters: Any,
        now_ns: int = 0,
    ) -> None:
        stream.setblocking(False)
        self.stream = stream
        self.local_port = local_port
        self.peer_port = peer_port
        self.local_cid = local_cid
        self.peer_cid = peer_cid
        self.state = state
        self.counters = counters
        self.pending: set[Pending] = set()
        self.tx_buf = bytearray()  # guest data not yet written to the stream (<= CONN_TX_BUF_SIZE)
        self.fwd_cnt = 0  # bytes of guest data written to the stream
        self.last_fwd_cnt_to_peer = 0
        self.rx_cnt = 0  # bytes sent to the guest
        self.peer_buf_alloc = 0
        self.peer_fwd_cnt = 0
        self.peer_shutdown = 0
        self.send_shut = False  # stream.shutdown(SHUT_WR) done
        self.stream_readable = False  # the stream reported readable and we have not drained it
        self.removed = False
        self.close_wanted = False
        self.deadline_ns: int | None = None
        if state is ConnState.LOCAL_INIT:
            self.pending.add(Pending.REQUEST)
            self.deadline_ns = now_ns + CONNECT_TIMEOUT_NS
        else:
            self.pending.add(Pending.RESPONSE)

    @property
    def key(self) -> tuple[int, int]:
        return self.local_port, self.peer_port

    # --- credit -------------------------------------------------------------------------------
    def peer_credit(self) -> int:
        """Bytes the guest can take now (its buffer minus what is in flight to it)."""
        in_flight = (self.rx_cnt - self.peer_fwd_cnt) & U32
        return max(0, self.peer_buf_alloc - in_flight)

    def _update_peer_credit(self, header: P.Header) -> None:
        self.peer_buf_alloc = header.buf_alloc
        self.peer_fwd_cnt = header.fwd_cnt

    def _wants_stream_data(self) -> bool:
        return (
            self.state is ConnState.ESTABLISHED
            and Pending.RESPONSE not in self.pending
            and not self.peer_shutdown & P.VIRTIO_VSOCK_SHUTDOWN_RCV
        )

    def interest(self) -> int:
        """The stream events the muxer should poll for."""
        if self.removed:
            return 0
        mask = 0
        if self.tx_buf and self.state in (ConnState.ESTABLISHED, ConnState.PEER_CLOSED):
            mask |= WRITE
        if self._wants_stream_data() and not self.stream_readable and self.peer_credit() > 0:
            mask |= READ
        return mask

    @property
    def has_pending_rx(self) -> bool:
        if self.removed:
            return False
        if self.pending:
            return True
        return self.stream_readable and self._wants_stream_data() and self.peer_credit() > 0

    # --- guest -> host ------------------------------------------------------------------------
    def send_pkt(self, pkt: P.TxPacket, now_ns: int) -> None:
        """A packet from the guest for this connection."""
        h = pkt.header
        if h.op == P.VIRTIO_VSOCK_OP_RST:
            self.remove()
            return
        if self.state is ConnState.KILLED:
            return
        self._update_peer_credit(h)
        if self.state is ConnState.LOCAL_INIT:
            if h.op == P.VIRTIO_VSOCK_OP_RESPONSE:
                self._establish_local()
            else:
                self.kill()
            return
        match h.op:
            case P.VIRTIO_VSOCK_OP_RW:
                self._guest_data(pkt)
            case P.VIRTIO_VSOCK_OP_CREDIT_REQUEST:
                self.pending.add(Pending.CREDIT_UPDATE)
            case P.VIRTIO_VSOCK_OP_CREDIT_UPDATE:
                pass  # the credit was taken from the header above
            case P.VIRTIO_VSOCK_OP_SHUTDOWN:
                self._guest_shutdown(h.flags, now_ns)
            case _:  # REQUEST or RESPONSE on a live connection, or an unknown op
                self.kill()

    def _establish_local(self) -> None:
        """The guest accepted a host-initiated connection: tell the host its local port."""
        self.state = ConnState.ESTABLISHED
        self.deadline_ns = None
        try:
            sent = self.stream.send(f"OK {self.local_port}\n".encode(), socket.MSG_NOSIGNAL)
        except OSError:
            sent = -1
        if sent != len(f"OK {self.local_port}\n"):
            self.counters.tx_write_fails += 1
            self.kill()

    def _guest_data(self, pkt: P.TxPacket) -> None:
        if self.state is not ConnState.ESTABLISHED or self.peer_shutdown & P.VIRTIO_VSOCK_SHUTDOWN_SEND:
            return  # data after the guest's own SHUTDOWN SEND, or towards a closed host end: dropped
        length = pkt.header.len
        if len(self.tx_buf) + length > CONN_TX_BUF_SIZE:
            self.kill()  # the guest ignored our credit
            return
        if not self.tx_buf and length:
            try:
                written = self.stream.sendmsg(list(pkt.payload), [], socket.MSG_NOSIGNAL)
            except BlockingIOError:
                written = 0
            except OSError:
                self.counters.tx_write_fails += 1
                self.kill()
                return
            self._forwarded(written)
            if written < length:
                self.tx_buf += b"".join(bytes(v) for v in pkt.payload)[written:]
        elif length:
            for view in pkt.payload:
                self.tx_buf += view

    def _forwarded(self, n: int) -> None:
        self.fwd_cnt = (self.fwd_cnt + n) & U32
        if ((self.fwd_cnt - self.last_fwd_cnt_to_peer) & U32) >= CONN_CREDIT_UPDATE_THRESHOLD:
            self.pending.add(Pending.CREDIT_UPDATE)

    def _guest_shutdown(self, flags: int, now_ns: int) -> None:
        self.peer_shutdown |= flags & P.VIRTIO_VSOCK_SHUTDOWN_ALL
        if self.peer_shutdown & P.VIRTIO_VSOCK_SHUTDOWN_RCV:
            self.pending.discard(Pending.RW)
            self.stream_readable = False
        if self.peer_shutdown == P.VIRTIO_VSOCK_SHUTDOWN_ALL:
            self.state = ConnState.PEER_CLOSED
            self.deadline_ns = now_ns + SHUTDOWN_TIMEOUT_NS
        self._after_flush()

    def _after_flush(self) -> None:
        """tx_buf is empty or shrank: finish a half or full close the guest asked for."""
        if self.tx_buf:
            return
        if self.peer_shutdown & P.VIRTIO_VSOCK_SHUTDOWN_SEND and not self.send_shut:
            self.send_shut = True
            try:
                self.stream.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if self.state is ConnState.PEER_CLOSED:
            self.kill()

    # --- host stream events -------------------------------------------------------------------
    def stream_event(self, mask: int) -> None:
        if self.removed:
            return
        if mask & WRITE and self.tx_buf:
            self._flush()
        if mask & READ:
            self.stream_readable = True

    def _flush(self) -> None:
        try:
            written = self.stream.send(self.tx_buf, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return
        except OSError:
            self.counters.tx_flush_fails += 1
            self.kill()
            return
        del self.tx_buf[:written]
        self._forwarded(written)
        self._after_flush()

    # --- host -> guest ------------------------------------------------------------------------
    def _header(self, op: int, length: int = 0, flags: int = 0) -> P.Header:
        self.last_fwd_cnt_to_peer = self.fwd_cnt
        return P.Header(
            self.local_cid, self.peer_cid, self.local_port, self.peer_port, length,
            P.VIRTIO_VSOCK_TYPE_STREAM, op, flags, CONN_TX_BUF_SIZE, self.fwd_cnt,
        )

    def recv_pkt(self, buf: P.RxBuffer, now_ns: int) -> P.Header | None:
        """Write the next packet for the guest into ``buf``; None when there is nothing to send."""
        if self.removed:
            return None
        if Pending.RST in self.pending:
            self.pending.clear()
            self.remove()
            return self._header(P.VIRTIO_VSOCK_OP_RST)
        for op, code in (
            (Pending.REQUEST, P.VIRTIO_VSOCK_OP_REQUEST),
            (Pending.RESPONSE, P.VIRTIO_VSOCK_OP_RESPONSE),
            (Pending.CREDIT_REQUEST, P.VIRTIO_VSOCK_OP_CREDIT_REQUEST),
            (Pending.CREDIT_UPDATE, P.VIRTIO_VSOCK_OP_CREDIT_UPDATE),
        ):
            if op in self.pending:
                self.pending.discard(op)
                return self._header(code)
        if self.stream_readable and self._wants_stream_data():
            header = self._read_stream(buf, now_ns)
            if header is not None:
                return header
        if Pending.SHUTDOWN in self.pending:
            self.pending.discard(Pending.SHUTDOWN)
            return self._header(P.VIRTIO_VSOCK_OP_SHUTDOWN, flags=P.VIRTIO_VSOCK_SHUTDOWN_ALL)
        return None

    def _read_stream(self, buf: P.RxBuffer, now_ns: int) -> P.Header | None:
        credit = self.peer_credit()
        want = min(credit, buf.capacity)
        if want == 0:
            return None
        try:
            n = self.stream.recvmsg_into(buf.payload(want))[0]
        except BlockingIOError:
            self.stream_readable = False
            return None
        except OSError as e:
            self.stream_readable = False
            if e.errno not in (errno.ECONNRESET, errno.EPIPE):
                self.counters.rx_read_fails += 1
            self.kill()
            return None
        if n == 0:  # EOF: the host closed its end
            self.stream_readable = False
            self.state = ConnState.LOCAL_CLOSED
            self.deadline_ns = now_ns + SHUTDOWN_TIMEOUT_NS
            self.pending.add(Pending.SHUTDOWN)
            return None
        if n < want:
            self.stream_readable = False  # drained: poll again
        self.rx_cnt = (self.rx_cnt + n) & U32
        if self.peer_credit() == 0:
            self.pending.add(Pending.CREDIT_REQUEST)  # stalled until the guest frees buffer space
        return self._header(P.VIRTIO_VSOCK_OP_RW, n)

    # --- end of life --------------------------------------------------------------------------
    def kill(self) -> None:
        """Abort: only an RST to the guest is left to send, then the connection goes."""
        if self.state is ConnState.KILLED or self.removed:
            return
        self.state = ConnState.KILLED
        self.counters.conns_killed += 1
        self.pending = {Pending.RST}
        self.tx_buf.clear()
        self.stream_readable = False
        self.deadline_ns = None
        self._close_stream()

    def timeout(self, now_ns: int) -> None:
        if self.deadline_ns is not None and now_ns >= self.deadline_ns:
            self.kill()

    def remove(self) -> None:
        if self.removed:
            return
        self.removed = True
        self.pending.clear()
        self.deadline_ns = None
        self._close_stream()

    def _close_stream(self) -> None:
        """The muxer unregisters the stream from the event loop, then closes it (close_wanted)."""
        self.close_wanted = True


__all__ = [
    "CONN_CREDIT_UPDATE_THRESHOLD",
    "CONN_TX_BUF_SIZE",
    "ConnState",
    "Pending",
    "VsockConnection",
]
