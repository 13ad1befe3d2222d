"""Firecracker-format metrics (catalog section 8.2). Stdlib only; every module may import it.

One flush writes one compact JSON object and ``\\n`` with a single ``write(2)`` to the metrics
destination, which is opened like the log file: ``O_RDWR|O_CREAT|O_NONBLOCK`` without
``O_APPEND``/``O_TRUNC`` (so a FIFO opens without a reader and an existing file is overwritten from
offset 0). Before :meth:`Metrics.init` a flush is a no-op that returns False.

Kinds of values, as in Firecracker:

* **counters** (``SharedIncMetric``): every flush reports the *delta since the previous successful
  flush* (``inc(group, key)`` from anywhere, or a *source*, below);
* **store** metrics (``SharedStoreMetric``): absolute values (start-up times, latencies, the deadly
  signals, ``seccomp.num_faults``, ``vmm.panic_count``, ``*_agg.min_us/max_us``).

A *source* is a callable returning cumulative counts for one group (a device's ``statistics()``,
a machine's vCPU totals); the registry remembers the values of the last flush and reports the
difference, so devices keep plain monotonically growing counters and know nothing of metrics.

Flush triggers (wired by the runtime): right after the VM is built, then every 60 s
(:class:`PeriodicTimer`, a timerfd the VMM thread's event loop selects on), on ``FlushMetrics``,
at exit, and in the fatal-signal handlers (``sparkler.host.signals``). A failed write counts
``logger.missed_metrics_count`` and ``logger.metrics_fails`` and raises ``OSError`` (so
``FlushMetrics`` answers 400); periodic flushes use :meth:`Metrics.flush_quietly`. The deltas of a
failed flush are not lost: they are reported by the next successful one.

Groups and keys are Firecracker's, in its emission order. Device groups for devices Sparkler does not
have (block, net, vsock, balloon, entropy) are emitted with zeros, as Firecracker does when a device
is absent. ``pmem``/``vhost_user``/``memory_hotplug`` are not emitted yet.

Per-device groups (catalog 8.2): a device source registered with :meth:`Metrics.add_device_source`
(``group``, ``device_id``) is emitted as ``<group>_<device_id>`` with the aggregate group's keys,
right before the aggregate, and is also summed into the aggregate (Firecracker's ``block_<drive_id>``
... then ``block``). A device opts in by having ``metrics_group``, ``metrics_id`` and
``statistics()`` (see :func:`attach_machine`).

Use the module-level default instance: ``from sparkler import metrics; metrics.METRICS.inc(...)``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

WRITE_METRICS_PERIOD_S = 60  # Firecracker's WRITE_METRICS_PERIOD_MS = 60000

INC = "inc"
STORE = "store"
AGG = "agg"  # LatencyAggregateMetrics: {"min_us": store, "max_us": store, "sum_us": inc}

REINIT_ERROR = "Reinitialization of metrics not allowed."


def _inc(*keys: str) -> list[tuple[str, str]]:
    return [(k, INC) for k in keys]


def _store(*keys: str) -> list[tuple[str, str]]:
    return [(k, STORE) for k in keys]


def _counted(*names: str) -> list[tuple[str, str]]:
    return [(f"{n}_{suffix}", INC) for n in names for suffix in ("count", "fails")]


# Firecracker's FirecrackerMetrics, in serialization order (utc_timestamp_ms, id and properties are
# written before these).
GROUPS: dict[str, list[tuple[str, str]]] = {
    "api_server": _store("process_startup_time_us", "process_startup_time_cpu_us"),
    "balloon": _inc(
        "activate_fails", "inflate_count", "stats_updates_count", "stats_update_fails", "deflate_count",
        "event_fails", "free_page_report_count", "free_page_report_freed", "free_page_report_fails",
        "free_page_hint_count", "free_page_hint_freed", "free_page_hint_fails",
    ),
    "block": _inc(
        "activate_fails", "cfg_fails", "no_avail_buffer", "event_fails", "execute_fails",
        "invalid_reqs_count", "flush_count", "queue_event_count", "rate_limiter_event_count",
        "update_count", "update_fails", "read_bytes", "write_bytes", "read_count", "write_count",
    )
    + [("read_agg", AGG), ("write_agg", AGG)]
    + _inc("rate_limiter_throttled_events", "io_engine_throttled_events", "remaining_reqs_count"),
    "deprecated_api": _inc("deprecated_http_api_calls"),
    "get_api_requests": _inc(
        "instance_info_count", "machine_cfg_count", "mmds_count", "vmm_version_count", "hotplug_memory_count"
    ),
    "i8042": _inc("error_count", "missed_read_count", "missed_write_count", "read_count", "reset_count", "write_count"),
    "uart": _inc(
        "error_count", "flush_count", "missed_read_count", "missed_write_count", "read_count", "write_count",
        "rate_limiter_dropped_bytes",
    ),
    "latencies_us": _store(
        "full_create_snapshot", "diff_create_snapshot", "load_snapshot", "pause_vm", "resume_vm",
        "vmm_full_create_snapshot", "vmm_diff_create_snapshot", "vmm_load_snapshot", "vmm_pause_vm",
        "vmm_resume_vm",
    ),
    "logger": _inc("missed_metrics_count", "metrics_fails", "missed_log_count", "rate_limited_log_count"),
    "mmds": _inc(
        "rx_accepted", "rx_accepted_err", "rx_accepted_unusual", "rx_bad_eth", "rx_invalid_token", "rx_no_token",
        "rx_count", "tx_bytes", "tx_count", "tx_errors", "tx_frames", "connections_created",
        "connections_destroyed",
    ),
    "net": _inc(
        "activate_fails", "cfg_fails", "no_rx_avail_buffer", "no_tx_avail_buffer",
        "event_fails", "rx_queue_event_count", "rx_event_rate_limiter_count", "rx_rate_limiter_throttled",
        "rx_tap_event_count", "rx_bytes_count", "rx_packets_count", "rx_fails", "rx_count", "tap_read_fails",
        "tap_write_fails",
    )
    + [("tap_write_agg", AGG)]
    + _inc(
        "tx_bytes_count", "tx_malformed_frames", "tx_fails", "tx_count", "tx_packets_count",
        "tx_queue_event_count", "tx_rate_limiter_event_count", "tx_rate_limiter_throttled",
        "tx_spoofed_mac_count", "tx_remaining_reqs_count",
    ),
    "patch_api_requests": _counted("drive", "network", "machine_cfg", "mmds", "hotplug_memory", "pmem"),
    "put_api_requests": _counted(
        "actions", "boot_source", "drive", "logger", "machine_cfg", "cpu_cfg", "metrics", "network", "mmds",
        "vsock", "pmem", "serial", "hotplug_memory",
    ),
    "seccomp": _store("num_faults"),
    "vcpu": _inc("exit_io_in", "exit_io_out", "exit_mmio_read", "exit_mmio_write", "failures", "kvmclock_ctrl_fails")
    + [("exit_io_in_agg", AGG), ("exit_io_out_agg", AGG), ("exit_mmio_read_agg", AGG), ("exit_mmio_write_agg", AGG)],
    "vmm": _store("panic_count"),
    # The deadly signals are store metrics (0 or 1); sigpipe is a counter.
    "signals": _store("sigbus", "sigsegv", "sigxfsz", "sigxcpu") + _inc("sigpipe") + _store("sighup", "sigill"),
    "vsock": _inc(
        "activate_fails", "cfg_fails", "rx_queue_event_fails", "tx_queue_event_fails", "ev_queue_event_fails",
        "muxer_event_fails", "conn_event_fails", "rx_queue_event_count", "tx_queue_event_count",
        "rx_bytes_count", "tx_bytes_count", "rx_packets_count", "tx_packets_count", "conns_added",
        "conns_killed", "conns_removed", "killq_resync", "tx_flush_fails", "tx_write_fails", "rx_read_fails",
    ),
    "entropy": _inc(
        "activate_fails", "entropy_event_fails", "entropy_event_count", "entropy_bytes", "host_rng_fails",
        "entropy_rate_limiter_throttled", "rate_limiter_event_count",
    ),
    "interrupts": _inc("triggers", "config_updates"),
}

# (method, first path segment) -> (group, key prefix). Firecracker counts every request it parses
# for these resources (``<x>_count``) and a failure (``<x>_fails``) when the request is refused.
_GET_KEYS = {
    "": "instance_info",
    "machine-config": "machine_cfg",
    "mmds": "mmds",
    "version": "vmm_version",
    "hotplug": "hotplug_memory",
}
_PUT_KEYS = {
    "actions": "actions",
    "boot-source": "boot_source",
    "drives": "drive",
    "logger": "logger",
    "machine-config": "machine_cfg",
    "cpu-config": "cpu_cfg",
    "metrics": "metrics",
    "network-interfaces": "network",
    "mmds": "mmds",
    "vsock": "vsock",
    "pmem": "pmem",
    "serial": "serial",
    "hotplug": "hotplug_memory",
}
_PATCH_KEYS = {
    "drives": "drive",
    "network-interfaces": "network",
    "machine-config": "machine_cfg",
    "mmds": "mmds",
    "hotplug": "hotplug_memory",
    "pmem": "pmem",
}


def api_request_metric(method: str, path: str) -> tuple[str, str] | None:
    """``(group, key prefix)`` counting a request, or None (Firecracker counts only some paths).

    >>> api_request_metric("PUT", "/machine-config")
    ('put_api_requests', 'machine_cfg')
    """
    segment = path.split("?", 1)[0].strip("/").split("/", 1)[0]
    method = method.upper()
    if method == "GET":
        prefix = _GET_KEYS.get(segment)
        return None if prefix is None else ("get_api_requests", prefix)
    if method == "PUT":
        prefix = _PUT_KEYS.get(segment)
        return None if prefix is None else ("put_api_requests", prefix)
    if method == "PATCH":
        prefix = _PATCH_KEYS.get(segment)
        return None if prefix is None else ("patch_api_requests", prefix)
    return None


class Metrics:
    """The metrics registry and its destination; thread-safe."""

    def __init__(self, clock_ms: Callable[[], int] | None = None) -> None:
        # RLock: a signal handler runs on the main thread, possibly while it is inside a flush.
        self._lock = threading.RLock()
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._fd: int | None = None
        self._path: str | None = None
        self._emit_id = False
        self._instance_id = "anonymous-instance"
        self._properties: dict[str, str] | None = None
        self._values: dict[str, dict[str, int]] = {g: {} for g in GROUPS}  # cumulative counters, stores
        self._reported: dict[str, dict[str, int]] = {g: {} for g in GROUPS}  # counters at last flush
        self._sources: dict[str, list[Callable[[], Mapping[str, int]]]] = {}
        # group -> {device_id: source}; emitted as "<group>_<device_id>" before "<group>"
        self._device_sources: dict[str, dict[str, Callable[[], Mapping[str, int]]]] = {}
        self.flush_count = 0

    # --- configuration ---------------------------------------------------------------------------
    @property
    def initialized(self) -> bool:
        return self._fd is not None

    @property
    def path(self) -> str | None:
        return self._path

    def init(
        self,
        path: str,
        *,
        emit_id: bool = False,
        properties: Mapping[str, str] | None = None,
        instance_id: str | None = None,
    ) -> None:
        """Open the destination (once). Raises ValueError on a second call, OSError if it cannot open."""
        with self._lock:
            if self._fd is not None:
                raise ValueError(REINIT_ERROR)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
            self._fd, self._path = fd, path
            self._emit_id = emit_id
            self._properties = dict(properties) if properties else None
            if instance_id is not None:
                self._instance_id = instance_id

    def configure(self, config: Any) -> None:
        """``PUT /metrics`` / the config file's ``metrics``: a MetricsConfig-like object."""
        self.init(
            config.metrics_path,
            emit_id=bool(getattr(config, "emit_id", False)),
            properties=getattr(config, "properties", None),
        )

    def set_instance_id(self, instance_id: str) -> None:
        self._instance_id = instance_id

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                try:
                    os.close(self._fd)
                except OSError:
                    pass
            self._fd = self._path = None

    # --- recording -------------------------------------------------------------------------------
    def inc(self, group: str, key: str, n: int = 1) -> None:
        with self._lock:
            values = self._values[group]
            values[key] = values.get(key, 0) + n

    def store(self, group: str, key: str, value: int) -> None:
        with self._lock:
            self._values[group][key] = int(value)

    def get(self, group: str, key: str) -> int:
        """The current cumulative (counter) or stored value."""
        with self._lock:
            return self._values[group].get(key, 0)

    def add_source(self, group: str, source: Callable[[], Mapping[str, int]]) -> None:
        """Report ``source()``'s cumulative counts (summed over the group's sources) as deltas."""
        with self._lock:
            self._sources.setdefault(group, []).append(source)

    def add_device_source(self, group: str, device_id: str, source: Callable[[], Mapping[str, int]]) -> None:
        """Report one device's counts as ``<group>_<device_id>`` (the aggregate group's keys, emitted
        before it) and add them to the aggregate ``group``. A second source for the same id replaces it."""
        if group not in GROUPS:
            raise KeyError(f"no metrics group {group!r}")
        with self._lock:
            self._device_sources.setdefault(group, {})[device_id] = source

    def clear_sources(self) -> None:
        with self._lock:
            self._sources.clear()
            self._device_sources.clear()

    def _read_source(self, source: Callable[[], Mapping[str, int]]) -> Mapping[str, int] | None:
        try:
            return source()
        except Exception:  # noqa: BLE001 - a broken source must not stop the flush
            self._values["logger"]["metrics_fails"] = self._values["logger"].get("metrics_fails", 0) + 1
            return None

    def count_api_request(self, method: str, path: str, status: int, deprecated: bool = False) -> None:
        """Count one API request (``<x>_count``) and, for a 4xx/5xx answer, a failure (``<x>_fails``);
        a request that used a deprecated field counts ``deprecated_api.deprecated_http_api_calls``."""
        if deprecated:
            self.inc("deprecated_api", "deprecated_http_api_calls")
        metric = api_request_metric(method, path)
        if metric is None:
            return
        group, prefix = metric
        self.inc(group, f"{prefix}_count")
        if status >= 400 and group != "get_api_requests":
            self.inc(group, f"{prefix}_fails")

    # --- serialization ---------------------------------------------------------------------------
    def snapshot(self) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
        """The document to write now and the counter values to remember once it is written."""
        with self._lock:
            current = {g: dict(v) for g, v in self._values.items()}
            for group, sources in self._sources.items():
                totals = current.setdefault(group, {})
                for source in sources:
                    counts = self._read_source(source)
                    for key, value in (counts or {}).items():
                        totals[key] = totals.get(key, 0) + int(value)
            per_device: dict[str, list[tuple[str, dict[str, int]]]] = {}
            for group, sources_by_id in self._device_sources.items():
                totals = current.setdefault(group, {})
                for device_id, source in sources_by_id.items():
                    counts = {k: int(v) for k, v in (self._read_source(source) or {}).items()}
                    per_device.setdefault(group, []).append((f"{group}_{device_id}", counts))
                    for key, value in counts.items():
                        totals[key] = totals.get(key, 0) + value
            doc: dict[str, Any] = {"utc_timestamp_ms": self._clock_ms()}
            if self._emit_id:
                doc["id"] = self._instance_id
            if self._properties:
                doc["properties"] = dict(self._properties)
            commit: dict[str, dict[str, int]] = {}
            for group, layout in GROUPS.items():
                for name, values in per_device.get(group, ()):
                    doc[name], commit[name] = self._render_group(layout, values, self._reported.get(name, {}))
                doc[group], commit[group] = self._render_group(layout, current.get(group, {}), self._reported[group])
            return doc, commit

    @staticmethod
    def _render_group(
        layout: list[tuple[str, str]], values: Mapping[str, int], previous: Mapping[str, int]
    ) -> tuple[dict[str, Any], dict[str, int]]:
        out: dict[str, Any] = {}
        done: dict[str, int] = {}
        for key, kind in layout:
            if kind == STORE:
                out[key] = values.get(key, 0)
            elif kind == INC:
                value = values.get(key, 0)
                out[key] = max(0, value - previous.get(key, 0))
                done[key] = value
            else:
                sum_key = f"{key}.sum_us"
                value = values.get(sum_key, 0)
                out[key] = {
                    "min_us": values.get(f"{key}.min_us", 0),
                    "max_us": values.get(f"{key}.max_us", 0),
                    "sum_us": max(0, value - previous.get(sum_key, 0)),
                }
                done[sum_key] = value
        return out, done

    def render(self) -> tuple[bytes, dict[str, dict[str, int]]]:
        doc, commit = self.snapshot()
        return json.dumps(doc, separators=(",", ":")).encode() + b"\n", commit

    def write(self) -> bool:
        """Flush one line. False when metrics are not initialized; OSError when the write failed
        (``logger.missed_metrics_count`` and ``logger.metrics_fails`` are counted)."""
        with self._lock:
            if self._fd is None:
                return False
            line, commit = self.render()
            try:
                written = os.write(self._fd, line)
                if written != len(line):  # a FIFO took part of the line: the line is lost
                    raise OSError(0, f"short write ({written} of {len(line)} bytes)")
            except OSError:
                self.inc("logger", "missed_metrics_count")
                self.inc("logger", "metrics_fails")
                raise
            for group, done in commit.items():
                self._reported.setdefault(group, {}).update(done)
            self.flush_count += 1
            return True

    def flush_quietly(self) -> bool:
        """A periodic/exit flush: failures are only counted."""
        try:
            return self.write()
        except OSError:
            return False

    def flush_for_signal(self, timeout: float = 1.0) -> None:
        """Best effort from a fatal-signal handler: never blocks for long, never raises."""
        if not self._lock.acquire(timeout=timeout):
            return
        try:
            self.flush_quietly()
        except Exception:  # noqa: BLE001 - the process is about to exit
            pass
        finally:
            self._lock.release()


# --- sources for the devices Sparkler has ------------------------------------------------------------
def statistics_source(device: Any) -> Callable[[], Mapping[str, int]]:
    """A source from a component whose ``statistics()`` returns a frozen dataclass of counters."""
    import dataclasses

    def source() -> Mapping[str, int]:
        stats = device.statistics()
        if dataclasses.is_dataclass(stats):
            return dataclasses.asdict(stats)  # type: ignore[arg-type]
        return dict(stats)

    return source


def vcpu_source(machine: Any) -> Callable[[], Mapping[str, int]]:
    """The ``vcpu`` group from ``Machine.statistics()`` (``{"vcpu0": VcpuStatistics, ...}``).

    Firecracker splits port I/O and MMIO exits by direction. A vCPU whose statistics have the split
    (``io_in_exits``/``io_out_exits``/``mmio_read_exits``/``mmio_write_exits``) is reported exactly;
    with only the totals (``pio_exits``/``mmio_exits``), the totals are reported under
    ``exit_io_out`` and ``exit_mmio_write`` (guests mostly write to devices).
    """

    def source() -> Mapping[str, int]:
        totals = {"exit_io_in": 0, "exit_io_out": 0, "exit_mmio_read": 0, "exit_mmio_write": 0, "failures": 0}
        for stats in machine.statistics().values():
            if hasattr(stats, "io_in_exits"):
                totals["exit_io_in"] += stats.io_in_exits
                totals["exit_io_out"] += stats.io_out_exits
                totals["exit_mmio_read"] += stats.mmio_read_exits
                totals["exit_mmio_write"] += stats.mmio_write_exits
            else:
                totals["exit_io_out"] += getattr(stats, "pio_exits", 0)
                totals["exit_mmio_write"] += getattr(stats, "mmio_exits", 0)
            totals["failures"] += getattr(stats, "failures", 0)
        return totals

    return source


def logger_source(logger_statistics: Callable[[], Any]) -> Callable[[], Mapping[str, int]]:
    def source() -> Mapping[str, int]:
        stats = logger_statistics()
        return {
            "missed_log_count": stats.missed_log_count,
            "rate_limited_log_count": stats.rate_limited_log_count,
        }

    return source


def attach_machine(metrics: Metrics, machine: Any) -> None:
    """Register the sources of a built machine: uart, i8042 and the vCPU exit counters."""
    devices = getattr(machine, "devices", {}) or {}
    if devices.get("serial") is not None and hasattr(devices["serial"], "statistics"):
        metrics.add_source("uart", statistics_source(devices["serial"]))
    if devices.get("i8042") is not None and hasattr(devices["i8042"], "statistics"):
        metrics.add_source("i8042", statistics_source(devices["i8042"]))
    if hasattr(machine, "statistics"):
        metrics.add_source("vcpu", vcpu_source(machine))
    # virtio devices (behind their transport's ``.device``) that report per-device groups
    for component in devices.values():
        device = getattr(component, "device", component)
        group, device_id = getattr(device, "metrics_group", None), getattr(device, "metrics_id", None)
        if group in GROUPS and device_id and hasattr(device, "statistics"):
            metrics.add_device_source(group, device_id, statistics_source(device))
    for group in ("balloon", "entropy"):  # one device each; machine.devices holds its transport
        device = getattr(devices.get(group), "device", None)
        if device is not None and hasattr(device, "statistics"):
            metrics.add_source(group, statistics_source(device))
    vsock = getattr(devices.get("vsock"), "device", None)
    if vsock is not None and hasattr(vsock, "statistics"):
        metrics.add_source("vsock", statistics_source(vsock))


# --- the periodic timer ------------------------------------------------------------------------------
class PeriodicTimer:
    """A ``timerfd`` (CLOCK_MONOTONIC) that becomes readable every ``period_s`` seconds.

    Python 3.11 has no ``os.timerfd_create``; this calls libc through ctypes. ``fd`` goes into the
    VMM thread's event loop; call :meth:`acknowledge` (reads the expiry count) when it is readable.
    """

    CLOCK_MONOTONIC = 1
    TFD_CLOEXEC = 0o2000000
    TFD_NONBLOCK = 0o4000

    def __init__(self, period_s: float = WRITE_METRICS_PERIOD_S) -> None:
        import ctypes

        class timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        class itimerspec(ctypes.Structure):
            _fields_ = [("it_interval", timespec), ("it_value", timespec)]

        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.timerfd_create(self.CLOCK_MONOTONIC, self.TFD_CLOEXEC | self.TFD_NONBLOCK)
        if fd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"timerfd_create: {os.strerror(errno)}")
        sec, frac = divmod(period_s, 1)
        period = timespec(int(sec), int(frac * 1e9))
        spec = itimerspec(period, period)
        if libc.timerfd_settime(fd, 0, ctypes.byref(spec), None) != 0:
            errno = ctypes.get_errno()
            os.close(fd)
            raise OSError(errno, f"timerfd_settime: {os.strerror(errno)}")
        self.fd = fd

    def acknowledge(self) -> int:
        """Number of expirations since the last call (0 if none)."""
        try:
            return int.from_bytes(os.read(self.fd, 8), "little")
        except BlockingIOError:
            return 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# --- the default registry ----------------------------------------------------------------------------
METRICS = Metrics()


__all__ = [
    "GROUPS",
    "METRICS",
    "Metrics",
    "PeriodicTimer",
    "REINIT_ERROR",
    "WRITE_METRICS_PERIOD_S",
    "api_request_metric",
    "attach_machine",
    "logger_source",
    "statistics_source",
    "vcpu_source",
]
