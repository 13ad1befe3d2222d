"""PATCH /vm body and the small response documents of GET / and GET /version."""

from __future__ import annotations

from typing import Literal

import msgspec

VmStateName = Literal["Paused", "Resumed"]
InstanceStateName = Literal["Not started", "Running", "Paused"]


class VmStateUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """PATCH /vm: the desired run state. Both values are idempotent."""

    state: VmStateName


class InstanceInfo(msgspec.Struct):
    """GET / (Firecracker's ``InstanceInfo``)."""

    id: str
    state: InstanceStateName
    vmm_version: str
    app_name: str = "Firecracker"


class FirecrackerVersion(msgspec.Struct):
    """GET /version."""

    firecracker_version: str
