"""HTTP request -> VMM action: a pure function, no I/O (Firecracker's ``parsed_request.rs``).

``route(method, path, body)`` returns one ``VmmAction`` carrying a decoded, typed config model,
or an ``ApiFault`` with Firecracker's message. It never raises.

Firecracker's rules, in the order it applies them:

* The path is split on ``/`` after the leading slashes; the first token names the resource.
  A query string is ignored.
* A GET with a body fails with ``GET request cannot have a body.``; a PUT or PATCH without one
  with ``Empty PUT request.`` / ``Empty PATCH request.``; a DELETE with one with
  ``Empty Delete request.`` (sic). Anything else unknown is
  ``Invalid request method and/or path: <METHOD> <path>.``
* Bodies are JSON objects decoded with unknown fields rejected; every decoding problem is
  ``An error occurred when deserializing the json body of a request: <detail>.``
* Resource IDs in paths (``/drives/{drive_id}``, ``/network-interfaces/{iface_id}``,
  ``/pmem/{id}``) are non-empty, alphanumeric or ``_`` only, and equal the body's ID.
* Endpoints of devices Sparkler does not provide yet are recognised (so their ID and method
  rules hold) and answered with a "not supported by this version of Sparkler yet" fault.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from sparkler.api.faults import ApiFault
from sparkler.config.actions import InstanceActionInfo
from sparkler.config.boot_source import BootSourceConfig
from sparkler.config.cpu_config import CpuConfig
from sparkler.config.logger import LoggerConfig
from sparkler.config.machine import MachineConfig, MachineConfigUpdate
from sparkler.config.metrics import MetricsConfig
from sparkler.config.serial import SerialConfig
from sparkler.config.vm import VmStateUpdate
from sparkler.vmm import actions as A

METHODS = ("GET", "PUT", "PATCH", "DELETE")

DESERIALIZE_PREFIX = "An error occurred when deserializing the json body of a request: "
EMPTY_ID = "The ID cannot be empty."
INVALID_ID = "API Resource IDs can only contain alphanumeric characters and underscores."
ID_MISMATCH = "The id from the path does not match the id from the body!"
EMPTY_PATCH = "Empty PATCH request."
CPU_TEMPLATE_DEPRECATION = "PUT/PATCH /machine-config: cpu_template field is deprecated."

_METHOD_BODY_ERRORS = {
    "GET": "GET request cannot have a body.",
    "PUT": "Empty PUT request.",
    "PATCH": "Empty PATCH request.",
    "DELETE": "Empty Delete request.",
}


class _Fault(Exception):
    """Internal: unwinds a parse function into an ApiFault."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- helpers ------------------------------------------------------------------------------------
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `([^`]*)`(?: - at `([^`]*)`)?$")
_MISSING_FIELD = re.compile(r"^Object missing required field `([^`]*)`(?: - at `([^`]*)`)?$")


def _describe_decode_error(error: Exception, model: type | None) -> str:
    """msgspec's message in serde's words where they differ (unknown/missing field)."""
    text = str(error)
    m = _UNKNOWN_FIELD.match(text)
    if m:
        name, where = m.group(1), m.group(2)
        detail = f"unknown field `{name}`"
        if where is None and model is not None and hasattr(model, "__struct_fields__"):
            expected = ", ".join(f"`{f}`" for f in model.__struct_fields__)
            detail += f", expected one of {expected}"
        return detail + (f" at `{where}`" if where else "")
    m = _MISSING_FIELD.match(text)
    if m:
        name, where = m.group(1), m.group(2)
        return f"missing field `{name}`" + (f" at `{where}`" if where else "")
    if isinstance(error, msgspec.DecodeError) and not isinstance(error, msgspec.ValidationError):
        return f"invalid JSON: {text}"
    return text


def _decode(body: bytes, model: type) -> Any:
    try:
        return msgspec.json.decode(body, type=model)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise _Fault(DESERIALIZE_PREFIX + _describe_decode_error(e, model) + ".") from None


def check_resource_id(resource_id: str | None) -> str:
    """Firecracker's ``checked_id``: non-empty, alphanumerics (Unicode-aware) or '_' only."""
    if not resource_id:
        raise _Fault(EMPTY_ID)
    if not all(c.isalnum() or c == "_" for c in resource_id):
        raise _Fault(INVALID_ID)
    return resource_id


def _not_supported(what: str) -> _Fault:
    return _Fault(f"{A.NotSupportedError.category}: {what} is not supported by this version of Sparkler yet.")


def split_path(path: str) -> list[str]:
    """Path tokens after the leading slashes, without a query; trailing empty token dropped."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    if "://" in path:  # absolute-form request target: http://host/path
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    tokens = path.lstrip("/").split("/")
    if len(tokens) > 1 and tokens[-1] == "":
        tokens.pop()
    return tokens


# --- parse functions: one per resource ----------------------------------------------------------
def parse_put_actions(body: bytes) -> A.VmmAction:
    info = _decode(body, InstanceActionInfo)
    match info.action_type:
        case "InstanceStart":
            return A.StartMicroVm()
        case "SendCtrlAltDel":
            return A.SendCtrlAltDel()
        case _:
            return A.FlushMetrics()


def parse_put_boot_source(body: bytes) -> A.VmmAction:
    return A.PutBootSource(_decode(body, BootSourceConfig))


def parse_put_machine_config(body: bytes) -> A.VmmAction:
    # Firecracker's types first: smt, track_dirty_pages, huge_pages (and the two sizes) are not
    # Option<T> there, so an explicit null is refused ("expected a boolean"); only cpu_template
    # may be null. Then the all-optional model, so both required fields are checked by name.
    _decode(body, MachineConfig)
    update: MachineConfigUpdate = _decode(body, MachineConfigUpdate)
    for required in ("vcpu_count", "mem_size_mib"):
        if getattr(update, required) is None:
            raise _Fault(DESERIALIZE_PREFIX + f"missing field `{required}`.")
    defaults = MachineConfig()
    config = MachineConfig(
        vcpu_count=update.vcpu_count,  # type: ignore[arg-type]
        mem_size_mib=update.mem_size_mib,  # type: ignore[arg-type]
        smt=update.smt if update.smt is not None else defaults.smt,
        cpu_template=update.cpu_template,
        track_dirty_pages=update.track_dirty_pages if update.track_dirty_pages is not None else False,
        huge_pages=update.huge_pages if update.huge_pages is not None else defaults.huge_pages,
    )
    sets_template = update.cpu_template is not None
    return A.PutMachineConfig(
        config,
        sets_cpu_template=sets_template,
        deprecation=CPU_TEMPLATE_DEPRECATION if sets_template else None,
    )


def parse_patch_machine_config(body: bytes) -> A.VmmAction:
    update: MachineConfigUpdate = _decode(body, MachineConfigUpdate)
    if all(getattr(update, f) is None for f in update.__struct_fields__):
        raise _Fault(EMPTY_PATCH)
    deprecation = CPU_TEMPLATE_DEPRECATION if update.cpu_template is not None else None
    return A.PatchMachineConfig(update, deprecation=deprecation)


def parse_put_cpu_config(body: bytes) -> A.VmmAction:
    return A.PutCpuConfig(_decode(body, CpuConfig))


def parse_put_logger(body: bytes) -> A.VmmAction:
    return A.PutLogger(_decode(body, LoggerConfig))


def parse_put_metrics(body: bytes) -> A.VmmAction:
    return A.PutMetrics(_decode(body, MetricsConfig))


def parse_put_serial(body: bytes) -> A.VmmAction:
    return A.PutSerial(_decode(body, SerialConfig))


def parse_patch_vm(body: bytes) -> A.VmmAction:
    return A.PatchVmState(_decode(body, VmStateUpdate).state)


def _device_with_id(
    what: str, id_field: str, body_required: bool
) -> Callable[[list[str], bytes], A.VmmAction]:
    """A not-yet-supported per-ID device endpoint with Firecracker's ID rules enforced."""

    def parse(rest: list[str], body: bytes) -> A.VmmAction:
        resource_id = check_resource_id(rest[0] if rest else None)
        if body_required:
            document = _decode(body, dict)
            if document.get(id_field) != resource_id:
                raise _Fault(ID_MISMATCH)
        raise _not_supported(what)

    return parse


def parse_put_drive(rest: list[str], body: bytes) -> A.VmmAction:
    """PUT /drives/{drive_id}: the body's drive_id must be the path's."""
    from sparkler.config.drive import DriveConfig
    from sparkler.vmm.actions import PutDrive

    drive_id = check_resource_id(rest[0] if rest else None)
    if len(rest) > 1:
        raise _invalid_path("PUT", "/drives/" + "/".join(rest))
    if _decode(body, dict).get("drive_id") != drive_id:
        raise _Fault(ID_MISMATCH)
    return PutDrive(_decode(body, DriveConfig))  # type: ignore[return-value]


def parse_patch_drive(rest: list[str], body: bytes) -> A.VmmAction:
    """PATCH /drives/{drive_id} (after boot): path_on_host and/or rate_limiter."""
    from sparkler.config.drive import DriveUpdate
    from sparkler.vmm.actions import PatchDrive

    drive_id = check_resource_id(rest[0] if rest else None)
    if len(rest) > 1:
        raise _invalid_path("PATCH", "/drives/" + "/".join(rest))
    if _decode(body, dict).get("drive_id") != drive_id:
        raise _Fault(ID_MISMATCH)
    return PatchDrive(_decode(body, DriveUpdate))  # type: ignore[return-value]


def _decode_any(body: bytes) -> Any:
    """Any JSON value (the MMDS store takes arbitrary JSON)."""
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError) as e:
        raise _Fault(DESERIALIZE_PREFIX + _describe_decode_error(e, None) + ".") from None


def parse_put_mmds(body: bytes) -> A.VmmAction:
    return A.PutMmds(_decode_any(body))


def parse_patch_mmds(body: bytes) -> A.VmmAction:
    return A.PatchMmds(_decode_any(body))


def parse_put_mmds_config(body: bytes) -> A.VmmAction:
    from sparkler.config.mmds import V1_DEPRECATION, MmdsConfig

    config: MmdsConfig = _decode(body, MmdsConfig)
    # V1 is deprecated, including when it is the default (catalog 1.1, Deprecation).
    return A.PutMmdsConfig(config, deprecation=V1_DEPRECATION if config.version == "V1" else None)


def _mmds_other(rest: list[str], body: bytes) -> A.VmmAction:
    """/mmds/<token> beyond the routed ones: PATCH ignores the suffix (as Firecracker does)."""
    raise _Fault(f"Unrecognized PUT request path `{rest[0]}`.")


def _patch_mmds_any(rest: list[str], body: bytes) -> A.VmmAction:
    return parse_patch_mmds(body)


def _get_mmds_other(rest: list[str], body: bytes) -> A.VmmAction:
    raise _Fault(f"Unrecognized GET request path `{rest[0]}`.")


def parse_put_entropy(body: bytes) -> A.VmmAction:
    from sparkler.config.entropy import EntropyConfig

    return A.PutEntropy(_decode(body, EntropyConfig))


def parse_put_balloon(body: bytes) -> A.VmmAction:
    from sparkler.config.balloon import BalloonConfig

    return A.PutBalloon(_decode(body, BalloonConfig))


def parse_patch_balloon(body: bytes) -> A.VmmAction:
    from sparkler.config.balloon import BalloonUpdate

    return A.PatchBalloon(_decode(body, BalloonUpdate))


def parse_patch_balloon_stats(body: bytes) -> A.VmmAction:
    from sparkler.config.balloon import BalloonStatsUpdate

    return A.PatchBalloonStats(_decode(body, BalloonStatsUpdate))


def _balloon_other(method: str) -> Callable[[list[str], bytes], A.VmmAction]:
    """/balloon paths the body/GET tables do not serve: hinting (not provided yet) or unknown."""

    def parse(rest: list[str], body: bytes) -> A.VmmAction:
        if rest and rest[0] == "hinting" and len(rest) == 2:
            raise _not_supported("Free page hinting (/balloon/hinting)")
        raise _invalid_path(method, "/" + "/".join(["balloon", *rest]))

    return parse


def parse_put_vsock(rest: list[str], body: bytes) -> A.VmmAction:
    """PUT /vsock (pre-boot): guest_cid and uds_path; the deprecated vsock_id is accepted."""
    from sparkler.config.vsock import DEPRECATION, VsockConfig

    if rest:
        raise _invalid_path("PUT", "/vsock/" + "/".join(rest))
    config: VsockConfig = _decode(body, VsockConfig)
    deprecation = DEPRECATION if config.vsock_id is not None else None
    return A.PutVsock(config.without_deprecated(), deprecation=deprecation)


NET_ID_MISMATCH = "The id from the path [{path}] does not match the id from the body [{body}]!"


def _net_body(method: str, rest: list[str], body: bytes) -> str:
    iface_id = check_resource_id(rest[0] if rest else None)
    if len(rest) > 1:
        raise _invalid_path(method, "/network-interfaces/" + "/".join(rest))
    body_id = _decode(body, dict).get("iface_id")
    if body_id != iface_id:
        raise _Fault(NET_ID_MISMATCH.format(path=iface_id, body=body_id))
    return iface_id


def parse_put_network_interface(rest: list[str], body: bytes) -> A.VmmAction:
    """PUT /network-interfaces/{iface_id}: the body's iface_id must be the path's."""
    from sparkler.config.net import NetworkInterfaceConfig
    from sparkler.vmm.actions import PutNetworkInterface

    _net_body("PUT", rest, body)
    return PutNetworkInterface(_decode(body, NetworkInterfaceConfig))  # type: ignore[return-value]


def parse_patch_network_interface(rest: list[str], body: bytes) -> A.VmmAction:
    """PATCH /network-interfaces/{iface_id} (after boot): rx/tx rate limiters."""
    from sparkler.config.net import NetworkInterfaceUpdate
    from sparkler.vmm.actions import PatchNetworkInterface

    _net_body("PATCH", rest, body)
    return PatchNetworkInterface(_decode(body, NetworkInterfaceUpdate))  # type: ignore[return-value]


def _device(what: str) -> Callable[[list[str], bytes], A.VmmAction]:
    def parse(rest: list[str], body: bytes) -> A.VmmAction:
        raise _not_supported(what)

    return parse


# --- route tables -------------------------------------------------------------------------------
# (method, first token, rest of the path) -> parse function of the body.
_BODY_ROUTES: dict[tuple[str, str, tuple[str, ...]], Callable[[bytes], A.VmmAction]] = {
    ("PUT", "actions", ()): parse_put_actions,
    ("PUT", "boot-source", ()): parse_put_boot_source,
    ("PUT", "cpu-config", ()): parse_put_cpu_config,
    ("PUT", "logger", ()): parse_put_logger,
    ("PUT", "machine-config", ()): parse_put_machine_config,
    ("PUT", "metrics", ()): parse_put_metrics,
    ("PUT", "serial", ()): parse_put_serial,
    ("PATCH", "machine-config", ()): parse_patch_machine_config,
    ("PATCH", "vm", ()): parse_patch_vm,
    ("PUT", "mmds", ()): parse_put_mmds,
    ("PUT", "mmds", ("config",)): parse_put_mmds_config,
    ("PATCH", "mmds", ()): parse_patch_mmds,
    ("PUT", "entropy", ()): parse_put_entropy,
    ("PUT", "balloon", ()): parse_put_balloon,
    ("PATCH", "balloon", ()): parse_patch_balloon,
    ("PATCH", "balloon", ("statistics",)): parse_patch_balloon_stats,
}

_GET_ROUTES: dict[tuple[str, ...], A.VmmAction] = {
    ("",): A.GetInstanceInfo(),
    ("version",): A.GetVersion(),
    ("machine-config",): A.GetMachineConfig(),
    ("vm", "config"): A.GetVmConfig(),
    ("mmds",): A.GetMmds(),
    ("balloon",): A.GetBalloon(),
    ("balloon", "statistics"): A.GetBalloonStats(),
}

# Endpoints of features later issues provide: (method, first token) -> handler(rest, body).
_DEVICE_ROUTES: dict[tuple[str, str], Callable[[list[str], bytes], A.VmmAction]] = {
    ("PUT", "drives"): parse_put_drive,
    ("PATCH", "drives"): parse_patch_drive,
    ("DELETE", "drives"): _device_with_id("Block device hot-unplug (DELETE /drives)", "drive_id", False),
    ("PUT", "network-interfaces"): parse_put_network_interface,
    ("PATCH", "network-interfaces"): parse_patch_network_interface,
    ("DELETE", "network-interfaces"): _device_with_id(
        "Network interface hot-unplug (DELETE /network-interfaces)", "iface_id", False
    ),
    ("PUT", "pmem"): _device_with_id("Pmem devices (PUT /pmem)", "id", True),
    ("PATCH", "pmem"): _device_with_id("Pmem devices (PATCH /pmem)", "id", True),
    ("DELETE", "pmem"): _device_with_id("Pmem hot-unplug (DELETE /pmem)", "id", False),
    ("PUT", "vsock"): parse_put_vsock,
    ("PUT", "balloon"): _balloon_other("PUT"),
    ("PATCH", "balloon"): _balloon_other("PATCH"),
    ("GET", "balloon"): _balloon_other("GET"),
    ("PUT", "mmds"): _mmds_other,
    ("PATCH", "mmds"): _patch_mmds_any,
    ("GET", "mmds"): _get_mmds_other,
    ("PUT", "snapshot"): _device("Snapshots (PUT /snapshot)"),
    ("PUT", "hotplug"): _device("Memory hot-plug (PUT /hotplug/memory)"),
    ("PATCH", "hotplug"): _device("Memory hot-plug (PATCH /hotplug/memory)"),
    ("GET", "hotplug"): _device("Memory hot-plug (GET /hotplug/memory)"),
}

# PATCH /balloon/hinting/{start,stop} may come without a body.
_BODYLESS_PATCH_OK = {("balloon", "hinting", "start"), ("balloon", "hinting", "stop")}


def _invalid_path(method: str, path: str) -> _Fault:
    shown = path.split("?", 1)[0]
    return _Fault(f"Invalid request method and/or path: {method} {shown}.")


def _route(method: str, path: str, body: bytes) -> A.VmmAction:
    tokens = split_path(path)
    resource, rest = tokens[0], tokens[1:]
    has_body = len(body) > 0

    if method == "GET" and not has_body:
        action = _GET_ROUTES.get(tuple(tokens))
        if action is not None:
            return action
    elif method == "GET":
        raise _Fault(_METHOD_BODY_ERRORS["GET"])

    if method in ("PUT", "PATCH") and has_body:
        parse = _BODY_ROUTES.get((method, resource, tuple(rest)))
        if parse is not None:
            return parse(body)

    device = _DEVICE_ROUTES.get((method, resource))
    if device is not None:
        if method == "DELETE" and has_body:
            raise _Fault(_METHOD_BODY_ERRORS["DELETE"])
        if method in ("PUT", "PATCH") and not has_body and tuple(tokens) not in _BODYLESS_PATCH_OK:
            raise _Fault(_METHOD_BODY_ERRORS[method])
        return device(rest, body)

    if method in ("PUT", "PATCH") and not has_body:
        raise _Fault(_METHOD_BODY_ERRORS[method])
    raise _invalid_path(method, path)


def route(method: str, path: str, body: bytes) -> A.VmmAction | ApiFault:
    """The action for one request, or the fault to answer with. Never raises."""
    try:
        return _route(method, path, body)
    except _Fault as fault:
        return ApiFault(fault.message)
    except Exception as e:  # noqa: BLE001 - the router must answer every input with a fault
        return ApiFault(f"{DESERIALIZE_PREFIX}{type(e).__name__}: {e}.")


def deprecation_of(result: A.VmmAction | ApiFault) -> str | None:
    """The deprecation message a request triggered (the server adds ``Deprecation: true``)."""
    return getattr(result, "deprecation", None)


__all__ = ["route", "deprecation_of", "split_path", "check_resource_id", "METHODS"]
