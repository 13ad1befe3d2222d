"""PUT /actions body (Firecracker's ``InstanceActionInfo``)."""

from __future__ import annotations

from typing import Literal

import msgspec

ActionType = Literal["InstanceStart", "SendCtrlAltDel", "FlushMetrics"]


class InstanceActionInfo(msgspec.Struct, forbid_unknown_fields=True):
    action_type: ActionType
