"""The host side of vsock: Firecracker's Unix-socket protocol, multiplexing guest connections.

Host-initiated connections: the muxer listens on ``uds_path``. A host program connects, writes
``CONNECT <port>\\n`` (keyword in any case, decimal u32, within 32 bytes) and the muxer asks the
guest for a connection to that port from a fresh host-side port (round robin in ``[2^30, 2^31)``).
When the guest accepts (RESPONSE) the program reads ``OK <host_port>\\n`` and from then on the
stream carries the connection's bytes raw; if the guest refuses (RST) or does not answer within
2 s, the program's socket is closed.

Guest-initiated connections: a guest REQUEST to host port P connects to the Unix socket
``<uds_path>_P``; when nothing listens there the guest gets an RST.

Connections are keyed by ``(host port, guest port)``. Standalone control packets (RSTs for
packets that belong to no connection) wait in a bounded queue; connections with something to say
wait in a round-robin queue, so many concurrent connections share the RX queue fairly. At most
1023 connections (Firecracker's limit) exist at once, counting host connections still sending
their CONNECT line; more are refused.

The muxer registers every socket it owns with the device host (``add_fd``/``modify_fd``/
``remove_fd``) and asks for exactly the events it can act on, so a guest that stops reading
makes us stop reading its host peer instead of buffering.
"""

from __future__ import annotations

import collections
import socket
import time
from collections.abc import Callable
from typing import Any

from sparkler.devices.virtio.vsock import packet as P
from sparkler.devices.virtio.vsock.connection import READ, ConnState, VsockConnection

VSOCK_HOST_CID = 2
MAX_CONNECTIONS = 1023
LOCAL_PORT_FIRST = 1 << 30
LOCAL_PORT_END = 1 << 31
CONNECT_LINE_MAX = 32
RXQ_MAX = 256  # pending standalone RSTs; beyond this the oldest are dropped (the guest spams)
LISTEN_BACKLOG = 128


def bind_listener(path: str) -> socket.socket:
    """A non-blocking AF_UNIX stream listener bound at ``path`` (OSError if it exists)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        sock.bind(path)
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def parse_connect_line(line: bytes) -> int | None:
    """``CONNECT <port>`` (case-insensitive keyword, decimal u32) -> port, else None."""
    parts = line.strip().split()
    if len(parts) != 2 or parts[0].upper() != b"CONNECT" or not parts[1].isdigit():
        return None
    port = int(parts[1])
    return port if port <= 0xFFFF_FFFF else None


class _LocalStream:
    """A host connection on uds_path that has not finished its CONNECT line yet."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock


class HostSide:
    """What the muxer needs of the event loop (``sparkler.vmm.event_loop.DeviceHost``)."""

    def add_fd(self, fd: int, callback: Callable[[int], None], events: int = READ) -> None: ...
    def modify_fd(self, fd: int, events: int, callback: Callable[[int], None] | None = None) -> None: ...
    def remove_fd(self, fd: int) -> None: ...


class VsockMuxer:
    def __init__(
        self,
        guest_cid: int,
        uds_path: str,
        counters: Any,
        *,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        listener: socket.socket | None = None,
    ) -> None:
        self.guest_cid = guest_cid
        self.uds_path = uds_path
        self.counters = counters
        self.clock_ns = clock_ns
        self.listener = listener if listener is not None else bind_listener(uds_path)
        self.conns: dict[tuple[int, int], VsockConnection] = {}
        self.local_streams: dict[int, _LocalStream] = {}
        self.rxq: collections.deque[P.Header] = collections.deque()
        self.rx_ready: collections.deque[tuple[int, int]] = collections.deque()
        self._rx_ready_set: set[tuple[int, int]] = set()
        self._registered: dict[int, int] = {}  # fd -> events asked for
        self._next_local_port = LOCAL_PORT_FIRST
        self.host: Any = None
        self.on_event: Callable[[], None] = lambda: None  # the device fills the RX queue

    # --- event loop registration --------------------------------------------------------------
    def attach(self, host: Any, on_event: Callable[[], None]) -> None:
        """Start serving the listener on ``host``; ``on_event()`` runs after each socket event."""
        self.host = host
        self.on_event = on_event
        host.add_fd(self.listener.fileno(), self._listener_event, READ)

    def _conn_callback(self, key: tuple[int, int]) -> Callable[[int], None]:
        def callback(mask: int) -> None:
            conn = self.conns.get(key)
            if conn is not None:
                conn.stream_event(mask)
                self._sync(conn)
            self.on_event()

        return callback

    def _sync(self, conn: VsockConnection) -> None:
        """Bring the connection's registration, rx-ready entry and life in line with its state."""
        fd = conn.stream.fileno()
        wanted = 0 if conn.close_wanted or conn.removed else conn.interest()
        if fd >= 0 and self.host is not None:
            current = self._registered.get(fd)
            if wanted == 0 and current is not None:
                self.host.remove_fd(fd)
                del self._registered[fd]
            elif wanted and current is None:
                self.host.add_fd(fd, self._conn_callback(conn.key), wanted)
                self._registered[fd] = wanted
            elif wanted and current != wanted:
                self.host.modify_fd(fd, wanted)
                self._registered[fd] = wanted
        if conn.close_wanted and fd >= 0:
            self._registered.pop(fd, None)
            conn.stream.close()
        if conn.removed:
            if self.conns.get(conn.key) is conn:
                del self.conns[conn.key]
                self.counters.conns_removed += 1
            return
        if conn.has_pending_rx and conn.key not in self._rx_ready_set:
            self.rx_ready.append(conn.key)
            self._rx_ready_set.add(conn.key)

    # --- host-initiated connections -----------------------------------------------------------
    def _listener_event(self, mask: int) -> None:
        for _ in range(64):  # accept a burst, then let the loop serve others
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                break
            except OSError:
                self.counters.muxer_event_fails += 1
                break
            if len(self.conns) + len(self.local_streams) >= MAX_CONNECTIONS:
                sock.close()
                continue
            local = _LocalStream(sock)
            fd = sock.fileno()
            self.local_streams[fd] = local
            if self.host is not None:
                self.host.add_fd(fd, self._local_stream_callback(fd), READ)
        self.on_event()

    def _local_stream_callback(self, fd: int) -> Callable[[int], None]:
        def callback(mask: int) -> None:
            local = self.local_streams.get(fd)
            if local is not None:
                self._read_connect_line(fd, local)
            self.on_event()

        return callback

    def _drop_local(self, fd: int, local: _LocalStream, *, close: bool) -> None:
        del self.local_streams[fd]
        if self.host is not None:
            self.host.remove_fd(fd)
        if close:
            local.sock.close()

    def _read_connect_line(self, fd: int, local: _LocalStream) -> None:
        try:
            peek = local.sock.recv(CONNECT_LINE_MAX, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            self.counters.muxer_event_fails += 1
            self._drop_local(fd, local, close=True)
            return
        end = peek.find(b"\n")
        if end < 0:
            if not peek or len(peek) >= CONNECT_LINE_MAX:  # EOF, or no command within 32 bytes
                self.counters.muxer_event_fails += 1
                self._drop_local(fd, local, close=True)
            return
        line = local.sock.recv(end + 1)  # consume exactly the command; later bytes are data
        port = parse_connect_line(line)
        if port is None:
            self.counters.muxer_event_fails += 1
            self._drop_local(fd, local, close=True)
            return
        self._drop_local(fd, local, close=False)
        local_port = self._allocate_local_port(port)
        conn = VsockConnection(
            local.sock,
            local_port=local_port,
            peer_port=port,
            local_cid=VSOCK_HOST_CID,
            peer_cid=self.guest_cid,
            state=ConnState.LOCAL_INIT,
            counters=self.counters,
            now_ns=self.clock_ns(),
        )
        self._add(conn)

    def _allocate_local_port(self, peer_port: int) -> int:
        while True:
            port = self._next_local_port
            self._next_local_port += 1
            if self._next_local_port >= LOCAL_PORT_END:
                self._next_local_port = LOCAL_PORT_FIRST
            if (port, peer_port) not in self.conns:
                return port

    def _add(self, conn: VsockConnection) -> None:
        self.conns[conn.key] = conn
        self.counters.conns_added += 1
        self._sync(conn)

    # --- guest -> host ------------------------------------------------------------------------
    def send_pkt(self, pkt: P.TxPacket) -> None:
        """A packet the guest sent to the host (CIDs already checked by the device)."""
        h = pkt.header
        now = self.clock_ns()
        if h.type != P.VIRTIO_VSOCK_TYPE_STREAM:
            self._reply_rst(h)
            return
        key = (h.dst_port, h.src_port)
        conn = self.conns.get(key)
        if conn is not None:
            conn.send_pkt(pkt, now)
            self._sync(conn)
            return
        if h.op == P.VIRTIO_VSOCK_OP_REQUEST:
            self._guest_connect(h, now)
        elif h.op != P.VIRTIO_VSOCK_OP_RST:
            self._reply_rst(h)

    def _guest_connect(self, h: P.Header, now: int) -> None:
        if len(self.conns) + len(self.local_streams) >= MAX_CONNECTIONS:
            self._reply_rst(h)
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            sock.connect(f"{self.uds_path}_{h.dst_port}")
        except OSError:  # nothing listens there (or its backlog is full): refused
            sock.close()
            self._reply_rst(h)
            return
        conn = VsockConnection(
            sock,
            local_port=h.dst_port,
            peer_port=h.src_port,
            local_cid=VSOCK_HOST_CID,
            peer_cid=self.guest_cid,
            state=ConnState.ESTABLISHED,
            counters=self.counters,
            now_ns=now,
        )
        conn.peer_buf_alloc, conn.peer_fwd_cnt = h.buf_alloc, h.fwd_cnt
        self._add(conn)

    def _reply_rst(self, h: P.Header) -> None:
        if len(self.rxq) >= RXQ_MAX:
            self.rxq.popleft()
        self.rxq.append(
            P.Header(
                VSOCK_HOST_CID, self.guest_cid, h.dst_port, h.src_port, 0,
                P.VIRTIO_VSOCK_TYPE_STREAM, P.VIRTIO_VSOCK_OP_RST,
            )
        )

    # --- host -> guest ------------------------------------------------------------------------
    @property
    def has_pending_rx(self) -> bool:
        return bool(self.rxq) or bool(self.rx_ready)

    def recv_pkt(self, buf: P.RxBuffer) -> P.Header | None:
        """Fill ``buf`` with the next packet for the guest; None when there is none."""
        if self.rxq:
            header = self.rxq.popleft()
            buf.write_header(header)
            return header
        now = self.clock_ns()
        while self.rx_ready:
            key = self.rx_ready.popleft()
            self._rx_ready_set.discard(key)
            conn = self.conns.get(key)
            if conn is None:
                continue
            header = conn.recv_pkt(buf, now)
            self._sync(conn)  # re-queues it (at the back) when it has more to say
            if header is not None:
                buf.write_header(header)
                return header
        return None

    # --- timers -------------------------------------------------------------------------------
    def deadline_ns(self) -> int | None:
        deadlines = [c.deadline_ns for c in self.conns.values() if c.deadline_ns is not None]
        return min(deadlines) if deadlines else None

    def process_timeouts(self) -> None:
        now = self.clock_ns()
        for conn in list(self.conns.values()):
            if conn.deadline_ns is not None and now >= conn.deadline_ns:
                conn.timeout(now)
                self._sync(conn)

    # --- teardown -----------------------------------------------------------------------------
    def reset_connections(self) -> None:
        """Drop every connection (device reset, transport reset): host sockets are closed."""
        for conn in list(self.conns.values()):
            conn.remove()
            self._sync(conn)
        self.rxq.clear()
        self.rx_ready.clear()
        self._rx_ready_set.clear()

    def close(self) -> None:
        self.reset_connections()
        for fd, local in list(self.local_streams.items()):
            self._drop_local(fd, local, close=True)
        if self.listener.fileno() >= 0:
            if self.host is not None:
                self.host.remove_fd(self.listener.fileno())
            self.listener.close()
            # The socket file stays, as with Firecracker (and the VMM's seccomp policy has no unlink):
            # whoever reuses the path removes it first.


__all__ = [
    "LOCAL_PORT_FIRST",
    "MAX_CONNECTIONS",
    "VSOCK_HOST_CID",
    "VsockMuxer",
    "bind_listener",
    "parse_connect_line",
]
