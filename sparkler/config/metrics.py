"""PUT /metrics body and the config file's `metrics` section."""

from __future__ import annotations

import msgspec


class MetricsConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    metrics_path: str
    emit_id: bool = False
    properties: dict[str, str] | None = None
