"""PUT /boot-source body and the config file's `boot-source` section."""

from __future__ import annotations

import msgspec

from sparkler.arch.x86_64.layout import CMDLINE_MAX_SIZE, DEFAULT_KERNEL_CMDLINE
from sparkler.errors import ConfigError


class BootSourceConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    kernel_image_path: str
    initrd_path: str | None = None
    boot_args: str | None = None

    def validate(self) -> None:
        """Host-independent checks (files are opened later, in vmm.resources)."""
        args = self.effective_boot_args
        if any(not (0x20 <= ord(c) <= 0x7E) for c in args):
            raise ConfigError("Invalid boot arguments: the command line must be printable ASCII.")
        if len(args) + 1 > CMDLINE_MAX_SIZE:
            raise ConfigError(
                f"Invalid boot arguments: the command line is {len(args)} bytes long; "
                f"at most {CMDLINE_MAX_SIZE - 1} bytes fit."
            )

    @property
    def effective_boot_args(self) -> str:
        """The guest command line before devices add theirs: boot_args replaces the default."""
        return DEFAULT_KERNEL_CMDLINE if self.boot_args is None else self.boot_args
