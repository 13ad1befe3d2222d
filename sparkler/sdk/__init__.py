"""Sparkler's Python SDK: a typed API client and a MicroVM context manager.

Importing the package is cheap; the client modules load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sparkler.sdk.client import ApiError, Client
    from sparkler.sdk.microvm import MicroVM

__all__ = ["ApiError", "Client", "MicroVM"]

_HOMES = {
    "ApiError": "sparkler.sdk.client",
    "Client": "sparkler.sdk.client",
    "MicroVM": "sparkler.sdk.microvm",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'sparkler.sdk' has no attribute {name!r}")
