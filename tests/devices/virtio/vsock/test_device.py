"""virtio-vsock device + muxer against real Unix sockets, the guest played by the mock driver."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.vsock import packet as P
from sparkler.devices.virtio.vsock.connection import CONN_TX_BUF_SIZE
from sparkler.devices.virtio.vsock.device import EVENT_QUEUE
from sparkler.devices.virtio.vsock.muxer import LOCAL_PORT_FIRST, parse_connect_line
from sparkler.testing.mock_driver import readable, writable
from tests.devices.virtio.vsock.helpers import EVENTS, GUEST_CID, HOST_CID, VsockRig, hdr

OP = P


@pytest.fixture
def rig(tmp_path):
    r = VsockRig(str(tmp_path / "v.sock"))
    yield r
    r.close()


def closed(sock) -> bool:
    """The peer closed ``sock`` (EOF, or a reset when it closed with our bytes unread)."""
    sock.settimeout(2)
    try:
        return sock.recv(16) == b""
    except ConnectionResetError:
        return True


def ops(got):
    return [h.op for h, _ in got]


def listen(path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(128)
    return s


def accept_host_connection(rig, guest_port=52, *, buf_alloc=256 * 1024):
    """Host connects through uds_path; the guest accepts. Returns (host socket, host port)."""
    host = rig.host_connect(guest_port)
    got = rig.pump_until(lambda g: any(h.op == OP.VIRTIO_VSOCK_OP_REQUEST for h, _ in g))
    req = next(h for h, _ in got if h.op == OP.VIRTIO_VSOCK_OP_REQUEST)
    assert (req.src_cid, req.dst_cid, req.dst_port) == (HOST_CID, GUEST_CID, guest_port)
    rig.send(hdr(OP.VIRTIO_VSOCK_OP_RESPONSE, guest_port, req.src_port, buf_alloc=buf_alloc))
    rig.pump(0.02)
    host.settimeout(2)
    assert host.recv(64) == f"OK {req.src_port}\n".encode()
    return host, req.src_port


def test_spec_5_10_4_config_space_is_guest_cid(rig):
    assert struct.unpack("<Q", rig.mmio.read_config(0, 8))[0] == GUEST_CID


def test_vsock_offers_firecracker_features_and_three_queues(rig):
    features = rig.mmio.device_features()
    assert features == (1 << spec.VIRTIO_F_VERSION_1) | (1 << spec.VIRTIO_F_IN_ORDER) | (
        1 << spec.VIRTIO_RING_F_EVENT_IDX
    )
    assert len(rig.device.queues) == 3


def test_parse_connect_line_firecracker_syntax():
    assert parse_connect_line(b"CONNECT 52\n") == 52
    assert parse_connect_line(b"connect 4294967295\n") == 0xFFFF_FFFF
    assert parse_connect_line(b"CONNECT 4294967296\n") is None
    assert parse_connect_line(b"CONNECT -1\n") is None
    assert parse_connect_line(b"OPEN 52\n") is None


def test_host_initiated_connection_echoes_both_ways(rig):
    host, port = accept_host_connection(rig)
    assert port == LOCAL_PORT_FIRST
    host.sendall(b"ping")
    got = rig.pump_until(lambda g: any(h.op == OP.VIRTIO_VSOCK_OP_RW for h, _ in g))
    assert [d for h, d in got if h.op == OP.VIRTIO_VSOCK_OP_RW] == [b"ping"]
    rig.send(hdr(OP.VIRTIO_VSOCK_OP_RW, 52, port, 4), b"pong")
    rig.pump(0.02)
    assert host.recv(16) == b"pong"
    assert rig.device.counters.conns_added == 1


def test_host_connection_bytes_after_connect_line_are_data(rig):
    host = rig.host_connect(52)
    host.sendall(b"early")
    got = rig.pump_until(lambda g: OP.VIRTIO_VSOCK_OP_REQUEST in ops(g))
    req = got[0][0]
    rig.send(hdr(OP.VIRTIO_VSOCK_OP_RESPONSE, 52, req.src_port))
    got = rig.pump_until(lambda g: OP.VIRTIO_VSOCK_OP_RW in ops(g))
    assert [d for h, d in got if h.op == OP.VIRTIO_VSOCK_OP_RW] == [b"early"]


def test_host_initiated_refused_by_guest_rst_closes_host_socket(rig):
    host = rig.host_connect(99)
    got = rig.pump_until(lambda g: OP.VIRTIO_VSOCK_OP_REQUEST in ops(g))
    req = got[0][0]
    rig.send(hdr(OP.VIRTIO_VSOCK_OP_RST, 99, req.src_port))
    rig.pump(0.02)
    host.settimeout(2)
    assert host.recv(16) == b""
    assert rig.device.muxer.conns == {}


def test_host_initiated_times_out_without_guest_answer(tmp_path):
    now = [0]
    r = VsockRig(str(tmp_path / "t.sock"), clock_ns=lambda: now[0])
    try:
        host = r.host_connect(7)
        r.pump_until(lambda g: OP.VIRTIO_VSOCK_OP_REQUEST in ops(g))
        now[0] += 2_000_000_001
        got = r.pump_until(lambda g: OP.VIRTIO_VSOCK_OP_RST in ops(g))
        assert got[-1][0].op == OP.VIRTIO_VSOCK_OP_RST
        host.settimeout(2)
        assert host.recv(16) == b""
        assert r.device.counters.conns_killed == 1
    finally:
        r.close()


@pytest.mark.parametrize("line", [b"HELLO 52\n", b"CONNECT x\n", b"CONNECT " + b"1" * 40])
def test_bad_connect_line_closes_host_socket(rig, line):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(rig.uds_path)
    s.sendall(line)
    rig.pump(0.05)
    assert closed(s)
    assert rig.device.muxer.conns == {} and rig.device.muxer.local_streams == {}


def test_guest_initiated_connection_to_uds_path_port(rig):
    server = listen(rig.uds_path + "_1234")
    rig.send(hdr(OP.VIRTIO_VSOCK_OP_REQUEST, 5000, 1234))
    got = rig.pump_until(lambda g: OP.VIRTIO_VSOCK_OP_RESPONSE in ops(g))
    resp = got[0][0]
    assert (resp.src_port, resp.dst_port, resp.buf_alloc) == (1234, 5000, CONN_TX_BUF_SIZE)
    peer, _ = server.accept()
    rig.send(hdr(OP.VIRTIO_VSOCK_OP_RW, 5000, 1234, 5), b"hello")
    rig.pump(0.02)
    peer.settimeout(2)
    assert peer.recv(16) == b"hello"
    peer.sendall(b"world")
    got = rig.pump_until(lambda g: OP.VIRTIO_VSOCK_OP_RW in ops(g))
    assert got[-1][1] == b"world"
    # The guest closes: SHUTDOWN both ways -> the host reads EOF and the guest gets an RST.
    rig.send(hdr(OP.VIRTIO_VSOCK_OP_SHUTDOWN, 5000, 1234, flags=OP.VIRTIO_VSOCK_SHUTDOWN_ALL))
    got = rig.pump_until(lambda g: OP.VIRTIO_VSOCK_OP_RST in ops(g))
    assert peer.recv(16) == b""
    assert rig.device.muxer.conns == {}
    server.close()


def test_guest_initiated_refused_gets_rst(rig):
    rig.send(hdr(OP.VIRTIO_VSOCK_OP_REQUEST, 5000, 4321))
    got = rig.pump_until(lambda g: OP.VIRTIO_VSOCK_OP_RST in ops(g))
    rst = got[0][0]
    assert (rst.src_cid, rst.dst_cid, rst.src_port, rst.dst_port) == (HOST_CID, GUEST_CID, 4321, 5000)


def test_host_peer_close_sends_shutdown_then_guest_rst_removes(rig):
    host, port = accept_host_connection(rig)
    host.close()
    got = rig.pump_until(lambda g: OP.VIRTIO_VSOCK_OP_SHUTDOWN in ops(g))
    sd = next(h for h, _ in got if h.op == OP.VIRTIO_VSOCK_OP_SHUTDOWN)
    assert sd.flags == OP.VIRTIO_VSOCK_SHUTDOWN_ALL
    rig.send(hdr(OP.VIRTIO_VSOCK_OP_RST, 52, port))
    rig.pump(0.02)
    assert rig.device.muxer.conns == {}
    assert rig.device.counters.conns_removed == 1


def test_guest_half_close_shuts_host_write_side(rig):
    host, port = accept_host_connection(rig)
    rig.send(hdr(OP.VIRTIO_VSOCK_OP_SHUTDOWN, 52, port, flags=OP.VIRTIO_VSOCK_SHUTDOWN_SEND))
    rig.pump(0.02)
    host.settimeout(2)
    assert host.recv(16) == b""  # EOF for the host's reader
    host.sendall(b"still")  # but the guest still receives
    got = rig.pump_until(lambda g: OP.VIRTIO_VSOCK_OP_RW in ops(g))
    assert got[-1][1] == b"still"


def test_credit_limits_what_the_host_sends_to_the_guest(rig):
    host, port = accept_host_connection(rig, buf_alloc=4096)
    host.sendall(bytes(20000))
    got = rig.pump_until(lambda g: OP.VIRTIO_VSOCK_OP_CREDIT_REQUEST in ops(g))
    assert sum(h.len for h, _ in got if h.op == OP.VIRTIO_VSOCK_OP_RW) == 4096
    rig.pump(0.05)
    assert not [h for h, _ in rig.received() if h.op == OP.VIRTIO_VSOCK_OP_RW]
    # The guest consumed it all: a credit update lets the next 4 KiB through.
    rig.send(hdr(OP.VIRTIO_VSOCK_OP_CREDIT_UPDATE, 52, port, buf_alloc=4096, fwd_cnt=4096))
    got = rig.pump_until(lambda g: sum(h.len for h, _ in g if h.op == OP.VIRTIO_VSOCK_OP_RW) >= 4096)
    assert sum(h.len for h, _ in got if h.op == OP.VIRTIO_VSOCK_OP_RW) == 4096


def test_credit_request_answered_with_credit_update(rig):
    host, port = accept_host_connection(rig)
    rig.send(hdr(OP.VIRTIO_VSOCK_OP_RW, 52, port, 100), bytes(100))
    rig.send(hdr(OP.VIRTIO_VSOCK_OP_CREDIT_REQUEST, 52, port))
    got = rig.pump_until(lambda g: OP.VIRTIO_VSOCK_OP_CREDIT_UPDATE in ops(g))
    upd = next(h for h, _ in got if h.op == OP.VIRTIO_VSOCK_OP_CREDIT_UPDATE)
    assert (upd.buf_alloc, upd.fwd_cnt) == (CONN_TX_BUF_SIZE, 100)


def test_guest_that_ignores_credit_is_reset_and_vmm_buffer_stays_bounded(rig):
    host, port = accept_host_connection(rig)
    host.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    chunk = bytes(60000)
    sent = 0
    for _ in range(40):  # the host never reads: 2.4 MB pushed against a 64 KiB credit
        rig.send(hdr(OP.VIRTIO_VSOCK_OP_RW, 52, port, len(chunk)), chunk)
        sent += 1
        conn = rig.device.muxer.conns.get((port, 52))
        if conn is None:
            break
        assert len(conn.tx_buf) <= CONN_TX_BUF_SIZE
    got = rig.pump_until(lambda g: OP.VIRTIO_VSOCK_OP_RST in ops(g))
    assert got[-1][0].op == OP.VIRTIO_VSOCK_OP_RST
    assert rig.device.counters.conns_killed == 1
    assert not rig.device.broken


def test_guest_that_never_reads_stalls_only_its_host_peer(rig):
    host, port = accept_host_connection(rig, buf_alloc=64 * 1024)
    host.setblocking(False)
    pushed = 0
    for _ in range(2000):
        rig.pump(0.001)
        try:
            pushed += host.send(bytes(65536))
        except BlockingIOError:
            break
    rig.pump(0.05)
    conn = rig.device.muxer.conns[(port, 52)]
    assert conn.rx_cnt <= 64 * 1024  # what the VMM moved is bounded by the guest's credit
    assert pushed > conn.rx_cnt  # the rest waits in the host's own socket buffers


def test_spoofed_source_cid_and_foreign_destination_are_dropped(rig):
    rig.send(hdr(OP.VIRTIO_VSOCK_OP_REQUEST, 1, 2, src_cid=99))
    rig.send(hdr(OP.VIRTIO_VSOCK_OP_REQUEST, 1, 2, dst_cid=7))
    rig.post_rx(4)
    rig.pump(0.05)
    assert rig.received() == []
    assert rig.device.counters.tx_queue_event_fails == 2


@pytest.mark.parametrize(
    "header",
    [
        hdr(OP.VIRTIO_VSOCK_OP_REQUEST, 1, 2, type_=OP.VIRTIO_VSOCK_TYPE_SEQPACKET),
        hdr(OP.VIRTIO_VSOCK_OP_RW, 1, 2),
        hdr(OP.VIRTIO_VSOCK_OP_SHUTDOWN, 1, 2),
        hdr(99, 1, 2),
    ],
)
def test_packet_for_no_connection_gets_rst(rig, header):
    rig.send(header)
    got = rig.pump_until(lambda g: OP.VIRTIO_VSOCK_OP_RST in ops(g))
    assert (got[0][0].src_port, got[0][0].dst_port) == (2, 1)


def test_rst_for_no_connection_is_ignored(rig):
    rig.send(hdr(OP.VIRTIO_VSOCK_OP_RST, 1, 2))
    rig.post_rx(2)
    rig.pump(0.05)
    assert rig.received() == []


def test_malformed_chains_are_counted_not_fatal(rig):
    rig.memory.write(0x900000, hdr(OP.VIRTIO_VSOCK_OP_RW, 1, 2, 1000).pack())
    rig.send_raw([writable(0x900000, 100)])  # device-writable TX buffer
    rig.send_raw([readable(0x900000, 20)])  # shorter than a header
    rig.send_raw([readable(0x900000, 100)])  # len 1000 beyond the chain
    assert rig.device.counters.tx_queue_event_fails == 3
    assert not rig.device.broken
    rig.send(hdr(OP.VIRTIO_VSOCK_OP_REQUEST, 5000, 4321))
    rig.pump_until(lambda g: OP.VIRTIO_VSOCK_OP_RST in ops(g))


def test_hundred_concurrent_host_connections(rig):
    hosts = [rig.host_connect(52) for _ in range(100)]
    got = rig.pump_until(lambda g: ops(g).count(OP.VIRTIO_VSOCK_OP_REQUEST) == 100, seconds=10)
    ports = sorted(h.src_port for h, _ in got if h.op == OP.VIRTIO_VSOCK_OP_REQUEST)
    assert ports == list(range(LOCAL_PORT_FIRST, LOCAL_PORT_FIRST + 100))
    for p in ports:
        rig.send(hdr(OP.VIRTIO_VSOCK_OP_RESPONSE, 52, p))
    rig.pump(0.05)
    for i, h in enumerate(hosts):
        h.settimeout(2)
        assert h.recv(32).startswith(b"OK ")
        h.sendall(f"msg{i:03d}".encode())
    got = rig.pump_until(lambda g: ops(g).count(OP.VIRTIO_VSOCK_OP_RW) == 100, seconds=10)
    by_port = {h.src_port: d for h, d in got if h.op == OP.VIRTIO_VSOCK_OP_RW}
    assert sorted(by_port.values()) == sorted(f"msg{i:03d}".encode() for i in range(100))


def test_transport_reset_event_and_connections_dropped(rig):
    host, port = accept_host_connection(rig)
    rig.queues[EVENT_QUEUE].add_chain([writable(EVENTS, 4)])
    rig.mmio.kick(EVENT_QUEUE)
    assert rig.device.send_transport_reset()
    used = rig.queues[EVENT_QUEUE].take_used()
    assert used and used[0][1] == 4
    assert rig.memory.read_u32(EVENTS) == OP.VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
    host.settimeout(2)
    assert host.recv(16) == b""
    assert rig.device.muxer.conns == {}


def test_close_stops_listening_and_leaves_the_socket_file(tmp_path):
    r = VsockRig(str(tmp_path / "c.sock"))
    assert os.path.exists(r.uds_path)
    r.close()
    assert os.path.exists(r.uds_path)  # as Firecracker: the owner removes it before reusing the path
    with pytest.raises(ConnectionRefusedError):
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(r.uds_path)


def test_statistics_use_firecracker_names(rig):
    from sparkler.metrics import GROUPS

    names = {k for k, _ in GROUPS["vsock"]}
    assert set(vars(rig.device.statistics())) == names
