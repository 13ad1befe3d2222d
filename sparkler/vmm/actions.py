"""VMM actions: what the API asks of the VMM thread, and what it answers.

The API thread turns each HTTP request into one ``VmmAction`` (a frozen dataclass per verb,
carrying an already-decoded config model) and the controller answers with ``VmmData`` or a
``VmmActionError``. Error messages are Firecracker's: ``"<category>: <detail>"``, and the two
phase errors are fixed sentences that tools grep for. HTTP status codes are not known here (they
live in ``api/faults.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from sparkler.errors import SparklerError

if TYPE_CHECKING:
    from sparkler.config import VmmConfig
    from sparkler.config.boot_source import BootSourceConfig
    from sparkler.config.cpu_config import CpuConfig
    from sparkler.config.drive import DriveConfig, DriveUpdate
    from sparkler.config.logger import LoggerConfig
    from sparkler.config.machine import MachineConfig, MachineConfigUpdate
    from sparkler.config.metrics import MetricsConfig
    from sparkler.config.serial import SerialConfig

# The Firecracker release whose API Sparkler speaks (GET /version, GET / vmm_version).
FIRECRACKER_VERSION = "1.17.0-dev"


# --- actions ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GetInstanceInfo:
    pass


@dataclass(frozen=True)
class GetVersion:
    pass


@dataclass(frozen=True)
class GetMachineConfig:
    pass


@dataclass(frozen=True)
class GetVmConfig:
    pass


@dataclass(frozen=True)
class StartMicroVm:
    pass


@dataclass(frozen=True)
class SendCtrlAltDel:
    pass


@dataclass(frozen=True)
class FlushMetrics:
    pass


@dataclass(frozen=True)
class PutBootSource:
    config: BootSourceConfig


@dataclass(frozen=True)
class PutMachineConfig:
    config: MachineConfig
    # Whether the body named cpu_template: an omitted template keeps the current one.
    sets_cpu_template: bool = False
    deprecation: str | None = None


@dataclass(frozen=True)
class PatchMachineConfig:
    update: MachineConfigUpdate
    deprecation: str | None = None


@dataclass(frozen=True)
class PutCpuConfig:
    config: CpuConfig


@dataclass(frozen=True)
class PutLogger:
    config: LoggerConfig


@dataclass(frozen=True)
class PutMetrics:
    config: MetricsConfig


@dataclass(frozen=True)
class PutSerial:
    config: SerialConfig


@dataclass(frozen=True)
class PatchVmState:
    state: Literal["Paused", "Resumed"]


@dataclass(frozen=True)
class PutDrive:
    """PUT /drives/{drive_id} (pre-boot): add or replace a block device."""

    config: DriveConfig


@dataclass(frozen=True)
class PatchDrive:
    """PATCH /drives/{drive_id} (post-boot): swap the backing file and/or the rate limiter."""

    update: DriveUpdate


VmmAction = (
    GetInstanceInfo
    | GetVersion
    | GetMachineConfig
    | GetVmConfig
    | StartMicroVm
    | SendCtrlAltDel
    | FlushMetrics
    | PutBootSource
    | PutMachineConfig
    | PatchMachineConfig
    | PutCpuConfig
    | PutLogger
    | PutMetrics
    | PutSerial
    | PatchVmState
    | PutDrive
    | PatchDrive
)
ACTION_TYPES = VmmAction.__args__  # type: ignore[attr-defined]


# --- responses ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Empty:
    """Success without a body (HTTP 204)."""


@dataclass(frozen=True)
class InstanceInfoData:
    id: str
    state: str
    vmm_version: str
    app_name: str = "Firecracker"


@dataclass(frozen=True)
class VersionData:
    firecracker_version: str


@dataclass(frozen=True)
class MachineConfigData:
    config: MachineConfig


@dataclass(frozen=True)
class VmConfigData:
    """GET /vm/config; ``config.boot_source`` is None until PUT /boot-source."""

    config: VmmConfig


VmmData = Empty | InstanceInfoData | VersionData | MachineConfigData | VmConfigData


# --- errors -------------------------------------------------------------------------------------
class VmmActionError(SparklerError):
    """An action failed; nothing was changed. The message starts with the category."""

    category = "Internal VMM error"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"{self.category}: {detail}")


class BootSourceError(VmmActionError):
    category = "Boot source error"


class MachineConfigError(VmmActionError):
    category = "Machine config error"


class CpuConfigError(VmmActionError):
    category = "Configure CPU error"


class DriveConfigError(VmmActionError):
    """Firecracker's ``DriveError``: the message is the detail alone."""

    category = "Drive config error"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        Exception.__init__(self, detail)


class LoggerError(VmmActionError):
    category = "Logger error"


class MetricsError(VmmActionError):
    category = "Metrics error"


class SerialConfigError(VmmActionError):
    category = "Serial config error"


class StartMicrovmError(VmmActionError):
    category = "Start microvm error"


class InternalVmmError(VmmActionError):
    category = "Internal VMM error"


class NotSupportedError(VmmActionError):
    category = "The requested operation is not supported"


class OperationNotSupportedPreBoot(VmmActionError):
    MESSAGE = "The requested operation is not supported before starting the microVM."

    def __init__(self) -> None:
        self.detail = ""
        SparklerError.__init__(self, self.MESSAGE)


class OperationNotSupportedPostBoot(VmmActionError):
    MESSAGE = "The requested operation is not supported after starting the microVM."

    def __init__(self) -> None:
        self.detail = ""
        SparklerError.__init__(self, self.MESSAGE)


MISSING_KERNEL = "Cannot start microvm without kernel configuration."
METRICS_REINIT = "Reinitialization of metrics not allowed."
