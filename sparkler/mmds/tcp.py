"""A deliberately small TCP server endpoint for the MMDS (Firecracker's "dumbo"), sans-I/O.

``TcpHandler`` listens on one port of one address. ``receive(src_mac, src_ip, segment)`` takes a
parsed TCP segment the guest sent; ``next_segment(max_payload)`` returns the next segment to send
(as ``Outgoing``: peer addresses + ``TcpHeader`` + payload) or None. Time comes from ``clock``.

Connection life (one ``Connection`` per (guest address, guest port))::

    (none) --SYN--> SYN_RECEIVED --ACK of our SYN--> ESTABLISHED --FIN from guest / HTTP
    close--> we send the rest of the data, then FIN --guest FIN seen and our FIN acked--> (none)

Rules, kept minimal on purpose (the peer is a guest on the same host; frames are not lost on the
way, only when the guest drops them):

* Only in-order data is accepted; anything else is answered with an ACK for what we expect
  (the guest retransmits). The receive window is the free part of a 2500-byte request buffer.
* Our data goes out in segments of at most the guest's MSS (536 when it sent none) and within the
  window it advertised. Unacknowledged data is sent again (go-back-N) after the first duplicate
  ACK or after ``RTO_SECONDS``; after ``MAX_RETRANSMISSIONS`` in a row the connection is reset.
* A SYN when ``max_connections`` are open first evicts a connection idle for ``EVICTION_SECONDS``;
  if none is, the SYN is answered with RST. Segments for no connection, for another port, or that
  make no sense in the connection's state get a RST (RFC 793 form); at most ``max_pending_resets``
  RSTs wait to be sent, more are dropped.
* The HTTP layer (``sparkler.mmds.http.HttpSession``) may buffer at most ``SEND_BUFFER`` bytes of
  responses per connection; past that it stops parsing requests until the guest acknowledges data.
"""

from __future__ import annotations

import collections
import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sparkler.mmds.http import MAX_REQUEST, HttpSession
from sparkler.mmds.imds import Mmds
from sparkler.mmds.pdu import ACK, FIN, PSH, RST, SYN, Tcp, TcpHeader

DEFAULT_MSS = 536
OUR_MSS = 1460
RTO_SECONDS = 0.3
MAX_RETRANSMISSIONS = 15
EVICTION_SECONDS = 10.0
MAX_CONNECTIONS = 30
MAX_PENDING_RESETS = 100
SEND_BUFFER = 64 * 1024 + 1024  # room for one maximal store answer and its headers
RECEIVE_BUFFER = MAX_REQUEST
_MOD = 1 << 32


def seq_diff(a: int, b: int) -> int:
    """a - b in sequence space, as a signed 32-bit number."""
    return ((a - b + (1 << 31)) % _MOD) - (1 << 31)


class ConnState(enum.Enum):
    SYN_RECEIVED = "SYN_RECEIVED"
    ESTABLISHED = "ESTABLISHED"


@dataclass(frozen=True)
class Outgoing:
    mac: bytes
    ip: bytes
    header: TcpHeader
    payload: bytes = b""


@dataclass
class Connection:
    mac: bytes
    ip: bytes
    port: int
    iss: int
    rcv_nxt: int
    http: HttpSession
    peer_mss: int
    peer_window: int
    last_activity: float
    state: ConnState = ConnState.SYN_RECEIVED
    snd_una: int = 0
    snd_nxt: int = 0
    send_buffer: bytearray = field(default_factory=bytearray)  # from snd_una (after the SYN)
    ack_due: bool = False
    syn_due: bool = True
    want_fin: bool = False
    fin_sent: bool = False  # the FIN at fin_seq is out (cleared again by a go-back)
    fin_seq: int | None = None  # set when our FIN is first sent
    fin_acked: bool = False
    fin_received: bool = False
    last_send: float = 0.0
    retransmissions: int = 0
    dup_acks: int = 0

    def __post_init__(self) -> None:
        self.snd_una = self.iss
        self.snd_nxt = self.iss

    @property
    def window(self) -> int:
        return max(0, RECEIVE_BUFFER - self.http.buffered)

    @property
    def data_start(self) -> int:
        """Sequence number of send_buffer[0]."""
        return (self.iss + 1) % _MOD if self.state is ConnState.SYN_RECEIVED else self.snd_una

    @property
    def in_flight(self) -> int:
        return seq_diff(self.snd_nxt, self.snd_una)

    @property
    def done(self) -> bool:
        return self.fin_received and self.fin_acked


class TcpHandler:
    def __init__(
        self,
        mmds: Mmds,
        local_port: int = 80,
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_pending_resets: int = MAX_PENDING_RESETS,
        clock: Callable[[], float] = time.monotonic,
        random_seq: Callable[[], int] = lambda: int.from_bytes(os.urandom(4), "big"),
    ) -> None:
        self.mmds = mmds
        self.local_port = local_port
        self.max_connections = max_connections
        self.max_pending_resets = max_pending_resets
        self.clock = clock
        self.random_seq = random_seq
        self.connections: dict[tuple[bytes, int], Connection] = {}
        self.resets: collections.deque[Outgoing] = collections.deque()
        self.connections_created = 0
        self.connections_destroyed = 0

    def _drop(self, key: tuple[bytes, int]) -> None:
        del self.connections[key]
        self.connections_destroyed += 1

    # --- input --------------------------------------------------------------------------------
    def receive(self, mac: bytes, ip: bytes, seg: Tcp) -> None:
        now = self.clock()
        key = (ip, seg.src_port)
        conn = self.connections.get(key)
        if seg.dst_port != self.local_port:
            self._reset_for(mac, ip, seg)
            return
        if conn is None:
            self._no_connection(mac, ip, seg, now)
            return
        conn.mac = mac
        conn.last_activity = now
        if seg.flags & RST:
            if 0 <= seq_diff(seg.seq, conn.rcv_nxt) <= RECEIVE_BUFFER:
                self._drop(key)
            return
        if seg.flags & SYN:
            if conn.state is ConnState.SYN_RECEIVED and seg.seq == (conn.rcv_nxt - 1) % _MOD:
                conn.syn_due = True  # the guest did not see our SYN-ACK: send it again
                conn.snd_nxt = conn.iss
            else:
                self._reset_for(mac, ip, seg)
                self._drop(key)
            return
        if not seg.flags & ACK:
            return
        if not self._process_ack(conn, seg):
            return
        conn.peer_window = seg.window
        self._process_data(conn, seg)
        self._pump(conn)
        if conn.done and not conn.ack_due:
            self._drop(key)

    def _no_connection(self, mac: bytes, ip: bytes, seg: Tcp, now: float) -> None:
        if seg.flags & RST:
            return
        if not (seg.flags & SYN) or seg.flags & ACK:
            self._reset_for(mac, ip, seg)
            return
        if len(self.connections) >= self.max_connections and not self._evict(now):
            self._reset_for(mac, ip, seg)
            return
        self.connections_created += 1
        self.connections[(ip, seg.src_port)] = Connection(
            mac=mac,
            ip=ip,
            port=seg.src_port,
            iss=self.random_seq() % _MOD,
            rcv_nxt=(seg.seq + 1) % _MOD,
            http=HttpSession(self.mmds),
            peer_mss=max(1, min(seg.mss or DEFAULT_MSS, OUR_MSS)),
            peer_window=seg.window,
            last_activity=now,
        )

    def _evict(self, now: float) -> bool:
        for key, conn in self.connections.items():
            if now - conn.last_activity >= EVICTION_SECONDS:
                self._drop(key)
                return True
        return False

    def _process_ack(self, conn: Connection, seg: Tcp) -> bool:
        """Advance snd_una; False when the segment must be dropped (after queueing a reply)."""
        if conn.state is ConnState.SYN_RECEIVED:
            if seg.ack != (conn.iss + 1) % _MOD:
                self._reset_for(conn.mac, conn.ip, seg)
                self._drop((conn.ip, conn.port))
                return False
            conn.state = ConnState.ESTABLISHED
            conn.snd_una = seg.ack
            conn.syn_due = False
            conn.retransmissions = 0
            if seq_diff(conn.snd_nxt, conn.snd_una) < 0:
                conn.snd_nxt = conn.snd_una
            return True
        acked = seq_diff(seg.ack, conn.snd_una)
        if seq_diff(seg.ack, conn.snd_nxt) > 0:
            # Acknowledges something never sent (or sent before a go-back): tell what we expect.
            if seq_diff(seg.ack, self._sent_max(conn)) > 0:
                conn.ack_due = True
                return False
            conn.snd_nxt = seg.ack
        if acked > 0:
            data_acked = min(acked, len(conn.send_buffer))
            del conn.send_buffer[:data_acked]
            conn.snd_una = seg.ack
            if conn.fin_seq is not None and seq_diff(seg.ack, conn.fin_seq) > 0:
                conn.fin_acked = conn.fin_sent = True
            conn.retransmissions = 0
            conn.dup_acks = 0
        elif acked == 0 and conn.in_flight > 0 and not seg.payload and not seg.flags & FIN:
            conn.dup_acks += 1
            if conn.dup_acks == 1:
                self._go_back(conn)
        return True

    @staticmethod
    def _sent_max(conn: Connection) -> int:
        """Highest sequence number we ever sent (data end, plus our FIN once sent)."""
        end = (conn.data_start + len(conn.send_buffer)) % _MOD
        return (end + 1) % _MOD if conn.fin_seq is not None else end

    def _process_data(self, conn: Connection, seg: Tcp) -> None:
        if not seg.payload and not seg.flags & FIN:
            return
        conn.ack_due = True
        if seg.seq != conn.rcv_nxt or conn.fin_received:
            return  # out of order or duplicate: the ACK says what we expect
        take = bytes(seg.payload[: conn.window])
        if take:
            conn.http.receive(take)
            conn.rcv_nxt = (conn.rcv_nxt + len(take)) % _MOD
        if seg.flags & FIN and len(take) == len(seg.payload):
            conn.rcv_nxt = (conn.rcv_nxt + 1) % _MOD
            conn.fin_received = True
            conn.http.receive_eof()

    def _pump(self, conn: Connection) -> None:
        """Let the HTTP session answer what it can, within the send buffer."""
        room = SEND_BUFFER - len(conn.send_buffer)
        if room > 0:
            conn.send_buffer += conn.http.process(room)
        if conn.http.closing or conn.fin_received:
            conn.want_fin = True

    def _go_back(self, conn: Connection) -> None:
        conn.snd_nxt = conn.snd_una
        if conn.fin_sent and not conn.fin_acked:
            conn.fin_sent = False
        if conn.state is ConnState.SYN_RECEIVED:
            conn.syn_due = True

    def _reset_for(self, mac: bytes, ip: bytes, seg: Tcp) -> None:
        """Queue RFC 793's reset for a segment that does not belong (never for a RST)."""
        if seg.flags & RST or len(self.resets) >= self.max_pending_resets:
            return
        if seg.flags & ACK:
            header = TcpHeader(seg.dst_port, seg.src_port, seg.ack, 0, RST, 0)
        else:
            header = TcpHeader(seg.dst_port, seg.src_port, 0, (seg.seq + seg.seg_len) % _MOD, RST | ACK, 0)
        self.resets.append(Outgoing(mac, ip, header))

    # --- output -------------------------------------------------------------------------------
    def _check_timers(self, now: float) -> None:
        for key, conn in list(self.connections.items()):
            if conn.in_flight > 0 and now - conn.last_send >= RTO_SECONDS:
                conn.retransmissions += 1
                if conn.retransmissions > MAX_RETRANSMISSIONS:
                    self._drop(key)
                    header = TcpHeader(self.local_port, conn.port, conn.snd_nxt, 0, RST, 0)
                    if len(self.resets) < self.max_pending_resets:
                        self.resets.append(Outgoing(conn.mac, conn.ip, header))
                    continue
                self._go_back(conn)
                conn.last_send = now

    def has_pending(self) -> bool:
        if self.resets:
            return True
        self._check_timers(self.clock())
        return any(self._wants_to_send(conn) for conn in self.connections.values())

    def _wants_to_send(self, conn: Connection) -> bool:
        if conn.syn_due or conn.ack_due:
            return True
        if conn.state is ConnState.SYN_RECEIVED:
            return False
        unsent = len(conn.send_buffer) - seq_diff(conn.snd_nxt, conn.snd_una)
        if unsent > 0 and seq_diff((conn.snd_una + conn.peer_window) % _MOD, conn.snd_nxt) > 0:
            return True
        return conn.want_fin and not conn.fin_sent and unsent <= 0

    def next_segment(self, max_payload: int) -> Outgoing | None:
        """The next segment to send; ``max_payload`` bounds the data it may carry."""
        if self.resets:
            return self.resets.popleft()
        now = self.clock()
        self._check_timers(now)
        for key, conn in list(self.connections.items()):
            out = self._segment_for(conn, max_payload)
            if out is not None:
                conn.last_send = now if conn.in_flight > 0 or out.header.flags & SYN else conn.last_send
                conn.ack_due = False
                if conn.done:
                    self._drop(key)
                return out
        return None

    def _segment_for(self, conn: Connection, max_payload: int) -> Outgoing | None:
        window = min(conn.window, 0xFFFF)
        if conn.syn_due:
            conn.syn_due = False
            conn.snd_nxt = (conn.iss + 1) % _MOD
            header = TcpHeader(self.local_port, conn.port, conn.iss, conn.rcv_nxt, SYN | ACK, window, OUR_MSS)
            return Outgoing(conn.mac, conn.ip, header)
        if conn.state is ConnState.ESTABLISHED:
            offset = seq_diff(conn.snd_nxt, conn.snd_una)
            usable = seq_diff((conn.snd_una + conn.peer_window) % _MOD, conn.snd_nxt)
            size = min(len(conn.send_buffer) - offset, usable, conn.peer_mss, max_payload)
            if size > 0:
                data = bytes(conn.send_buffer[offset : offset + size])
                header = TcpHeader(self.local_port, conn.port, conn.snd_nxt, conn.rcv_nxt, ACK | PSH, window)
                conn.snd_nxt = (conn.snd_nxt + size) % _MOD
                return Outgoing(conn.mac, conn.ip, header, data)
            if conn.want_fin and not conn.fin_sent and offset >= len(conn.send_buffer):
                conn.fin_sent = True
                conn.fin_seq = conn.snd_nxt
                header = TcpHeader(self.local_port, conn.port, conn.snd_nxt, conn.rcv_nxt, FIN | ACK, window)
                conn.snd_nxt = (conn.snd_nxt + 1) % _MOD
                return Outgoing(conn.mac, conn.ip, header)
        if conn.ack_due:
            header = TcpHeader(self.local_port, conn.port, conn.snd_nxt, conn.rcv_nxt, ACK, window)
            return Outgoing(conn.mac, conn.ip, header)
        return None


__all__ = ["ConnState", "Connection", "Outgoing", "TcpHandler", "seq_diff"]
