"""PUT /logger body and the config file's `logger` section."""

from __future__ import annotations

from typing import Literal

import msgspec

LEVELS = ("Off", "Trace", "Debug", "Info", "Warn", "Warning", "Error")
LevelName = Literal["Off", "Trace", "Debug", "Info", "Warn", "Warning", "Error"]


def normalize_level(value: str) -> str | None:
    """The canonical level name for a case-insensitive ``value``, or None if unknown."""
    for name in LEVELS:
        if name.lower() == value.lower():
            return "Warn" if name == "Warning" else name
    return None


class LoggerConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    log_path: str | None = None
    level: str | None = None
    show_level: bool | None = None
    show_log_origin: bool | None = None
    module: str | None = None

    def __post_init__(self) -> None:
        if self.level is not None:
            canonical = normalize_level(self.level)
            if canonical is None:
                raise msgspec.ValidationError(
                    f"Invalid value for level: {self.level!r}; expected one of {', '.join(LEVELS)}"
                )
            self.level = canonical
