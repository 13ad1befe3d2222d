"""Firecracker-format metrics (sparkler.metrics) and the signal handlers that flush them."""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal

import pytest

from sparkler import metrics as M
from sparkler.host import signals

FIXED_MS = 1_700_000_000_000


def _metrics(tmp_path, **kwargs) -> tuple[M.Metrics, str]:
    path = str(tmp_path / "metrics.json")
    m = M.Metrics(clock_ms=lambda: FIXED_MS)
    m.init(path, **kwargs)
    return m, path


def _lines(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f.read().splitlines()]


def test_metrics_write_before_init_is_a_noop() -> None:
    assert M.Metrics().write() is False


def test_metrics_line_has_firecracker_groups_in_order(tmp_path) -> None:
    m, path = _metrics(tmp_path)
    assert m.write() is True
    (doc,) = _lines(path)
    assert list(doc) == ["utc_timestamp_ms", *M.GROUPS]
    assert doc["utc_timestamp_ms"] == FIXED_MS
    assert doc["put_api_requests"]["actions_count"] == 0
    assert doc["vcpu"]["exit_io_in_agg"] == {"min_us": 0, "max_us": 0, "sum_us": 0}
    assert set(doc["signals"]) == {"sigbus", "sigsegv", "sigxfsz", "sigxcpu", "sigpipe", "sighup", "sigill"}


def test_metrics_line_is_one_compact_json_object(tmp_path) -> None:
    m, path = _metrics(tmp_path)
    m.write()
    m.write()
    text = open(path).read()
    assert text.count("\n") == 2 and text.endswith("\n")
    assert " " not in text


def test_metrics_counters_report_delta_since_last_flush(tmp_path) -> None:
    m, path = _metrics(tmp_path)
    m.inc("put_api_requests", "actions_count", 3)
    m.write()
    m.write()
    m.inc("put_api_requests", "actions_count")
    m.write()
    counts = [doc["put_api_requests"]["actions_count"] for doc in _lines(path)]
    assert counts == [3, 0, 1]


def test_metrics_store_values_are_absolute(tmp_path) -> None:
    m, path = _metrics(tmp_path)
    m.store("latencies_us", "pause_vm", 42)
    m.write()
    m.write()
    assert [doc["latencies_us"]["pause_vm"] for doc in _lines(path)] == [42, 42]


def test_metrics_sources_are_reported_as_deltas(tmp_path) -> None:
    @dataclasses.dataclass(frozen=True)
    class Stats:
        read_count: int
        write_count: int

    state = {"n": 5}
    m, path = _metrics(tmp_path)
    m.add_source("uart", M.statistics_source(type("Dev", (), {"statistics": lambda self: Stats(1, state["n"])})()))
    m.write()
    state["n"] = 12
    m.write()
    uart = [doc["uart"] for doc in _lines(path)]
    assert [u["write_count"] for u in uart] == [5, 7]
    assert [u["read_count"] for u in uart] == [1, 0]


def test_metrics_device_groups_come_before_their_aggregate_and_sum_into_it(tmp_path) -> None:
    counts = {"a": {"read_count": 2, "write_bytes": 512}, "b": {"read_count": 5, "write_bytes": 0}}
    m, path = _metrics(tmp_path)
    m.add_device_source("block", "b", lambda: counts["b"])
    m.add_device_source("block", "a", lambda: counts["a"])
    m.write()
    counts["a"] = {"read_count": 3, "write_bytes": 1024}
    m.write()
    first, second = _lines(path)
    keys = list(first)
    assert keys.index("block_b") + 1 == keys.index("block_a") and keys.index("block_a") + 1 == keys.index("block")
    assert keys.index("balloon") < keys.index("block_b") and keys[keys.index("block") + 1] == "deprecated_api"
    assert list(first["block_a"]) == list(first["block"]) == [k for k, _ in M.GROUPS["block"]]
    assert first["block_a"]["read_count"] == 2 and first["block_b"]["read_count"] == 5
    assert first["block"]["read_count"] == 7 and first["block"]["write_bytes"] == 512
    assert first["block_a"]["read_agg"] == {"min_us": 0, "max_us": 0, "sum_us": 0}
    # deltas per device and in the aggregate
    assert second["block_a"]["read_count"] == 1 and second["block_a"]["write_bytes"] == 512
    assert second["block_b"]["read_count"] == 0
    assert second["block"]["read_count"] == 1


def test_metrics_device_source_needs_a_known_group(tmp_path) -> None:
    m, _ = _metrics(tmp_path)
    with pytest.raises(KeyError):
        m.add_device_source("nosuchgroup", "x", dict)


def test_metrics_attach_machine_registers_devices_that_opt_in(tmp_path) -> None:
    @dataclasses.dataclass(frozen=True)
    class Stats:
        flush_count: int

    class Device:
        metrics_group, metrics_id = "block", "rootfs"

        def statistics(self) -> Stats:
            return Stats(4)

    transport = type("Transport", (), {"device": Device()})()
    machine = type("Machine", (), {"devices": {"block_rootfs": transport, "other": object()}})()
    m, path = _metrics(tmp_path)
    M.attach_machine(m, machine)
    m.write()
    (doc,) = _lines(path)
    assert doc["block_rootfs"]["flush_count"] == 4 and doc["block"]["flush_count"] == 4


def test_metrics_vcpu_source_sums_over_vcpus() -> None:
    @dataclasses.dataclass
    class VcpuStats:
        pio_exits: int
        mmio_exits: int
        failures: int

    machine = type("Machine", (), {"statistics": lambda self: {"vcpu0": VcpuStats(3, 1, 0), "vcpu1": VcpuStats(2, 0, 1)}})()
    totals = M.vcpu_source(machine)()
    assert totals["exit_io_out"] == 5
    assert totals["exit_mmio_write"] == 1
    assert totals["failures"] == 1


def test_metrics_emit_id_and_properties_follow_the_timestamp(tmp_path) -> None:
    m, path = _metrics(tmp_path, emit_id=True, properties={"team": "vm"}, instance_id="vm-1")
    m.write()
    (doc,) = _lines(path)
    assert list(doc)[:4] == ["utc_timestamp_ms", "id", "properties", "api_server"]
    assert doc["id"] == "vm-1" and doc["properties"] == {"team": "vm"}


def test_metrics_init_twice_is_refused(tmp_path) -> None:
    m, _ = _metrics(tmp_path)
    with pytest.raises(ValueError, match="Reinitialization of metrics not allowed."):
        m.init(str(tmp_path / "other"))


def test_metrics_file_is_overwritten_from_offset_zero_not_truncated(tmp_path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text("x" * 20000)
    m = M.Metrics()
    m.init(str(path))
    m.write()
    text = path.read_text()
    assert text.startswith('{"utc_timestamp_ms"')
    assert len(text) == 20000  # no O_TRUNC: the tail of the old content remains


def test_metrics_fifo_opens_without_a_reader(tmp_path) -> None:
    fifo = tmp_path / "metrics.fifo"
    os.mkfifo(fifo)
    m = M.Metrics()
    m.init(str(fifo))  # O_RDWR: does not block
    assert m.write() is True
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert json.loads(os.read(reader, 1 << 16).decode())["logger"]["missed_metrics_count"] == 0
    finally:
        os.close(reader)
        m.close()


def test_metrics_failed_write_counts_missed_metrics_and_keeps_deltas(tmp_path) -> None:
    fifo = tmp_path / "metrics.fifo"
    os.mkfifo(fifo)
    m = M.Metrics()
    m.init(str(fifo))
    fd = m._fd
    # Fill the pipe so that the next line cannot be written (EAGAIN on the O_NONBLOCK fd).
    while True:
        try:
            os.write(fd, b"x" * 4096)
        except BlockingIOError:
            break
    m.inc("put_api_requests", "actions_count", 2)
    with pytest.raises(OSError):
        m.write()
    assert m.flush_quietly() is False
    assert m.get("logger", "missed_metrics_count") == 2
    # Drain, then the next line carries the counts of the failed flushes.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        while select.select([reader], [], [], 0)[0]:
            if not os.read(reader, 1 << 16):
                break
        assert m.write() is True
        doc = json.loads(os.read(reader, 1 << 16).decode())
    finally:
        os.close(reader)
        m.close()
    assert doc["put_api_requests"]["actions_count"] == 2
    assert doc["logger"]["missed_metrics_count"] == 2


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/", ("get_api_requests", "instance_info")),
        ("GET", "/machine-config", ("get_api_requests", "machine_cfg")),
        ("GET", "/version", ("get_api_requests", "vmm_version")),
        ("GET", "/vm/config", None),
        ("PUT", "/actions", ("put_api_requests", "actions")),
        ("PUT", "/boot-source", ("put_api_requests", "boot_source")),
        ("PUT", "/drives/rootfs", ("put_api_requests", "drive")),
        ("PATCH", "/machine-config", ("patch_api_requests", "machine_cfg")),
        ("PATCH", "/vm", None),
        ("DELETE", "/drives/x", None),
    ],
)
def test_api_request_metric_maps_firecracker_names(method, path, expected) -> None:
    assert M.api_request_metric(method, path) == expected


def test_metrics_count_api_request_counts_fails_for_errors(tmp_path) -> None:
    m, path = _metrics(tmp_path)
    m.count_api_request("PUT", "/machine-config", 204)
    m.count_api_request("PUT", "/machine-config", 400)
    m.count_api_request("PUT", "/machine-config", 204, deprecated=True)
    m.write()
    (doc,) = _lines(path)
    assert doc["put_api_requests"]["machine_cfg_count"] == 3
    assert doc["put_api_requests"]["machine_cfg_fails"] == 1
    assert doc["deprecated_api"]["deprecated_http_api_calls"] == 1


def test_periodic_timer_fires_and_is_acknowledged() -> None:
    timer = M.PeriodicTimer(0.01)
    try:
        ready, _, _ = select.select([timer.fd], [], [], 2)
        assert ready == [timer.fd]
        assert timer.acknowledge() >= 1
    finally:
        timer.close()


# --- signal handlers --------------------------------------------------------------------------------
class _Exit(Exception):
    pass


def _handlers(tmp_path):
    m, path = _metrics(tmp_path)
    logged: list[str] = []
    codes: list[int] = []

    def exit_fn(code: int) -> None:
        codes.append(code)
        raise _Exit

    return signals.SignalHandlers(m, logged.append, logged.append, exit_fn), path, logged, codes


@pytest.mark.parametrize(
    ("signum", "code", "group", "key"),
    [
        (signal.SIGHUP, 156, "signals", "sighup"),
        (signal.SIGBUS, 149, "signals", "sigbus"),
        (signal.SIGSEGV, 150, "signals", "sigsegv"),
        (signal.SIGXFSZ, 151, "signals", "sigxfsz"),
        (signal.SIGXCPU, 154, "signals", "sigxcpu"),
        (signal.SIGILL, 157, "signals", "sigill"),
        (signal.SIGSYS, 148, "seccomp", "num_faults"),
    ],
)
def test_signal_fatal_handler_logs_flushes_and_exits(tmp_path, signum, code, group, key) -> None:
    handlers, path, logged, codes = _handlers(tmp_path)
    with pytest.raises(_Exit):
        handlers.on_fatal(signum)
    assert codes == [code]
    assert logged[0] == f"Shutting down VM after intercepting signal {int(signum)}, code 0."
    (doc,) = _lines(path)
    assert doc[group][key] == 1


def test_signal_sigpipe_only_counts(tmp_path) -> None:
    handlers, path, logged, codes = _handlers(tmp_path)
    handlers.on_sigpipe(signal.SIGPIPE)
    handlers.on_sigpipe(signal.SIGPIPE)
    assert codes == []
    assert handlers.metrics.get("signals", "sigpipe") == 2
    assert logged == ["Received signal 13, code 0."] * 2
