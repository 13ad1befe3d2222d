"""Typed client for the Firecracker API of a Sparkler (or Firecracker) process.

One method per endpoint; request bodies are the same msgspec models the server decodes
(``sparkler.config``), so a body the client builds is a body the server accepts. Errors come
back as :class:`ApiError` carrying the status and Firecracker's ``fault_message`` (or the
HTTP-level ``error``). One keep-alive connection over the Unix socket, re-opened once if the
server closed it.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

import msgspec

from sparkler.config import VmmConfig
from sparkler.config.boot_source import BootSourceConfig
from sparkler.config.cpu_config import CpuConfig
from sparkler.config.logger import LoggerConfig
from sparkler.config.machine import MachineConfig, MachineConfigUpdate
from sparkler.config.metrics import MetricsConfig
from sparkler.config.mmds import MmdsConfig
from sparkler.config.serial import SerialConfig
from sparkler.config.vm import FirecrackerVersion, InstanceInfo


class ApiError(Exception):
    """The API refused a request."""

    def __init__(self, method: str, path: str, status: int, body: bytes) -> None:
        self.method, self.path, self.status, self.body = method, path, status, body
        self.fault_message = ""
        try:
            doc = json.loads(body) if body else {}
        except ValueError:
            doc = {}
        if isinstance(doc, dict):
            self.fault_message = str(doc.get("fault_message") or doc.get("error") or "")
        self.deprecated = False
        super().__init__(
            f"{method} {path} -> {status}: {self.fault_message or body.decode('utf-8', 'replace')}"
        )


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    """``Client("/run/firecracker.socket")``; also a context manager closing the connection."""

    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout
        self._conn: _UnixConnection | None = None
        # Whether the last response carried ``Deprecation: true``.
        self.last_deprecated = False

    # --- transport ----------------------------------------------------------------------------
    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, body: Any = None) -> bytes:
        """Send one request; returns the response body (b"" for 204) or raises ApiError."""
        payload = None if body is None else (body if isinstance(body, bytes) else msgspec.json.encode(body))
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = _UnixConnection(self.socket_path, self.timeout)
            try:
                self._conn.request(method, path, body=payload, headers=headers)
                response = self._conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt:
                    raise
                continue
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            self.last_deprecated = response.getheader("Deprecation") == "true"
            if response.status >= 300:
                error = ApiError(method, path, response.status, data)
                error.deprecated = self.last_deprecated
                raise error
            return data
        raise AssertionError("unreachable")

    def _get(self, path: str, model: Any) -> Any:
        return msgspec.json.decode(self.request("GET", path), type=model)

    # --- endpoints ----------------------------------------------------------------------------
    def describe_instance(self) -> InstanceInfo:
        """GET /"""
        return self._get("/", InstanceInfo)

    def version(self) -> str:
        """GET /version"""
        return self._get("/version", FirecrackerVersion).firecracker_version

    def start(self) -> None:
        """PUT /actions InstanceStart"""
        self.request("PUT", "/actions", {"action_type": "InstanceStart"})

    def send_ctrl_alt_del(self) -> None:
        """PUT /actions SendCtrlAltDel"""
        self.request("PUT", "/actions", {"action_type": "SendCtrlAltDel"})

    def flush_metrics(self) -> None:
        """PUT /actions FlushMetrics"""
        self.request("PUT", "/actions", {"action_type": "FlushMetrics"})

    def put_boot_source(self, config: BootSourceConfig) -> None:
        """PUT /boot-source"""
        self.request("PUT", "/boot-source", config)

    def get_machine_config(self) -> MachineConfig:
        """GET /machine-config"""
        return self._get("/machine-config", MachineConfig)

    def put_machine_config(self, config: MachineConfig) -> None:
        """PUT /machine-config (a None cpu_template is left out: the current template is kept)."""
        doc = msgspec.to_builtins(config)
        if doc.get("cpu_template") is None:
            doc.pop("cpu_template", None)
        self.request("PUT", "/machine-config", doc)

    def patch_machine_config(self, update: MachineConfigUpdate) -> None:
        """PATCH /machine-config (only the fields that are set)."""
        doc = {k: v for k, v in msgspec.to_builtins(update).items() if v is not None}
        self.request("PATCH", "/machine-config", doc)

    def put_cpu_config(self, config: CpuConfig) -> None:
        """PUT /cpu-config"""
        self.request("PUT", "/cpu-config", config)

    def put_logger(self, config: LoggerConfig) -> None:
        """PUT /logger"""
        self.request("PUT", "/logger", config)

    def put_metrics(self, config: MetricsConfig) -> None:
        """PUT /metrics"""
        self.request("PUT", "/metrics", config)

    def put_serial(self, config: SerialConfig) -> None:
        """PUT /serial"""
        self.request("PUT", "/serial", config)

    def put_mmds(self, document: Any) -> None:
        """PUT /mmds: replace the metadata store (any JSON value)."""
        self.request("PUT", "/mmds", msgspec.json.encode(document))

    def patch_mmds(self, patch: Any) -> None:
        """PATCH /mmds: RFC 7396 merge patch of the metadata store (None deletes a key)."""
        self.request("PATCH", "/mmds", msgspec.json.encode(patch))

    def get_mmds(self) -> Any:
        """GET /mmds: the metadata store."""
        return msgspec.json.decode(self.request("GET", "/mmds"))

    def put_mmds_config(self, config: MmdsConfig) -> None:
        """PUT /mmds/config (pre-boot; the interfaces must exist)."""
        self.request("PUT", "/mmds/config", config)

    def pause(self) -> None:
        """PATCH /vm Paused"""
        self.request("PATCH", "/vm", {"state": "Paused"})

    def resume(self) -> None:
        """PATCH /vm Resumed"""
        self.request("PATCH", "/vm", {"state": "Resumed"})

    def get_vm_config(self) -> dict[str, Any]:
        """GET /vm/config as a document (Firecracker's FullVmConfiguration)."""
        return json.loads(self.request("GET", "/vm/config"))

    def get_vm_config_typed(self) -> VmmConfig:
        """GET /vm/config decoded as a VmmConfig (the --config-file model)."""
        return msgspec.json.decode(self.request("GET", "/vm/config"), type=VmmConfig)


__all__ = ["ApiError", "Client"]
