"""VmmData -> JSON response body (None = no body, answered 204)."""

from __future__ import annotations

from typing import Any

import msgspec

from sparkler.config.mmds import DEFAULT_IPV4_ADDRESS
from sparkler.vmm import actions as A

# GET /vm/config: Firecracker's FullVmConfiguration always reports these as null (catalog 1.3).
_ALWAYS_NULL = ("cpu-config", "logger", "metrics")
# ... and these lists as [] when empty.
_LISTS = ("drives", "network-interfaces", "pmem")


def machine_config_document(config: Any) -> dict[str, Any]:
    """MachineConfiguration: ``cpu_template`` only when a static template is set."""
    doc = msgspec.to_builtins(config)
    if doc.get("cpu_template") in (None, "None"):
        doc.pop("cpu_template", None)
    return doc


def vm_config_document(config: Any) -> dict[str, Any]:
    doc = msgspec.to_builtins(config)
    if doc.get("boot-source") is None:
        doc["boot-source"] = {"kernel_image_path": ""}
    if config.machine_config is not None:
        doc["machine-config"] = machine_config_document(config.machine_config)
    mmds = doc.get("mmds-config")
    if mmds is not None and mmds.get("ipv4_address") is None:
        doc["mmds-config"] = {**mmds, "ipv4_address": DEFAULT_IPV4_ADDRESS}
    for key in _ALWAYS_NULL:
        doc[key] = None
    for key in _LISTS:
        if doc.get(key) is None:
            doc[key] = []
    return doc


def encode(data: A.VmmData) -> bytes | None:
    match data:
        case A.Empty():
            return None
        case A.InstanceInfoData():
            return msgspec.json.encode(
                {
                    "id": data.id,
                    "state": data.state,
                    "vmm_version": data.vmm_version,
                    "app_name": data.app_name,
                }
            )
        case A.VersionData():
            return msgspec.json.encode({"firecracker_version": data.firecracker_version})
        case A.MachineConfigData():
            return msgspec.json.encode(machine_config_document(data.config))
        case A.VmConfigData():
            return msgspec.json.encode(vm_config_document(data.config))
        case A.MmdsData():
            return msgspec.json.encode(data.value, order="sorted")
        case A.BalloonConfigData():
            return msgspec.json.encode(data.config)
        case A.BalloonStatsData():
            return msgspec.json.encode(data.stats)
    raise TypeError(f"no body encoding for {type(data).__name__}")


__all__ = ["encode", "machine_config_document", "vm_config_document"]
