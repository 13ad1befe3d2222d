"""api/openapi.yaml: matches the router and the config models, and is compatible with Firecracker's."""

import json
import pathlib

import msgspec
import pytest

from sparkler.api import router
from sparkler.api.faults import ApiFault
from sparkler.config.actions import InstanceActionInfo
from sparkler.config.balloon import BalloonConfig, BalloonStatsUpdate, BalloonUpdate
from sparkler.config.boot_source import BootSourceConfig
from sparkler.config.cpu_config import CpuConfig, CpuidLeafModifier, CpuidRegisterModifier, MsrModifier
from sparkler.config.drive import DriveConfig, DriveUpdate
from sparkler.config.entropy import EntropyConfig
from sparkler.config.logger import LoggerConfig
from sparkler.config.machine import MachineConfig
from sparkler.config.metrics import MetricsConfig
from sparkler.config.mmds import MmdsConfig
from sparkler.config.net import NetworkInterfaceConfig, NetworkInterfaceUpdate
from sparkler.config.rate_limiter import RateLimiterConfig
from sparkler.config.serial import SerialConfig, TokenBucketConfig
from sparkler.config.vm import VmStateUpdate
from sparkler.config.vsock import VsockConfig

from . import yaml_subset

OURS = pathlib.Path(router.__file__).with_name("openapi.yaml")
FIRECRACKER = pathlib.Path("/work/shared/reference/firecracker.yaml")
HTTP_METHODS = ("get", "put", "patch", "delete")

MODELS = {
    "BootSource": BootSourceConfig,
    "MachineConfiguration": MachineConfig,
    "Logger": LoggerConfig,
    "Metrics": MetricsConfig,
    "SerialDevice": SerialConfig,
    "TokenBucket": TokenBucketConfig,
    "CpuConfig": CpuConfig,
    "CpuidLeafModifier": CpuidLeafModifier,
    "CpuidRegisterModifier": CpuidRegisterModifier,
    "MsrModifier": MsrModifier,
    "Vm": VmStateUpdate,
    "MmdsConfig": MmdsConfig,
    "InstanceActionInfo": InstanceActionInfo,
    "Balloon": BalloonConfig,
    "BalloonUpdate": BalloonUpdate,
    "BalloonStatsUpdate": BalloonStatsUpdate,
    "EntropyDevice": EntropyConfig,
    "Drive": DriveConfig,
    "PartialDrive": DriveUpdate,
    "NetworkInterface": NetworkInterfaceConfig,
    "PartialNetworkInterface": NetworkInterfaceUpdate,
    "Vsock": VsockConfig,
    "RateLimiter": RateLimiterConfig,
}

# Per-ID device endpoints the router serves (not stubs), as (method, documented path).
DEVICE_ENDPOINTS = {
    ("PUT", "/drives/{drive_id}"),
    ("PATCH", "/drives/{drive_id}"),
    ("PUT", "/network-interfaces/{iface_id}"),
    ("PATCH", "/network-interfaces/{iface_id}"),
    ("PUT", "/vsock"),
}


@pytest.fixture(scope="module")
def ours():
    return yaml_subset.load(OURS.read_text())


def operations(doc):
    for path, item in doc["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield path, method, item[method]


def body_schema(operation):
    for parameter in operation.get("parameters") or []:
        if parameter.get("in") == "body":
            return parameter["schema"]
    return None


def resolve(doc, schema):
    while schema and "$ref" in schema:
        schema = doc["definitions"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_openapi_every_operation_is_served_by_the_router(ours):
    for path, method, operation in operations(ours):
        body = b"{}" if body_schema(operation) is not None else b""
        result = router.route(method.upper(), path, body)
        if isinstance(result, ApiFault):
            assert not result.message.startswith("Invalid request method and/or path"), (method, path)
            assert "not supported by this version" not in result.message, (method, path)


def test_openapi_lists_every_router_endpoint(ours):
    documented = {(method.upper(), path) for path, method, _ in operations(ours)}
    served = {("GET", "/" + "/".join(tokens)) for tokens in router._GET_ROUTES}
    served |= {(method, "/" + "/".join((first,) + rest)) for method, first, rest in router._BODY_ROUTES}
    served = {(m, p if p != "/" else "/") for m, p in served}
    for method, path in DEVICE_ENDPOINTS:
        first = path.split("/")[1]
        assert not router._DEVICE_ROUTES[(method, first)].__qualname__.startswith("_device"), (method, path)
    served |= DEVICE_ENDPOINTS
    assert served == documented


@pytest.mark.parametrize("name", sorted(MODELS))
def test_openapi_definitions_match_config_models(ours, name):
    model = MODELS[name]
    schema = ours["definitions"][name]
    fields = msgspec.structs.fields(model)
    assert set(schema.get("properties", {})) == {f.encode_name for f in fields}
    if model is not MachineConfig:  # PUT requires both sizes; the router enforces it (config file does not)
        assert set(schema.get("required", [])) == {f.encode_name for f in fields if f.required}


def test_openapi_enums_match_models(ours):
    definitions = ours["definitions"]
    assert definitions["Vm"]["properties"]["state"]["enum"] == ["Paused", "Resumed"]
    assert set(definitions["CpuTemplate"]["enum"]) == {"C3", "T2", "T2S", "T2CL", "T2A", "None"}
    assert set(definitions["InstanceActionInfo"]["properties"]["action_type"]["enum"]) == {
        "InstanceStart",
        "SendCtrlAltDel",
        "FlushMetrics",
    }


def test_openapi_example_bodies_decode(ours):
    # A body built from each documented definition's properties is accepted by the router's models.
    samples = {
        "/boot-source": {"kernel_image_path": "/k", "initrd_path": "/i", "boot_args": "a"},
        "/machine-config": {
            "vcpu_count": 2,
            "mem_size_mib": 256,
            "smt": True,
            "track_dirty_pages": True,
            "huge_pages": "2M",
            "cpu_template": "T2",
        },
        "/logger": {
            "level": "Warning",
            "log_path": "/l",
            "show_level": True,
            "show_log_origin": True,
            "module": "m",
        },
        "/metrics": {"metrics_path": "/m", "emit_id": True, "properties": {"k": "v"}},
    }
    for path, doc in samples.items():
        assert not isinstance(router.route("PUT", path, json.dumps(doc).encode()), ApiFault), path


# --- compatibility with Firecracker's swagger -------------------------------------------------------
def compatible(our_doc, our_schema, fc_doc, fc_schema, where):
    """Every request our schema accepts is described the same way by Firecracker's."""
    ours_r, theirs_r = resolve(our_doc, our_schema), resolve(fc_doc, fc_schema)
    assert theirs_r is not None, where
    if "type" in ours_r and "type" in theirs_r:
        assert ours_r["type"] == theirs_r["type"], where
    if "enum" in ours_r:
        assert set(ours_r["enum"]) <= set(theirs_r.get("enum", ours_r["enum"])), where
    for name, prop in (ours_r.get("properties") or {}).items():
        assert name in (theirs_r.get("properties") or {}), f"{where}.{name} not in Firecracker's schema"
        compatible(our_doc, prop, fc_doc, theirs_r["properties"][name], f"{where}.{name}")
    assert set(ours_r.get("required") or []) == set(theirs_r.get("required") or []), where
    if "items" in ours_r and "items" in theirs_r and "$ref" in ours_r["items"]:
        compatible(our_doc, ours_r["items"], fc_doc, theirs_r["items"], f"{where}[]")


@pytest.mark.skipif(not FIRECRACKER.exists(), reason="Firecracker's firecracker.yaml is not available")
def test_openapi_compatible_with_firecracker(ours):
    firecracker = yaml_subset.load(FIRECRACKER.read_text())
    for path, method, operation in operations(ours):
        assert path in firecracker["paths"], path
        assert method in firecracker["paths"][path], (method, path)
        fc_operation = firecracker["paths"][path][method]
        assert operation["operationId"] == fc_operation["operationId"]
        ours_body, fc_body = body_schema(operation), body_schema(fc_operation)
        assert (ours_body is None) == (fc_body is None), (method, path)
        if ours_body is not None:
            compatible(ours, ours_body, firecracker, fc_body, f"{method.upper()} {path}")
        ok = operation["responses"].get(200)
        if ok is not None and "schema" in ok:
            assert ok["schema"] == fc_operation["responses"][200]["schema"], (method, path)
