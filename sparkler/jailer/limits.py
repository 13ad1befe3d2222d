"""``--resource-limit <name>=<value>``: ``fsize`` (RLIMIT_FSIZE) and ``no-file`` (RLIMIT_NOFILE).

Firecracker sets soft and hard limit to the same value; ``no-file`` defaults to 2048 and is always
set, ``fsize`` only when given. Values are u64 (``RLIM_INFINITY`` is 2**64-1 on x86_64).
"""

from __future__ import annotations

import resource

from sparkler.jailer import JailerError

DEFAULT_NO_FILE = 2048
U64_MAX = 2**64 - 1
_RESOURCES = {"fsize": resource.RLIMIT_FSIZE, "no-file": resource.RLIMIT_NOFILE}


def parse_resource_limits(args: list[str]) -> dict[str, int]:
    """``{"no-file": n, ["fsize": n]}`` from the ``--resource-limit`` values; JailerError if invalid."""
    limits = {"no-file": DEFAULT_NO_FILE}
    for arg in args:
        parts = arg.split("=")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise JailerError(f"Invalid format for resources limits: {arg}")
        name, value = parts
        if name not in _RESOURCES:
            raise JailerError(f"Invalid resource argument: {name}")
        if not value.isascii() or not value.isdigit() or int(value) > U64_MAX:
            raise JailerError(f"Invalid limit value for resource: {arg}: invalid digit found in string")
        limits[name] = int(value)
    return limits


def apply_resource_limits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        value = resource.RLIM_INFINITY if value == U64_MAX else value
        try:
            resource.setrlimit(_RESOURCES[name], (value, value))
        except (OSError, ValueError) as e:
            raise JailerError(f"Failed to set limit for resource: {name}: {e}") from e


__all__ = ["DEFAULT_NO_FILE", "parse_resource_limits", "apply_resource_limits"]
