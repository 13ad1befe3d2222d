"""api.server.ApiServer over a real Unix socket, with the channel, controller and fake machine."""

import http.client
import json
import os
import re
import selectors
import socket
import threading
import time

import pytest

from sparkler.api.server import ApiServer, bind_api_socket
from sparkler.errors import HostError
from sparkler.testing.fake_machine import FakeBuilder
from sparkler.vmm.channel import Channel
from sparkler.vmm.controller import Controller


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=5):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class Vmm:
    """Server on its fc_api thread + a VMM thread draining the channel into the controller."""

    def __init__(self, path, max_payload=51200):
        self.channel = Channel()
        self.builder = FakeBuilder()
        self.controller = Controller(self.builder, instance_id="test_vm", channel=self.channel)
        self.server = ApiServer(str(path), self.channel.call, max_payload=max_payload)
        self.path = str(path)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        sel = selectors.DefaultSelector()
        sel.register(self.channel.fd, selectors.EVENT_READ)
        while not self._stop.is_set():
            if sel.select(0.05):
                self.controller.process_channel()
        sel.close()

    def start(self):
        self.server.start()
        self._thread.start()

    def stop(self):
        self.server.shutdown()
        self._stop.set()
        self._thread.join(2)
        self.channel.close()

    def client(self):
        return UnixHTTPConnection(self.path)

    def raw(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(self.path)
        return sock


@pytest.fixture
def vmm(tmp_path):
    v = Vmm(tmp_path / "api.sock")
    v.start()
    yield v
    v.stop()


def request(conn, method, path, doc=None, raw_body=None):
    body = raw_body if raw_body is not None else (None if doc is None else json.dumps(doc))
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    return response, (json.loads(data) if data else None)


_PENDING: dict[int, bytes] = {}  # bytes read past the end of a response, per socket (pipelining)


def recv_response(sock):
    """One complete response from a raw socket (headers + Content-Length body).

    Responses to pipelined requests can arrive in one recv(); bytes past this response are kept
    for the next call on the same socket.
    """
    data = _PENDING.pop(sock.fileno(), b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        rest += chunk
    if len(rest) > length:
        _PENDING[sock.fileno()] = rest[length:]
    return head + b"\r\n\r\n" + rest[:length]


# --- framing ------------------------------------------------------------------------------------
def test_server_get_root_framing_is_firecrackers(vmm):
    sock = vmm.raw()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    response = recv_response(sock)
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 "
    assert b"Server: Firecracker API" in lines
    assert b"Connection: keep-alive" in lines
    assert b"Content-Type: application/json" in lines
    assert json.loads(body) == {
        "id": "test_vm",
        "state": "Not started",
        "vmm_version": "1.17.0-dev",
        "app_name": "Firecracker",
    }
    sock.close()


def test_server_204_has_no_content_headers(vmm):
    sock = vmm.raw()
    body = b'{"vcpu_count": 2, "mem_size_mib": 256}'
    sock.sendall(
        b"PUT /machine-config HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    response = recv_response(sock)
    assert response.startswith(b"HTTP/1.1 204 \r\n")
    assert b"Content-Length" not in response and b"Content-Type" not in response
    sock.close()


def test_server_fault_body(vmm):
    conn = vmm.client()
    response, doc = request(conn, "PUT", "/actions", {"action_type": "FlushMetrics"})
    assert response.status == 400
    assert doc == {"fault_message": "The requested operation is not supported before starting the microVM."}


def test_server_deprecation_header(vmm):
    conn = vmm.client()
    response, _ = request(
        conn, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2"}
    )
    assert response.status == 204
    assert response.getheader("Deprecation") == "true"
    response, _ = request(conn, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
    assert response.getheader("Deprecation") is None


def test_server_keep_alive_full_boot_sequence(vmm, tmp_path):
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    conn = vmm.client()
    assert request(conn, "PUT", "/boot-source", {"kernel_image_path": str(kernel)})[0].status == 204
    assert request(conn, "PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256})[0].status == 204
    assert request(conn, "PUT", "/actions", {"action_type": "InstanceStart"})[0].status == 204
    assert request(conn, "GET", "/")[1]["state"] == "Running"
    assert request(conn, "PATCH", "/vm", {"state": "Paused"})[0].status == 204
    assert request(conn, "GET", "/")[1]["state"] == "Paused"
    _, config = request(conn, "GET", "/vm/config")
    assert config["boot-source"]["kernel_image_path"] == str(kernel)
    assert config["machine-config"]["vcpu_count"] == 2
    response, doc = request(conn, "PUT", "/boot-source", {"kernel_image_path": str(kernel)})
    assert response.status == 400
    assert doc["fault_message"] == "The requested operation is not supported after starting the microVM."
    assert vmm.builder.machine.calls == ["start", "pause"]
    conn.close()


def test_server_pipelined_requests_answered_in_order(vmm):
    sock = vmm.raw()
    sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n" * 3 + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    responses = [recv_response(sock) for _ in range(4)]
    assert all(r.startswith(b"HTTP/1.1 200 ") for r in responses)
    assert b"firecracker_version" in responses[2] and b"app_name" in responses[3]
    sock.close()


def test_server_expect_100_continue(vmm):
    sock = vmm.raw()
    body = b'{"state": "Paused"}'
    sock.sendall(
        b"PATCH /vm HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    assert recv_response(sock).startswith(b"HTTP/1.1 100 ")
    sock.sendall(body)
    assert recv_response(sock).startswith(b"HTTP/1.1 400 ")
    sock.close()


# --- HTTP-level errors --------------------------------------------------------------------------
def test_server_post_is_parse_error(vmm):
    conn = vmm.client()
    response, doc = request(conn, "POST", "/actions", {"action_type": "InstanceStart"})
    assert response.status == 400
    assert doc == {
        "error": "Invalid HTTP Method: Unsupported HTTP method.\nAll previous unanswered requests will be dropped."
    }


def test_server_oversize_payload_by_content_length(vmm):
    conn = vmm.client()
    big = json.dumps({"kernel_image_path": "x" * 60000})
    response, doc = request(conn, "PUT", "/boot-source", raw_body=big)
    assert response.status == 400
    assert doc["error"].startswith(f"Request payload with size {len(big)} is larger than the limit of 51200")


def test_server_oversize_payload_chunked(vmm):
    sock = vmm.raw()
    chunk = b"x" * 30000
    sock.sendall(
        b"PUT /boot-source HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 2
        + b"0\r\n\r\n"
    )
    response = recv_response(sock)
    assert response.startswith(b"HTTP/1.1 400 ")
    assert b"larger than the limit of 51200" in response
    sock.close()


def test_server_payload_limit_is_configurable(tmp_path):
    v = Vmm(tmp_path / "small.sock", max_payload=16)
    v.start()
    try:
        response, doc = request(v.client(), "PUT", "/actions", {"action_type": "InstanceStart"})
        assert response.status == 400 and "limit of 16" in doc["error"]
        response, _ = request(v.client(), "PATCH", "/vm", raw_body='{"state":"X"}')
        assert response.status == 400
    finally:
        v.stop()


def test_server_payload_at_limit_is_accepted(vmm):
    body = json.dumps({"kernel_image_path": "/nonexistent"})
    body = body[:-1] + " " * (51200 - len(body)) + "}"
    response, doc = request(vmm.client(), "PUT", "/boot-source", raw_body=body)
    assert response.status == 400
    assert doc["fault_message"].startswith("Boot source error")


def test_server_thousand_malformed_requests_then_still_answers(vmm):
    garbage = [
        b"\x00\x01\x02\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    ]
    for i in range(1000):
        sock = vmm.raw()
        sock.sendall(garbage[i % len(garbage)])
        response = recv_response(sock)
        assert response.startswith(b"HTTP/1.1 400 "), response
        sock.close()
    response, doc = request(vmm.client(), "GET", "/version")
    assert response.status == 200 and doc == {"firecracker_version": "1.17.0-dev"}


def test_server_malformed_requests_on_one_connection_close_it(vmm):
    sock = vmm.raw()
    sock.sendall(b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"Unsupported HTTP method" in recv_response(sock)
    assert sock.recv(4096) == b""  # closed: the rest was dropped
    sock.close()


# --- connection limit ---------------------------------------------------------------------------
def wait_for(predicate, timeout=2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_server_eleventh_connection_gets_503(vmm):
    socks = [vmm.raw() for _ in range(10)]
    assert wait_for(lambda: vmm.server.connection_count == 10)
    extra = vmm.raw()
    response = extra.recv(4096)
    assert response == (
        b"HTTP/1.1 503\r\nServer: Firecracker API\r\nConnection: close\r\nContent-Length: 40\r\n\r\n"
        b'{ "error": "Too many open connections" }'
    )
    assert extra.recv(4096) == b""
    extra.close()
    # The ten admitted connections still work.
    for sock in socks:
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        assert recv_response(sock).startswith(b"HTTP/1.1 200 ")
    socks[0].close()
    assert wait_for(lambda: vmm.server.connection_count == 9)
    again = vmm.raw()
    again.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert recv_response(again).startswith(b"HTTP/1.1 200 ")
    for sock in socks[1:] + [again]:
        sock.close()


def test_server_connection_close_header_closes(vmm):
    sock = vmm.raw()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert recv_response(sock).startswith(b"HTTP/1.1 200 ")
    assert sock.recv(10) == b""
    assert wait_for(lambda: vmm.server.connection_count == 0)
    sock.close()


# --- socket and thread --------------------------------------------------------------------------
def test_server_thread_is_named_fc_api_in_the_kernel(vmm):
    tid = vmm.server._thread.native_id
    with open(f"/proc/{os.getpid()}/task/{tid}/comm") as f:
        assert f.read().strip() == "fc_api"


def test_server_replaces_stale_socket(tmp_path):
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    sock = bind_api_socket(str(path))
    sock.close()


def test_server_refuses_non_socket_path(tmp_path):
    path = tmp_path / "file"
    path.write_text("precious")
    with pytest.raises(HostError, match="is not a socket"):
        bind_api_socket(str(path))
    assert path.read_text() == "precious"


def test_server_shutdown_removes_socket(tmp_path):
    v = Vmm(tmp_path / "gone.sock")
    v.start()
    v.stop()
    assert not (tmp_path / "gone.sock").exists()


def test_server_logs_requests(tmp_path):
    lines = []
    channel = Channel()
    controller = Controller(FakeBuilder(), channel=channel)
    server = ApiServer(str(tmp_path / "log.sock"), controller.handle, log=lines.append)
    server.start()
    try:
        request(
            UnixHTTPConnection(str(tmp_path / "log.sock")), "PUT", "/actions", {"action_type": "FlushMetrics"}
        )
    finally:
        server.shutdown()
        channel.close()
    assert lines == [
        'The API server received a Put request on "/actions" with body "{"action_type": "FlushMetrics"}".'
    ]


def test_server_debug_log_reports_previous_call_duration(tmp_path):
    lines = []
    channel = Channel()
    controller = Controller(FakeBuilder(), instance_id="test_vm", channel=channel)
    server = ApiServer(str(tmp_path / "d.sock"), lambda a: controller.handle(a), debug_log=lines.append)
    server.start()
    try:
        conn = UnixHTTPConnection(str(tmp_path / "d.sock"))
        request(conn, "GET", "/version")
        assert lines == []  # nothing before the first call has finished
        request(conn, "GET", "/")
        assert len(lines) == 1
        assert re.fullmatch(r"Total previous API call duration: \d+ us\.", lines[0])
    finally:
        server.shutdown()
        channel.close()
