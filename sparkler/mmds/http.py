"""HTTP/1.x over one MMDS TCP connection: bytes in, response bytes out (sans-I/O, on h11).

``HttpSession.receive(data)`` buffers what the guest sent; ``HttpSession.process(budget)`` parses
every complete request it can, asks ``Mmds.respond`` and returns the response bytes, stopping once
``budget`` bytes of output are produced (so a guest that pipelines requests without reading the
answers cannot make the VMM buffer without bound: the rest stays in the parser, the TCP window
shrinks, and processing resumes when the caller has room). Responses use Firecracker's form: no
reason phrase, ``Server: Firecracker API``, ``Content-Type`` and ``Content-Length``.

A request that h11 refuses (bad syntax, headers larger than ``max_request``) is answered with
``400`` and a plain-text reason, and the session closes; so does an HTTP/1.0 exchange without
keep-alive (h11 decides). ``closing`` then tells the TCP layer to send FIN after the data.
"""

from __future__ import annotations

import h11

from sparkler.mmds.imds import GuestRequest, GuestResponse, Mmds

MAX_REQUEST = 2500  # Firecracker's per-connection receive buffer: a request must fit in it
SERVER = (b"Server", b"Firecracker API")


class HttpSession:
    def __init__(self, mmds: Mmds, max_request: int = MAX_REQUEST) -> None:
        self.mmds = mmds
        self.max_request = max_request
        self.closing = False
        # h11 refuses a buffer *larger* than its limit; one below ours makes a full window an error.
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_request - 1)
        self._request: GuestRequest | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not parsed yet (they occupy the TCP receive window)."""
        return len(self._conn.trailing_data[0])

    def receive(self, data: bytes) -> None:
        if not self.closing and data:
            self._conn.receive_data(data)

    def receive_eof(self) -> None:
        if not self.closing:
            self._conn.receive_data(b"")

    def process(self, budget: int) -> bytes:
        """Response bytes for the complete requests buffered so far (at most ~``budget`` bytes)."""
        out = bytearray()
        while not self.closing and len(out) < budget:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as e:
                out += self._error(str(e))
                break
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if event is h11.PAUSED and self._ready_for_next():
                    continue
                break
            if isinstance(event, h11.Request):
                self._request = GuestRequest(
                    event.method.decode("ascii", "replace"),
                    event.target.decode("latin-1"),
                    tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers.raw_items()),
                )
            elif isinstance(event, h11.EndOfMessage) and self._request is not None:
                request, self._request = self._request, None
                out += self._send(self.mmds.respond(request))
                self._ready_for_next()
            elif isinstance(event, h11.ConnectionClosed):
                self.closing = True
        return bytes(out)

    def _ready_for_next(self) -> bool:
        conn = self._conn
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            self.closing = True
            return False
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            return True
        return False

    def _send(self, response: GuestResponse) -> bytes:
        headers = [SERVER, (b"Content-Type", response.content_type.encode())]
        headers += [(n.encode("latin-1"), v.encode("latin-1")) for n, v in response.headers]
        headers.append((b"Content-Length", str(len(response.body)).encode()))
        try:
            data = self._conn.send(h11.Response(status_code=response.status, headers=headers, reason=b""))
            data = (data or b"") + (self._conn.send(h11.Data(data=response.body)) or b"")
            data += self._conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            self.closing = True
            return b""
        return data

    def _error(self, reason: str) -> bytes:
        """400 for a request h11 could not parse; the session closes after it."""
        self.closing = True
        body = reason.encode("utf-8", "replace")
        return (
            b"HTTP/1.1 400 \r\nServer: Firecracker API\r\nConnection: close\r\nContent-Type: text/plain\r\n"
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )


__all__ = ["HttpSession", "MAX_REQUEST"]
