"""VMM actions: what the API asks of the VMM thread, and what it answers.

The API thread turns each HTTP request into one ``VmmAction`` (a frozen msgspec Struct per verb,
carrying an already-decoded config model) and the controller answers with ``VmmData`` or a
``VmmActionError``. Error messages are Firecracker's: ``"<category>: <detail>"``, and the two
phase errors are fixed sentences that tools grep for. HTTP status codes are not known here (they
live in ``api/faults.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import msgspec

from sparkler.errors import SparklerError

if TYPE_CHECKING:
    from sparkler.config import VmmConfig
    from sparkler.config.balloon import BalloonConfig, BalloonStatsUpdate, BalloonUpdate
    from sparkler.config.boot_source import BootSourceConfig
    from sparkler.config.cpu_config import CpuConfig
    from sparkler.config.drive import DriveConfig, DriveUpdate
    from sparkler.config.entropy import EntropyConfig
    from sparkler.config.logger import LoggerConfig
    from sparkler.config.machine import MachineConfig, MachineConfigUpdate
    from sparkler.config.metrics import MetricsConfig
    from sparkler.config.mmds import MmdsConfig
    from sparkler.config.net import NetworkInterfaceConfig, NetworkInterfaceUpdate
    from sparkler.config.serial import SerialConfig
    from sparkler.config.vsock import VsockConfig

# The Firecracker release whose API Sparkler speaks (GET /version, GET / vmm_version).
FIRECRACKER_VERSION = "1.17.0-dev"


# --- actions ------------------------------------------------------------------------------------
class GetInstanceInfo(msgspec.Struct, frozen=True):
    pass


class GetVersion(msgspec.Struct, frozen=True):
    pass


class GetMachineConfig(msgspec.Struct, frozen=True):
    pass


class GetVmConfig(msgspec.Struct, frozen=True):
    pass


class StartMicroVm(msgspec.Struct, frozen=True):
    pass


class SendCtrlAltDel(msgspec.Struct, frozen=True):
    pass


class FlushMetrics(msgspec.Struct, frozen=True):
    pass


class PutBootSource(msgspec.Struct, frozen=True):
    config: BootSourceConfig


class PutMachineConfig(msgspec.Struct, frozen=True):
    config: MachineConfig
    # Whether the body named cpu_template: an omitted template keeps the current one.
    sets_cpu_template: bool = False
    deprecation: str | None = None


class PatchMachineConfig(msgspec.Struct, frozen=True):
    update: MachineConfigUpdate
    deprecation: str | None = None


class PutCpuConfig(msgspec.Struct, frozen=True):
    config: CpuConfig


class PutLogger(msgspec.Struct, frozen=True):
    config: LoggerConfig


class PutMetrics(msgspec.Struct, frozen=True):
    config: MetricsConfig


class PutSerial(msgspec.Struct, frozen=True):
    config: SerialConfig


class PatchVmState(msgspec.Struct, frozen=True):
    state: Literal["Paused", "Resumed"]


class PutDrive(msgspec.Struct, frozen=True):
    """PUT /drives/{drive_id} (pre-boot): add or replace a block device."""

    config: DriveConfig


class PatchDrive(msgspec.Struct, frozen=True):
    """PATCH /drives/{drive_id} (post-boot): swap the backing file and/or the rate limiter."""

    update: DriveUpdate


class GetMmds(msgspec.Struct, frozen=True):
    pass


class PutMmds(msgspec.Struct, frozen=True):
    """PUT /mmds: replace the whole data store with ``value`` (any JSON value)."""

    value: Any


class PatchMmds(msgspec.Struct, frozen=True):
    """PATCH /mmds: RFC 7396 merge patch of the data store."""

    value: Any


class PutMmdsConfig(msgspec.Struct, frozen=True):
    """PUT /mmds/config (pre-boot)."""

    config: MmdsConfig
    deprecation: str | None = None
class PutNetworkInterface(msgspec.Struct, frozen=True):
    """PUT /network-interfaces/{iface_id} (pre-boot): add or replace a virtio-net device."""

    config: NetworkInterfaceConfig


class PatchNetworkInterface(msgspec.Struct, frozen=True):
    """PATCH /network-interfaces/{iface_id} (post-boot): replace rate-limiter buckets."""

    update: NetworkInterfaceUpdate


class PutEntropy(msgspec.Struct, frozen=True):
    """PUT /entropy (pre-boot): the virtio-rng device and its optional rate limiter."""

    config: EntropyConfig


class PutBalloon(msgspec.Struct, frozen=True):
    """PUT /balloon (pre-boot): create or replace the balloon device."""

    config: BalloonConfig


class PatchBalloon(msgspec.Struct, frozen=True):
    """PATCH /balloon (post-boot): a new target size."""

    update: BalloonUpdate


class GetBalloon(msgspec.Struct, frozen=True):
    """GET /balloon (pre- and post-boot)."""


class GetBalloonStats(msgspec.Struct, frozen=True):
    """GET /balloon/statistics (post-boot)."""


class PatchBalloonStats(msgspec.Struct, frozen=True):
    """PATCH /balloon/statistics (post-boot): a new polling interval."""

    update: BalloonStatsUpdate


class PutVsock(msgspec.Struct, frozen=True):
    """PUT /vsock (pre-boot): create or replace the vsock device."""

    config: VsockConfig
    deprecation: str | None = None


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
    | GetMmds
    | PutMmds
    | PatchMmds
    | PutMmdsConfig
    | PutEntropy
    | PutBalloon
    | PatchBalloon
    | GetBalloon
    | GetBalloonStats
    | PatchBalloonStats
    | PutVsock
    | PutNetworkInterface
    | PatchNetworkInterface
)
ACTION_TYPES = VmmAction.__args__  # type: ignore[attr-defined]


# --- responses ----------------------------------------------------------------------------------
class Empty(msgspec.Struct, frozen=True):
    """Success without a body (HTTP 204)."""


class InstanceInfoData(msgspec.Struct, frozen=True):
    id: str
    state: str
    vmm_version: str
    app_name: str = "Firecracker"


class VersionData(msgspec.Struct, frozen=True):
    firecracker_version: str


class MachineConfigData(msgspec.Struct, frozen=True):
    config: MachineConfig


class VmConfigData(msgspec.Struct, frozen=True):
    """GET /vm/config; ``config.boot_source`` is None until PUT /boot-source."""

    config: VmmConfig


class MmdsData(msgspec.Struct, frozen=True):
    """GET /mmds: the data store's JSON value."""

    value: Any


class BalloonConfigData(msgspec.Struct, frozen=True):
    """GET /balloon: the balloon's configuration (``amount_mib`` is the current target)."""

    config: BalloonConfig


class BalloonStatsData(msgspec.Struct, frozen=True):
    """GET /balloon/statistics: target/actual pages and MiB plus what the guest reported."""

    stats: dict[str, int]


VmmData = (
    Empty | InstanceInfoData | VersionData | MachineConfigData | VmConfigData | MmdsData | BalloonConfigData | BalloonStatsData
)


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


class BalloonConfigError(VmmActionError):
    category = "Balloon config error"


class EntropyConfigError(VmmActionError):
    category = "Entropy device error"
class NetworkInterfaceError(VmmActionError):
    """Firecracker's ``NetworkInterfaceError``: the message is the detail alone."""

    category = "Network config error"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        Exception.__init__(self, detail)


class VsockConfigError(VmmActionError):
    category = "Vsock config error"


class LoggerError(VmmActionError):
    category = "Logger error"


class MetricsError(VmmActionError):
    category = "Metrics error"


class SerialConfigError(VmmActionError):
    category = "Serial config error"


class MmdsError(VmmActionError):
    category = "MMDS error"


class MmdsLimitExceededError(VmmActionError):
    """The only action error answered with 413 instead of 400."""

    category = "MMDS limit exceeded error"


class MmdsConfigError(VmmActionError):
    category = "MMMDS config error"  # sic: Firecracker's text has three Ms


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
