"""Firecracker's REST API server: HTTP/1.1 on a Unix socket, served by one thread (``fc_api``).

The thread owns a ``selectors`` loop over the listening socket, a wake-up pipe and up to
``MAX_CONNECTIONS`` non-blocking client sockets, each with its own ``h11.Connection`` (the
sans-I/O protocol core). A complete request is routed (``api.router.route``, pure) and, unless
the router already refused it, the resulting action is handed to ``dispatch`` (in production
``Channel.call``: queue + eventfd to the VMM thread, then wait for the reply). Requests are
therefore answered strictly one at a time, as in Firecracker.

Wire format (micro-http's, catalog 1.1):

* status line without reason phrase (``HTTP/1.1 204 \\r\\n``), ``Server: Firecracker API``,
  ``Connection: keep-alive``, ``Deprecation: true`` when the request used a deprecated field,
  ``Content-Type``/``Content-Length`` only when there is a body;
* only GET, PUT, PATCH and DELETE; a body over ``max_payload`` bytes; or any malformed request
  is an HTTP parse error: ``400`` with ``{"error": "<reason>\\nAll previous unanswered requests
  will be dropped."}``, after which the connection is closed;
* the connection beyond ``MAX_CONNECTIONS`` gets the canned ``503`` and is closed;
* keep-alive and pipelining; ``Expect: 100-continue`` is answered with ``100``.

This module imports only the stdlib and h11 at import time; the router (msgspec, config models)
is imported when a server is created.
"""

from __future__ import annotations

import os
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

import h11

from sparkler.errors import HostError

MAX_CONNECTIONS = 10
DEFAULT_MAX_PAYLOAD = 51200
THREAD_NAME = "fc_api"
# Stop reading from a client whose unread responses exceed this (it pipelines without reading).
_MAX_PENDING_OUTPUT = 1 << 20
_MAX_LINGER_BYTES = 1 << 20  # input discarded after a closing answer before we hang up anyway
_RECV_SIZE = 65536
PR_SET_NAME = 15  # <linux/prctl.h>


def set_thread_name(name: str) -> None:
    """Set the kernel-visible name of the calling thread (Python 3.11's Thread(name=) does not)."""
    try:  # the shared helper also refreshes the logger's cached thread name
        from sparkler.host.thread_name import prctl_set_name
    except ImportError:
        pass
    else:
        prctl_set_name(name)
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def bind_api_socket(path: str) -> socket.socket:
    """A listening, non-blocking AF_UNIX socket at ``path``.

    A stale socket file is removed first (Firecracker refuses instead); any other existing file
    is left alone and refused.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise HostError(f"Failed to open the API socket at: {path}. The path exists and is not a socket.")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        sock.listen(64)
    except OSError as e:
        sock.close()
        raise HostError(
            f"Failed to open the API socket at: {path}. Check that it is not already used. ({e.strerror})"
        ) from None
    sock.setblocking(False)
    return sock


class _Client:
    """One accepted connection: socket, h11 state, the request being read, pending output."""

    __slots__ = ("sock", "h11", "out", "request", "body", "close_when_flushed", "closed", "linger", "lingering", "drained")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.h11 = h11.Connection(h11.SERVER)
        self.out = bytearray()
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.close_when_flushed = False
        self.closed = False
        # After an answer that ends the connection, the write side is shut and input is read and
        # discarded until the peer closes ("lingering close"), so a client still sending its body
        # reads our answer instead of getting EPIPE/ECONNRESET.
        self.linger = False  # set when we answer before reading the whole request (parse errors)
        self.lingering = False
        self.drained = 0


class ApiServer:
    """The API server. ``dispatch(action) -> VmmData | VmmActionError`` runs each action."""

    def __init__(
        self,
        path: str,
        dispatch: Callable[[Any], Any],
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_connections: int = MAX_CONNECTIONS,
        log: Callable[[str], None] | None = None,
        on_request: Callable[[str, str, int, bool], None] | None = None,
        debug_log: Callable[[str], None] | None = None,
        thread_init: Callable[[], None] | None = None,
    ) -> None:
        """``on_request(method, path, status, deprecated)`` is called once per answered request
        (the runtime counts API metrics with it). ``debug_log`` receives Firecracker's
        ``Total previous API call duration: N us.`` line when the next request arrives.
        ``thread_init`` runs on ``fc_api`` after it named itself and before it accepts a connection
        (the runtime installs the api seccomp filter there); if it raises, ``start`` raises that
        error and nothing is served."""
        from sparkler.api import bodies, faults, router
        from sparkler.vmm import actions

        self._router, self._faults, self._bodies, self._actions = router, faults, bodies, actions
        self.path = path
        self.dispatch = dispatch
        self.max_payload = max_payload
        self.max_connections = max_connections
        self.log = log
        self.on_request = on_request
        self.debug_log = debug_log
        self._previous_call_us: int | None = None
        self._listener = bind_api_socket(path)
        self._inode = os.stat(path).st_ino
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "listener")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._clients: dict[int, _Client] = {}
        self._thread: threading.Thread | None = None
        self._thread_init = thread_init
        self._init_error: BaseException | None = None
        self._stopping = False
        self._closed = False

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        """Serve on a new daemon thread named ``fc_api``; returns once the thread is named and its
        ``thread_init`` ran (re-raising what that raised)."""
        named = threading.Event()
        self._thread = threading.Thread(
            target=self._thread_main, args=(named,), name=THREAD_NAME, daemon=True
        )
        self._thread.start()
        named.wait(5)
        if self._init_error is not None:
            self._thread.join(5)
            raise self._init_error
        return self._thread

    def _thread_main(self, named: threading.Event) -> None:
        try:
            set_thread_name(THREAD_NAME)
            if self._thread_init is not None:
                self._thread_init()
        except BaseException as e:  # noqa: BLE001 - handed to start() on the creating thread
            self._init_error = e
            self._close_all()
            return
        finally:
            named.set()
        self.serve_forever()

    def serve_forever(self) -> None:
        try:
            while not self._stopping:
                self.serve_once()
        finally:
            self._close_all()

    def serve_once(self, timeout: float | None = None) -> None:
        """Handle whatever is ready (one selector round)."""
        for key, events in self._selector.select(timeout):
            if key.data == "listener":
                self._accept()
            elif key.data == "wake":
                self._stopping = True
            else:
                client: _Client = key.data
                try:
                    if events & selectors.EVENT_WRITE and not client.closed:
                        self._flush(client)
                    if events & selectors.EVENT_READ and not client.closed:
                        self._on_readable(client)
                except Exception as e:  # noqa: BLE001 - one bad connection must not stop the API
                    if self.log is not None:
                        self.log(f"API connection dropped after an internal error: {type(e).__name__}: {e}")
                    self._close(client)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the serving thread (if any), close every socket and remove the socket file."""
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._thread is None:
            self._close_all()

    @property
    def connection_count(self) -> int:
        return len(self._clients)

    def _close_all(self) -> None:
        if self._closed:
            return
        self._closed = True
        for client in list(self._clients.values()):
            self._close(client)
        self._selector.close()
        self._listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass

    # --- connections --------------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self._clients) >= self.max_connections:
                try:
                    sock.setblocking(False)
                    sock.send(self._faults.SERVER_FULL_RESPONSE)
                except OSError:
                    pass
                sock.close()
                continue
            sock.setblocking(False)
            client = _Client(sock)
            self._clients[sock.fileno()] = client
            self._selector.register(sock, selectors.EVENT_READ, client)

    def _close(self, client: _Client) -> None:
        if client.closed:
            return
        client.closed = True
        self._clients.pop(client.sock.fileno(), None)
        try:
            self._selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()

    def _update_interest(self, client: _Client) -> None:
        if client.closed:
            return
        events = selectors.EVENT_WRITE if client.out else 0
        if len(client.out) < _MAX_PENDING_OUTPUT and not client.close_when_flushed:
            events |= selectors.EVENT_READ
        if events == 0:  # nothing to read or write: the connection is done
            self._close(client)
            return
        self._selector.modify(client.sock, events, client)

    def _send(self, client: _Client, data: bytes) -> None:
        client.out += data
        self._flush(client)

    def _flush(self, client: _Client) -> None:
        while client.out:
            try:
                sent = client.sock.send(client.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(client)
                return
            del client.out[:sent]
        if not client.out and client.close_when_flushed:
            if client.linger:
                self._linger(client)
            else:
                self._close(client)
            return
        self._update_interest(client)

    def _linger(self, client: _Client) -> None:
        """Shut our side; keep reading (and discarding) until the peer closes or sends too much."""
        if client.lingering or client.closed:
            return
        try:
            client.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(client)
            return
        client.lingering = True
        self._selector.modify(client.sock, selectors.EVENT_READ, client)

    def _on_readable(self, client: _Client) -> None:
        try:
            data = client.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(client)
            return
        if client.lingering:
            client.drained += len(data)
            if not data or client.drained > _MAX_LINGER_BYTES:
                self._close(client)
            return
        try:
            client.h11.receive_data(data)
        except RuntimeError:  # data after the peer closed: h11 refuses it
            self._close(client)
            return
        self._process(client)
        if not data and not client.closed and not client.out:
            self._close(client)

    # --- HTTP ---------------------------------------------------------------------------------
    def _process(self, client: _Client) -> None:
        conn = client.h11
        while not client.closed and not client.close_when_flushed:
            if len(client.out) >= _MAX_PENDING_OUTPUT:
                return
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                self._parse_error(client, f"Invalid request: {e}")
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                    continue
                if conn.our_state is h11.MUST_CLOSE:
                    client.close_when_flushed = True
                    self._flush(client)
                return
            if isinstance(event, h11.Request):
                self._on_request(client, event)
            elif isinstance(event, h11.Data):
                client.body += event.data
                if len(client.body) > self.max_payload:
                    self._parse_error(
                        client, self._faults.payload_too_large_reason(len(client.body), self.max_payload)
                    )
            elif isinstance(event, h11.EndOfMessage):
                self._respond(client)
                if not client.closed and client.h11.our_state is h11.MUST_CLOSE:
                    # Connection: close (or HTTP/1.0): h11 answered with Connection: close.
                    client.close_when_flushed = True
                    self._flush(client)
                    return
            elif isinstance(event, h11.ConnectionClosed):
                client.close_when_flushed = True
                self._flush(client)
                return

    def _on_request(self, client: _Client, request: h11.Request) -> None:
        method = request.method.decode("ascii", "replace")
        if method not in self._router.METHODS:
            self._parse_error(client, self._faults.unsupported_method_reason())
            return
        if request.http_version not in (b"1.0", b"1.1"):
            self._parse_error(client, "Invalid HTTP Version: Unsupported HTTP version.")
            return
        length = _content_length(request)
        if length is not None and length > self.max_payload:
            self._parse_error(client, self._faults.payload_too_large_reason(length, self.max_payload))
            return
        client.request = request
        client.body = bytearray()
        if client.h11.they_are_waiting_for_100_continue:
            self._send(
                client,
                client.h11.send(
                    h11.InformationalResponse(status_code=self._faults.CONTINUE, headers=[], reason=b"")
                ),
            )

    def _respond(self, client: _Client) -> None:
        request = client.request
        assert request is not None
        method = request.method.decode("ascii")
        path = request.target.decode("latin-1")
        body = bytes(client.body)
        client.request, client.body = None, bytearray()
        self._log_request(method, path, body)

        if self.debug_log is not None and self._previous_call_us is not None:
            self.debug_log(f"Total previous API call duration: {self._previous_call_us} us.")
        started = time.monotonic_ns()
        status, payload, deprecated = self.answer(method, path, body)
        self._previous_call_us = (time.monotonic_ns() - started) // 1000
        if self.on_request is not None:
            self.on_request(method, path, status, deprecated)
        headers = [self._faults.SERVER_HEADER, (b"Connection", b"keep-alive")]
        if deprecated:
            headers.append(self._faults.DEPRECATION_HEADER)
        if payload is not None:
            headers += [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(payload))]
        conn = client.h11
        try:
            data = conn.send(h11.Response(status_code=status, headers=headers, reason=b""))
            if payload:
                data += conn.send(h11.Data(data=payload))
            data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as e:
            self._parse_error(client, f"Invalid request: {e}")
            return
        self._send(client, data)

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes | None, bool]:
        """(status, JSON body or None, deprecated) for one complete, well-formed request."""
        faults = self._faults
        result = self._router.route(method, path, body)
        deprecated = self._router.deprecation_of(result) is not None
        if isinstance(result, faults.ApiFault):
            status, payload = faults.api_fault_response(result)
            return status, payload, deprecated
        try:
            reply = self.dispatch(result)
        except Exception as e:  # noqa: BLE001 - the VMM side failed to answer
            reply = self._actions.InternalVmmError(f"{type(e).__name__}: {e}")
        if isinstance(reply, self._actions.VmmActionError):
            status, payload = faults.action_error_response(reply)
            return status, payload, deprecated
        encoded = self._bodies.encode(reply)
        return faults.success_status(encoded), encoded, deprecated

    def _parse_error(self, client: _Client, reason: str) -> None:
        """micro-http's parse-error answer; the connection is closed once it is written."""
        status, payload = self._faults.parse_error_response(reason)
        head = (
            f"HTTP/1.1 {status} \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        client.close_when_flushed = True
        client.linger = True
        self._send(client, head.encode() + payload)

    def _log_request(self, method: str, path: str, body: bytes) -> None:
        if self.log is None:
            return
        shown = method.capitalize()
        if path.startswith("/mmds") or path.startswith("/cpu-config"):
            self.log(f'The API server received a {shown} request on "{path}".')
        else:
            text = body.decode("utf-8", "replace")
            self.log(f'The API server received a {shown} request on "{path}" with body "{text}".')


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


__all__ = ["ApiServer", "bind_api_socket", "set_thread_name", "MAX_CONNECTIONS", "DEFAULT_MAX_PAYLOAD"]
