"""The guest kernel command line: a bounded, printable-ASCII, space-separated string."""

from __future__ import annotations

from sparkler.arch.x86_64 import layout
from sparkler.errors import ConfigError


class Cmdline:
    """Builds the command line; ``capacity`` counts the terminating NUL, as the kernel does."""

    def __init__(self, capacity: int = layout.CMDLINE_MAX_SIZE) -> None:
        if capacity < 1:
            raise ValueError("command line capacity must be at least 1")
        self.capacity = capacity
        self._line = ""

    def insert_str(self, text: str) -> None:
        """Append ``text`` (already key=value formatted) separated by one space."""
        if any(not 0x20 <= ord(c) <= 0x7E for c in text):
            raise ConfigError("the command line must be printable ASCII")
        text = text.strip()
        if not text:
            return
        line = f"{self._line} {text}" if self._line else text
        if len(line) + 1 > self.capacity:
            raise ConfigError(
                f"the command line would be {len(line) + 1} bytes with its NUL; at most {self.capacity} fit"
            )
        self._line = line

    def insert(self, key: str, value: str) -> None:
        if not key or any(c in key for c in " =") or " " in value:
            raise ConfigError(f"invalid command line parameter {key}={value}")
        self.insert_str(f"{key}={value}")

    def as_str(self) -> str:
        return self._line

    def as_bytes(self) -> bytes:
        return self._line.encode("ascii") + b"\0"


def virtio_mmio_device(addr: int, gsi: int, size: int = layout.VIRTIO_MMIO_SIZE) -> str:
    """The ``virtio_mmio.device=`` stanza Linux uses to find a device without ACPI or DT."""
    return f"virtio_mmio.device={size // 1024}K@{addr:#x}:{gsi}"
