"""What every device on a bus implements, and how devices raise interrupts."""

from __future__ import annotations

from typing import Protocol


class BusDevice(Protocol):
    def read(self, offset: int, data: memoryview) -> None:
        """Fill all of ``data`` with the value at ``offset`` inside the device's range."""

    def write(self, offset: int, data: bytes) -> None:
        """Accept ``data`` written at ``offset`` inside the device's range."""


class Trigger(Protocol):
    def trigger(self) -> None:
        """Raise the device's interrupt (an edge on its GSI)."""
