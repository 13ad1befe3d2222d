"""virtio-vsock end to end: the probe guest's polling driver and host programs on the Unix sockets."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest

from tests.e2e.vsock_vm import VsockVm, echo_server, guest_pattern


def _assert_clean(vm: VsockVm, code) -> None:
    assert code == 0, vm.describe()
    assert vm.reports.finished, vm.describe()
    assert not vm.reports.fails, vm.describe()


def _echo_roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload`` while reading the echo in parallel; the echoed bytes."""
    got = bytearray()

    def reader() -> None:
        while len(got) < len(payload):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            got.extend(chunk)

    t = threading.Thread(target=reader)
    t.start()
    sock.sendall(payload)
    t.join(120)
    return bytes(got)


def test_host_initiated_echo_100_parallel_connections(kvm, probe_kernel, tmp_path):
    with VsockVm(tmp_path, probe_kernel, "probe.vsock=listen probe.vsock_port=52 probe.vsock_conns=100") as vm:
        vm.wait_line("vsock_ready")
        payloads = [os.urandom(8192 + 97 * i) for i in range(100)]
        results: dict[int, bytes] = {}
        errors: list[BaseException] = []

        def client(i: int) -> None:
            try:
                sock, _ = vm.connect(52)
                with sock:
                    results[i] = _echo_roundtrip(sock, payloads[i])
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert not errors, (errors[:3], vm.describe())
        assert all(hashlib.sha256(results[i]).digest() == hashlib.sha256(payloads[i]).digest() for i in range(100))
        _assert_clean(vm, vm.wait())
        assert vm.reports.passed("vsock_listen")


def test_host_initiated_100_mib_stream_echo_intact(kvm, probe_kernel, tmp_path):
    size = 100 << 20
    with VsockVm(tmp_path, probe_kernel, "probe.vsock=listen probe.vsock_conns=1") as vm:
        vm.wait_line("vsock_ready")
        sock, port = vm.connect(52)
        assert port >= 1 << 30
        payload = os.urandom(1 << 20) * 100
        with sock:
            echoed = _echo_roundtrip(sock, payload)
        assert len(echoed) == size
        assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(payload).hexdigest()
        _assert_clean(vm, vm.wait())
        assert vm.reports.named("vsock_listen", "PASS")[0].fields["bytes"] == str(size)


def test_guest_initiated_echo_100_parallel_connections(kvm, probe_kernel, tmp_path):
    args = "probe.vsock=connect probe.vsock_port=1234 probe.vsock_conns=100 probe.vsock_bytes=20000"
    with VsockVm(tmp_path, probe_kernel, args) as vm:
        stats: dict = {}
        server = vm.listen(1234)
        done = echo_server(server, count=100, stats=stats)
        _assert_clean(vm, vm.wait(180))
        done.join(10)
        assert vm.reports.passed("vsock_connect")
        expected = {(20000, hashlib.sha256(guest_pattern(20000, i)).hexdigest()) for i in range(100)}
        assert set(stats["digests"]) == expected


def test_guest_initiated_100_mib_stream_intact(kvm, probe_kernel, tmp_path):
    size = 100 << 20
    args = f"probe.vsock=connect probe.vsock_port=1234 probe.vsock_conns=1 probe.vsock_bytes={size}"
    with VsockVm(tmp_path, probe_kernel, args) as vm:
        stats: dict = {}
        server = vm.listen(1234)
        done = echo_server(server, count=1, stats=stats)
        _assert_clean(vm, vm.wait(300))
        done.join(10)
        assert stats["digests"] == [(size, hashlib.sha256(guest_pattern(size, 0)).hexdigest())]
        assert vm.reports.named("vsock_connect", "PASS")[0].fields["bytes"] == str(size)


def test_refused_and_peer_closed_connections_both_sides(kvm, probe_kernel, tmp_path):
    # Guest side: a connect to host port 9 (nothing listens) gets RST; a connect to port 10, whose
    # host end closes at once, gets SHUTDOWN. Host side: CONNECT to a guest port nobody listens on
    # is closed by the VMM; the guest then still serves its echo streams.
    args = "probe.vsock=connect probe.vsock_refused=9 probe.vsock_close_port=10 probe.vsock_conns=2 probe.vsock_bytes=5000"
    with VsockVm(tmp_path, probe_kernel, args) as vm:
        closer = vm.listen(10)

        def close_at_once() -> None:
            conn, _ = closer.accept()
            conn.close()

        threading.Thread(target=close_at_once, daemon=True).start()
        server = vm.listen(52)  # probe.vsock_port defaults to 52
        done = echo_server(server, count=2)
        vm.wait_line("vsock_ready")
        host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        host.settimeout(30)
        host.connect(vm.uds_path)
        host.sendall(b"CONNECT 4444\n")  # the guest is not listening (connect mode): RST -> closed
        assert host.recv(16) == b""
        _assert_clean(vm, vm.wait(120))
        done.join(10)
        assert vm.reports.passed("vsock_refused")
        assert vm.reports.passed("vsock_peer_close")
        assert vm.reports.passed("vsock_connect")


def test_garbage_packets_and_broken_queue_do_not_crash_the_vmm(kvm, probe_kernel, tmp_path):
    with VsockVm(tmp_path, probe_kernel, "probe.vsock=garbage") as vm:
        _assert_clean(vm, vm.wait(120))
        assert vm.reports.passed("vsock_garbage")
        assert vm.reports.passed("vsock_broken")


@pytest.mark.parametrize("cid", [3, 0xFFFF_FFFF])
def test_guest_reads_its_cid_from_config_space(kvm, probe_kernel, tmp_path, cid):
    with VsockVm(tmp_path, probe_kernel, "probe.vsock=garbage", guest_cid=cid) as vm:
        vm.wait_line("vsock_ready")
        _assert_clean(vm, vm.wait(120))
        assert vm.reports.named("vsock_init", "PASS")[0].fields["cid"] == str(cid)
