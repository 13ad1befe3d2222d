"""Property: whatever bytes a client sends, the server answers or closes, and keeps serving."""

import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparkler.testing.fake_machine import FakeVmm

REQUEST_LINES = st.sampled_from(
    [
        b"GET / HTTP/1.1\r\n",
        b"PUT /actions HTTP/1.1\r\n",
        b"PATCH /vm HTTP/1.1\r\n",
        b"POST / HTTP/1.1\r\n",
        b"",
    ]
)
HEADERS = st.lists(
    st.sampled_from(
        [
            b"Host: x\r\n",
            b"Content-Length: 5\r\n",
            b"Content-Length: -1\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Expect: 100-continue\r\n",
            b"Connection: close\r\n",
            b"X: \xff\r\n",
            b"\r\n",
        ]
    ),
    max_size=5,
)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    with FakeVmm(str(tmp_path_factory.mktemp("fuzz") / "api.sock")) as vmm:
        yield vmm


def exchange(path, data):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received
    finally:
        sock.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(REQUEST_LINES, HEADERS, st.binary(max_size=64))
def test_server_any_input_is_answered_or_closed(fake, line, headers, tail):
    received = exchange(fake.socket_path, line + b"".join(headers) + tail)
    assert received == b"" or received.startswith(b"HTTP/1.1 ")
    assert exchange(fake.socket_path, b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n").startswith(
        b"HTTP/1.1 200 "
    )
