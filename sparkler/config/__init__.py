"""Typed configuration: one msgspec model per API body, composed into VmmConfig.

VmmConfig is the --config-file document (and later GET /vm/config). Unlike Firecracker, which
silently ignores unknown top-level keys of the config file, Sparkler rejects them: a misspelt
section name is an error, not a device that quietly never appears.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sparkler.config.balloon import BalloonConfig
from sparkler.config.boot_source import BootSourceConfig
from sparkler.config.drive import DriveConfig, ordered_drives
from sparkler.config.entropy import EntropyConfig
from sparkler.config.logger import LoggerConfig
from sparkler.config.machine import MachineConfig
from sparkler.config.metrics import MetricsConfig
from sparkler.config.mmds import MmdsConfig, check_interfaces
from sparkler.config.net import NetworkInterfaceConfig, ordered_interfaces
from sparkler.config.vsock import VsockConfig
from sparkler.errors import ConfigError

# Sections of Firecracker's config file whose devices Sparkler does not provide yet. An empty value
# (null or []) is accepted; anything else is refused with a message that names the section.
NOT_YET_SUPPORTED = (
    "pmem",
    "memory-hotplug",
    "cpu-config",
)


class VmmConfig(msgspec.Struct, forbid_unknown_fields=True, rename="kebab"):
    boot_source: BootSourceConfig
    machine_config: MachineConfig | None = None
    logger: LoggerConfig | None = None
    metrics: MetricsConfig | None = None
    drives: list[DriveConfig] | None = None
    network_interfaces: list[NetworkInterfaceConfig] | None = None
    vsock: VsockConfig | None = None
    balloon: BalloonConfig | None = None
    mmds_config: MmdsConfig | None = None
    entropy: EntropyConfig | None = None
    pmem: list[Any] | None = None
    memory_hotplug: dict[str, Any] | None = None
    cpu_config: dict[str, Any] | str | None = None

    def validate(self) -> None:
        self.boot_source.validate()
        if self.machine_config is not None:
            self.machine_config.validate()
        ordered_drives(self.drives)  # each drive valid, at most one root device
        if self.balloon is not None:
            self.balloon.validate(self.machine.mem_size_mib)
        if self.vsock is not None:
            self.vsock.validate()
        ordered_interfaces(self.network_interfaces)  # each interface valid, MACs unique
        for section in NOT_YET_SUPPORTED:
            if getattr(self, section.replace("-", "_")):
                raise ConfigError(f"The '{section}' section is not supported by this version of Sparkler yet.")
        if self.mmds_config is not None:
            self.mmds_config.validate()
            check_interfaces(self.mmds_config, {i.iface_id for i in (self.network_interfaces or [])})

    @property
    def block_devices(self) -> list[DriveConfig]:
        """The drives in attach order: the root device first."""
        return ordered_drives(self.drives)

    @property
    def net_devices(self) -> list[NetworkInterfaceConfig]:
        """The network interfaces in attach order (the order they were put)."""
        return ordered_interfaces(self.network_interfaces)

    @property
    def machine(self) -> MachineConfig:
        return self.machine_config if self.machine_config is not None else MachineConfig()


def parse_vmm_config(data: bytes) -> VmmConfig:
    """Decode and validate a config-file document; every problem is a ConfigError."""
    try:
        config = msgspec.json.decode(data, type=VmmConfig)
    except msgspec.DecodeError as e:
        raise ConfigError(f"Invalid config file: {e}") from None
    if config.machine_config is not None:
        # Firecracker's MachineConfig has no defaults for these two; ours do (for the API's
        # initial state), so their presence is checked on the document itself.
        section = msgspec.json.decode(data).get("machine-config") or {}
        for required in ("vcpu_count", "mem_size_mib"):
            if required not in section:
                raise ConfigError(f"Invalid config file: missing field `{required}` in `machine-config`.")
    config.validate()
    return config
