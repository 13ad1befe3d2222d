"""The controller: applies one VMM action at a time, before and after boot.

Before ``InstanceStart`` the controller holds the VM's resources as a ``VmmConfig`` (the same
document as ``--config-file`` and ``GET /vm/config``). Every action is applied atomically: the
new configuration is built and validated on the side and only then swapped in, so after any
error the configuration is exactly what it was. ``InstanceStart`` hands the configuration to the
builder (``builder_fn(config, options) -> Machine``) and starts the machine; from then on the
controller drives the machine (pause, resume, Ctrl+Alt+Del) and refuses configuration changes.

Phase rules (Firecracker's ``PrebootApiController`` / ``RuntimeApiController``) are one
``match`` in :meth:`Controller._apply`:

==========================  =========  ===========
action                      pre-boot   post-boot
==========================  =========  ===========
GET / /version /vm/config   yes        yes
GET /machine-config         yes        yes
GET/PUT/PATCH /mmds         yes        yes (GET: 400 if MMDS was never set up)
InstanceStart               yes        error
SendCtrlAltDel, FlushMetrics,
PATCH /vm                   error      yes
every PUT/PATCH of config   yes        error
==========================  =========  ===========

``handle`` never raises: failures come back as ``VmmActionError`` values.

Wiring (the runtime's job; the VMM thread is the main thread)::

    channel = Channel()
    controller = Controller(build_microvm, build_options, instance_id, channel=channel,
                            config=file_config_or_None, hooks=ControllerHooks(...),
                            metrics_initialized=bool(options.metrics_path))
    server = ApiServer(api_sock, channel.call, max_payload=options.http_api_max_payload_size)
    if file_config_or_None is not None:          # --config-file: boot before serving requests
        controller.handle(StartMicroVm())
    server.start()                               # thread fc_api
    # pre-boot: select on channel.fd and call controller.process_channel() until controller.booted;
    # post-boot: run_event_loop(controller.machine, extra=[(channel.fd, controller.process_channel)])
    server.shutdown(); channel.close()
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import msgspec

from sparkler.config import VmmConfig
from sparkler.config.drive import DriveConfig, DriveUpdate, insert_drive
from sparkler.config.logger import LoggerConfig
from sparkler.config.machine import MachineConfig
from sparkler.errors import ConfigError, SparklerError
from sparkler.vmm import actions as A
from sparkler.vmm.actions import DriveConfigError, PatchDrive, PutDrive  # noqa: F401 - re-exported
from sparkler.vmm.channel import Channel

NOT_STARTED = "Not started"


class ControllerHooks(msgspec.Struct):
    """Process-wide services the runtime wires in (all optional; None = nothing to do).

    * ``configure_logger(LoggerConfig)``: apply a PUT /logger (the merged configuration).
    * ``configure_metrics(MetricsConfig)``: open the metrics destination (PUT /metrics).
    * ``flush_metrics()``: write one metrics line (FlushMetrics action).
    * ``on_started(machine)``: the machine is running (register its exit fd, start periodic
      metrics...).
    * ``log(message)``: an Info line (e.g. ``'pause vm' API request took N us.``).

    Hooks report failure by raising ``OSError``, ``ValueError`` or ``SparklerError``.
    """

    configure_logger: Callable[[LoggerConfig], None] | None = None
    configure_metrics: Callable[[Any], None] | None = None
    flush_metrics: Callable[[], None] | None = None
    on_started: Callable[[Any], None] | None = None
    log: Callable[[str], None] | None = None


def initial_config() -> VmmConfig:
    """An empty pre-boot configuration: no boot source yet (None), default machine."""
    return VmmConfig(
        boot_source=None,  # type: ignore[arg-type]  # filled by PUT /boot-source
        machine_config=MachineConfig(),
        drives=[],
        network_interfaces=[],
        pmem=[],
    )


class Controller:
    """Owns the pre-boot configuration and, after InstanceStart, the Machine.

    ``builder_fn(config, build_options) -> Machine`` is ``vmm.builder.build_microvm`` in
    production and ``sparkler.testing.fake_machine.FakeBuilder`` in tests. ``build_options``
    is passed through (with ``serial_out`` replaced when PUT /serial named a file).
    """

    def __init__(
        self,
        builder_fn: Callable[[VmmConfig, Any], Any],
        build_options: Any = None,
        instance_id: str = "anonymous-instance",
        *,
        config: VmmConfig | None = None,
        channel: Channel | None = None,
        hooks: ControllerHooks | None = None,
        metrics_initialized: bool = False,
        vmm_version: str = A.FIRECRACKER_VERSION,
        mmds: Any = None,
        mmds_size_limit: int | None = None,
    ) -> None:
        self.builder_fn = builder_fn
        self.build_options = build_options
        self.instance_id = instance_id
        self.channel = channel
        self.hooks = hooks or ControllerHooks()
        self.vmm_version = vmm_version
        self.config: VmmConfig = config if config is not None else initial_config()
        if self.config.machine_config is None:
            self.config = msgspec.structs.replace(self.config, machine_config=MachineConfig())
        self.serial: Any = None
        self.machine: Any = None
        # --metrics-path (or an earlier PUT /metrics) initialised metrics: PUT /metrics fails.
        self.metrics_initialized = metrics_initialized
        # The VM's MMDS (sparkler.mmds.imds.Mmds): data store, MMDS config, tokens. Made on first
        # use when the caller has none (its size limit then is the default); handed to the builder.
        self._mmds = mmds
        self._mmds_size_limit = mmds_size_limit
        if self.config.mmds_config is not None:
            self.mmds.configure(self.config.mmds_config)

    @property
    def mmds(self) -> Any:
        if self._mmds is None:
            from sparkler.mmds.imds import Mmds
            from sparkler.mmds.store import DEFAULT_SIZE_LIMIT

            limit = DEFAULT_SIZE_LIMIT if self._mmds_size_limit is None else self._mmds_size_limit
            self._mmds = Mmds(size_limit=limit, instance_id=self.instance_id)
        return self._mmds

    def mmds_statistics(self) -> dict[str, int]:
        """The MMDS counters (metrics group ``mmds``); none while the MMDS was never used."""
        return {} if self._mmds is None else self._mmds.statistics()

    # --- entry points -------------------------------------------------------------------------
    @property
    def booted(self) -> bool:
        return self.machine is not None

    @property
    def state(self) -> str:
        return NOT_STARTED if self.machine is None else str(self.machine.state)

    def handle(self, action: Any) -> A.VmmData | A.VmmActionError:
        """Apply one action; the configuration is unchanged when an error is returned."""
        try:
            return self._apply(action)
        except A.VmmActionError as e:
            return e
        except Exception as e:  # noqa: BLE001 - a bug must not kill the VMM thread
            return A.InternalVmmError(f"{type(e).__name__}: {e}")

    def process_channel(self) -> int:
        """Answer every action waiting on the channel (call when ``channel.fd`` is readable)."""
        if self.channel is None:
            return 0
        return self.channel.process(self.handle)

    # --- the phase table ----------------------------------------------------------------------
    def _apply(self, action: Any) -> A.VmmData:
        booted = self.booted
        match action:
            case A.GetInstanceInfo():
                return A.InstanceInfoData(self.instance_id, self.state, self.vmm_version)
            case A.GetVersion():
                return A.VersionData(self.vmm_version)
            case A.GetMachineConfig():
                return A.MachineConfigData(self.config.machine)
            case A.GetVmConfig():
                return A.VmConfigData(self.config)
            case A.GetBalloon():
                return self._get_balloon()
            case A.GetBalloonStats() | A.PatchBalloon() | A.PatchBalloonStats() if not booted:
                raise A.OperationNotSupportedPreBoot()
            case A.GetBalloonStats():
                return self._get_balloon_stats()
            case A.PatchBalloon(update=update):
                return self._patch_balloon(update.amount_mib)
            case A.PatchBalloonStats(update=update):
                return self._patch_balloon_stats(update.stats_polling_interval_s)
            case A.StartMicroVm() if not booted:
                return self._start()
            case A.SendCtrlAltDel() | A.FlushMetrics() | A.PatchVmState() if not booted:
                raise A.OperationNotSupportedPreBoot()
            case A.SendCtrlAltDel():
                return self._machine_call("send_ctrl_alt_del")
            case A.FlushMetrics():
                return self._flush_metrics()
            case A.PatchVmState(state="Paused"):
                return self._timed("pause vm", "pause")
            case A.PatchVmState(state="Resumed"):
                return self._timed("resume vm", "resume")
            case PatchDrive(update=update) if booted:
                return self._patch_drive(update)
            case PatchDrive():
                raise A.OperationNotSupportedPreBoot()
            case A.GetMmds():
                return self._get_mmds()
            case A.PutMmds(value=value):
                return self._mmds_update("put", value)
            case A.PatchMmds(value=value):
                return self._mmds_update("patch", value)
            case A.PatchNetworkInterface(update=update) if booted:
                return self._patch_network_interface(update)
            case A.PatchNetworkInterface():
                raise A.OperationNotSupportedPreBoot()
            case _ if booted:
                raise A.OperationNotSupportedPostBoot()
            case A.PutBootSource(config=boot_source):
                return self._put_boot_source(boot_source)
            case A.PutMachineConfig():
                return self._put_machine_config(action)
            case A.PatchMachineConfig(update=update):
                return self._patch_machine(update)
            case A.PutCpuConfig(config=cpu_config):
                return self._put_cpu_config(cpu_config)
            case A.PutLogger(config=logger):
                return self._put_logger(logger)
            case A.PutMetrics(config=metrics):
                return self._put_metrics(metrics)
            case A.PutSerial(config=serial):
                return self._put_serial(serial)
            case PutDrive(config=drive):
                return self._put_drive(drive)
            case A.PutMmdsConfig(config=mmds_config):
                return self._put_mmds_config(mmds_config)
            case A.PutEntropy(config=entropy):
                return self._swap(entropy=entropy)
            case A.PutBalloon(config=balloon):
                return self._put_balloon(balloon)
            case A.PutVsock(config=vsock):
                return self._put_vsock(vsock)
            case A.PutNetworkInterface(config=iface):
                return self._put_network_interface(iface)
        raise A.InternalVmmError(f"unknown action {type(action).__name__}")

    # --- MMDS ---------------------------------------------------------------------------------
    def _get_mmds(self) -> A.VmmData:
        from sparkler.mmds.store import NOT_INITIALIZED

        if self.booted and self.config.mmds_config is None and not self.mmds.store.initialized:
            raise A.MmdsError(NOT_INITIALIZED)
        return A.MmdsData(self.mmds.store.value())

    def _mmds_update(self, how: str, value: Any) -> A.VmmData:
        from sparkler.mmds.store import LimitExceeded, MmdsStoreError

        try:
            getattr(self.mmds.store, how)(value)
        except LimitExceeded as e:
            raise A.MmdsLimitExceededError(str(e)) from None
        except MmdsStoreError as e:
            raise A.MmdsError(str(e)) from None
        except (RecursionError, msgspec.EncodeError) as e:
            raise A.MmdsError(f"Cannot store the value: {e}") from None
        return A.Empty()

    def _put_mmds_config(self, mmds_config: Any) -> A.VmmData:
        from sparkler.config.mmds import check_interfaces

        try:
            mmds_config.validate()
            check_interfaces(mmds_config, {i.iface_id for i in (self.config.network_interfaces or [])})
        except ConfigError as e:
            raise A.MmdsConfigError(str(e)) from None
        normalized = mmds_config.normalized()
        self.mmds.configure(normalized)
        return self._swap(mmds_config=normalized)

    # --- pre-boot configuration ---------------------------------------------------------------
    def _swap(self, **changes: Any) -> A.Empty:
        self.config = msgspec.structs.replace(self.config, **changes)
        return A.Empty()

    def _put_drive(self, drive: DriveConfig) -> A.VmmData:
        try:
            drives = insert_drive(list(self.config.drives or []), drive)
        except ConfigError as e:
            raise DriveConfigError(str(e)) from None
        # Firecracker opens the backing file now, so a bad path fails this request, not the boot.
        flags = (os.O_RDONLY if drive.read_only else os.O_RDWR) | os.O_CLOEXEC
        try:
            os.close(os.open(drive.path_on_host or "", flags))
        except OSError as e:
            raise DriveConfigError(
                f"Unable to create the virtio block device: {e.strerror} (os error {e.errno})"
            ) from None
        return self._swap(drives=drives)

    def _put_vsock(self, vsock: Any) -> A.VmmData:
        """Firecracker binds uds_path now (a path that exists already fails this request) and,
        when a vsock is replaced, removes the old socket file first. Sparkler checks the path by
        binding it here and leaves the socket itself to the builder, which binds it again at boot."""
        from sparkler.devices.virtio.vsock.muxer import bind_listener

        try:
            vsock.validate()
        except ConfigError as e:
            raise A.VsockConfigError(str(e)) from None
        old = self.config.vsock
        if old is not None and old.uds_path != vsock.uds_path:
            _unlink_quietly(old.uds_path)
        try:
            listener = bind_listener(vsock.uds_path)
        except OSError as e:
            raise A.VsockConfigError(
                "Cannot create backend for vsock device: Error binding to the host-side Unix socket: "
                f"{_describe(e)}"
            ) from None
        listener.close()
        _unlink_quietly(vsock.uds_path)
        return self._swap(vsock=vsock)

    def _patch_drive(self, update: DriveUpdate) -> A.VmmData:
        from sparkler.config.rate_limiter import build_rate_limiter
        from sparkler.devices.virtio.block.io import DiskBackend
        from sparkler.ratelimit import UNCHANGED, TokenBucket

        prefix = "Unable to patch the block device: "
        try:
            update.validate()
        except ConfigError as e:
            raise DriveConfigError(prefix + str(e)) from None
        transport = self.machine.devices.get(f"block_{update.drive_id}")
        current = next((d for d in self.config.drives or [] if d.drive_id == update.drive_id), None)
        if transport is None or current is None:
            raise DriveConfigError(prefix + f"no block device with id {update.drive_id!r}.")
        block = transport.device
        if update.path_on_host is not None:
            try:
                backend = DiskBackend.open(
                    update.path_on_host, read_only=block.backend.read_only, cache_type=block.backend.cache_type
                )
            except SparklerError as e:
                raise DriveConfigError(prefix + str(e)) from None
            block.update_backend(backend)
            current = msgspec.structs.replace(current, path_on_host=update.path_on_host)
        if update.rate_limiter is not None:
            rl = update.rate_limiter
            if block.rate_limiter is None:
                block.update_rate_limiter(build_rate_limiter(rl))
            else:
                now = block.rate_limiter.clock()

                def bucket(b: Any) -> Any:
                    return UNCHANGED if b is None else TokenBucket.create(b.size, b.one_time_burst or 0, b.refill_time, now)

                with block.lock:
                    block.rate_limiter.update_buckets(bucket(rl.bandwidth), bucket(rl.ops))
            current = msgspec.structs.replace(current, rate_limiter=rl)
        drives = [current if d.drive_id == current.drive_id else d for d in self.config.drives or []]
        return self._swap(drives=drives)

    # --- balloon ------------------------------------------------------------------------------
    def _put_balloon(self, balloon: Any) -> A.VmmData:
        try:
            balloon.validate(self.config.machine.mem_size_mib)
        except ConfigError as e:
            raise A.BalloonConfigError(str(e)) from None
        return self._swap(balloon=balloon)

    def _balloon_device(self) -> Any:
        from sparkler.config.balloon import NO_DEVICE

        transport = (getattr(self.machine, "devices", None) or {}).get("balloon")
        if transport is None or self.config.balloon is None:
            raise A.BalloonConfigError(NO_DEVICE)
        return transport.device

    def _get_balloon(self) -> A.VmmData:
        from sparkler.config.balloon import NO_DEVICE

        if self.config.balloon is None:
            raise A.BalloonConfigError(NO_DEVICE)
        if self.machine is None:
            return A.BalloonConfigData(self.config.balloon)
        device = self._balloon_device()
        current = msgspec.structs.replace(
            self.config.balloon,
            amount_mib=device.target_mib,
            stats_polling_interval_s=device.stats_polling_interval_s,
        )
        return A.BalloonConfigData(current)

    def _get_balloon_stats(self) -> A.VmmData:
        from sparkler.config.balloon import STATS_DISABLED

        device = self._balloon_device()
        if not device.stats_enabled:
            raise A.BalloonConfigError(STATS_DISABLED)
        return A.BalloonStatsData(device.balloon_stats())

    def _patch_balloon(self, amount_mib: int) -> A.VmmData:
        from sparkler.config.balloon import PAGES_PER_MIB, TOO_LARGE

        device = self._balloon_device()
        if amount_mib > self.config.machine.mem_size_mib:
            raise A.BalloonConfigError(TOO_LARGE)
        device.set_target(amount_mib * PAGES_PER_MIB)
        return self._swap(balloon=msgspec.structs.replace(self.config.balloon, amount_mib=amount_mib))

    def _patch_balloon_stats(self, interval_s: int) -> A.VmmData:
        from sparkler.config.balloon import STATS_DISABLED, check_stats_update

        device = self._balloon_device()
        if not device.stats_enabled:
            raise A.BalloonConfigError(STATS_DISABLED)
        try:
            check_stats_update(device.stats_polling_interval_s, interval_s)
        except ConfigError as e:
            raise A.BalloonConfigError(str(e)) from None
        device.set_stats_interval(interval_s)
        balloon = msgspec.structs.replace(self.config.balloon, stats_polling_interval_s=interval_s)
        return self._swap(balloon=balloon)
    def _put_network_interface(self, iface: Any) -> A.VmmData:
        from sparkler.config.net import insert_interface

        try:
            interfaces = insert_interface(list(self.config.network_interfaces or []), iface)
        except ConfigError as e:
            raise A.NetworkInterfaceError(str(e)) from None
        # Firecracker opens the tap now, so a missing tap or missing privileges fail this request.
        from sparkler.devices.virtio.net.tap import Tap

        current = next((n for n in self.config.network_interfaces or [] if n.iface_id == iface.iface_id), None)
        if current is None or current.host_dev_name != iface.host_dev_name:
            try:
                Tap.open(iface.host_dev_name).close()
            except SparklerError as e:
                raise A.NetworkInterfaceError(str(e)) from None
        return self._swap(network_interfaces=interfaces)

    def _patch_network_interface(self, update: Any) -> A.VmmData:
        from sparkler.config.rate_limiter import build_rate_limiter
        from sparkler.ratelimit import UNCHANGED, TokenBucket

        transport = self.machine.devices.get(f"net_{update.iface_id}")
        current = next((n for n in self.config.network_interfaces or [] if n.iface_id == update.iface_id), None)
        if transport is None or current is None:
            raise A.NetworkInterfaceError(
                f"Failed to update the network interface: no network interface with id {update.iface_id!r}."
            )
        net = transport.device

        def change(rl: Any) -> Any:
            if rl is None:
                return None  # absent: unchanged

            def apply(limiter: Any) -> Any:
                if limiter is None:
                    return build_rate_limiter(rl)
                now = limiter.clock()

                def bucket(b: Any) -> Any:
                    return UNCHANGED if b is None else TokenBucket.create(b.size, b.one_time_burst or 0, b.refill_time, now)

                limiter.update_buckets(bucket(rl.bandwidth), bucket(rl.ops))
                return limiter

            return apply

        net.update_rate_limiters(change(update.rx_rate_limiter), change(update.tx_rate_limiter))
        changes: dict[str, Any] = {}
        if update.rx_rate_limiter is not None:
            changes["rx_rate_limiter"] = update.rx_rate_limiter
        if update.tx_rate_limiter is not None:
            changes["tx_rate_limiter"] = update.tx_rate_limiter
        current = msgspec.structs.replace(current, **changes)
        interfaces = [current if n.iface_id == current.iface_id else n for n in self.config.network_interfaces or []]
        return self._swap(network_interfaces=interfaces)

    def _put_boot_source(self, boot_source: Any) -> A.VmmData:
        try:
            boot_source.validate()
        except ConfigError as e:
            raise A.BootSourceError(str(e)) from None
        # Firecracker opens the images now, so a bad path fails this request, not the boot.
        _check_readable(boot_source.kernel_image_path, "The kernel file cannot be opened")
        if boot_source.initrd_path is not None:
            _check_readable(boot_source.initrd_path, "The initrd file cannot be opened")
        return self._swap(boot_source=boot_source)

    def _put_machine_config(self, action: A.PutMachineConfig) -> A.VmmData:
        new = action.config
        cpu_config = self.config.cpu_config
        if not action.sets_cpu_template:
            # An omitted cpu_template keeps the current one (static or custom).
            new = msgspec.structs.replace(new, cpu_template=self.config.machine.cpu_template)
        else:
            cpu_config = None  # a static template (or "None") replaces a custom one
        return self._set_machine(new, cpu_config=cpu_config)

    def _patch_machine(self, update: Any) -> A.VmmData:
        try:
            new = update.apply(self.config.machine)
        except ConfigError as e:
            raise A.MachineConfigError(str(e)) from None
        return self._set_machine(new)

    def _set_machine(self, new: MachineConfig, **extra: Any) -> A.VmmData:
        if new.cpu_template == "None":
            new = msgspec.structs.replace(new, cpu_template=None)
            extra.setdefault("cpu_config", None)
        elif new.cpu_template is not None:
            extra.setdefault("cpu_config", None)
        try:
            new.validate()
        except ConfigError as e:
            raise A.MachineConfigError(str(e)) from None
        if self.config.balloon is not None and self.config.balloon.amount_mib > new.mem_size_mib:
            from sparkler.config.balloon import MEM_SMALLER_THAN_BALLOON

            raise A.MachineConfigError(MEM_SMALLER_THAN_BALLOON)
        return self._swap(machine_config=new, **extra)

    def _put_cpu_config(self, cpu_config: Any) -> A.VmmData:
        machine = msgspec.structs.replace(self.config.machine, cpu_template=None)
        return self._swap(cpu_config=msgspec.to_builtins(cpu_config), machine_config=machine)

    def _put_logger(self, logger: LoggerConfig) -> A.VmmData:
        # Omitted fields keep their value, except level, which resets to Info.
        current = self.config.logger or LoggerConfig()
        changes = {f: getattr(logger, f) for f in logger.__struct_fields__ if getattr(logger, f) is not None}
        changes.setdefault("level", "Info")
        merged = msgspec.structs.replace(current, **changes)
        if self.hooks.configure_logger is not None:
            try:
                self.hooks.configure_logger(merged)
            except (OSError, ValueError, SparklerError) as e:
                raise A.LoggerError(_describe(e)) from None
        return self._swap(logger=merged)

    def _put_metrics(self, metrics: Any) -> A.VmmData:
        if self.metrics_initialized:
            raise A.MetricsError(A.METRICS_REINIT)
        if self.hooks.configure_metrics is not None:
            try:
                self.hooks.configure_metrics(metrics)
            except (OSError, ValueError, SparklerError) as e:
                raise A.MetricsError(_describe(e)) from None
        self.metrics_initialized = True
        return self._swap(metrics=metrics)

    def _put_serial(self, serial: Any) -> A.VmmData:
        if serial.rate_limiter is not None:
            raise A.SerialConfigError(
                "rate_limiter: serial output rate limiting is not supported by this version of Sparkler yet."
            )
        self.serial = serial
        return A.Empty()

    # --- boot ---------------------------------------------------------------------------------
    def _start(self) -> A.VmmData:
        if self.config.boot_source is None:
            raise A.StartMicrovmError(A.MISSING_KERNEL)
        options, serial_fd = self._options_with_serial()
        if isinstance(options, msgspec.Struct) and hasattr(options, "mmds"):
            options = msgspec.structs.replace(options, mmds=self.mmds)  # type: ignore[arg-type]
        try:
            machine = self.builder_fn(self.config, options)
        except (SparklerError, OSError, ValueError) as e:
            _close_quietly(serial_fd)
            raise A.StartMicrovmError(_describe(e)) from None
        try:
            machine.start()
        except (SparklerError, OSError, ValueError, RuntimeError) as e:
            machine.stop()
            _close_quietly(serial_fd)
            raise A.StartMicrovmError(_describe(e)) from None
        self.machine = machine
        if self.hooks.on_started is not None:
            self.hooks.on_started(machine)
        return A.Empty()

    def _options_with_serial(self) -> tuple[Any, int | None]:
        """Build options with serial output sent to PUT /serial's file (opened now)."""
        path = getattr(self.serial, "serial_out_path", None)
        if path is None:
            return self.build_options, None
        try:
            # Firecracker: created if absent, O_NONBLOCK so a FIFO without reader cannot block.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise A.StartMicrovmError(f"Cannot open the serial output file {path}: {e.strerror}") from None
        options = self.build_options
        if isinstance(options, msgspec.Struct) and hasattr(options, "serial_out"):
            options = msgspec.structs.replace(options, serial_out=fd)  # type: ignore[arg-type]
        return options, fd

    # --- post-boot ----------------------------------------------------------------------------
    def _machine_call(self, method: str) -> A.VmmData:
        try:
            getattr(self.machine, method)()
        except (SparklerError, OSError, ValueError, RuntimeError, KeyError) as e:
            raise A.InternalVmmError(_describe(e)) from None
        return A.Empty()

    def _timed(self, label: str, method: str) -> A.VmmData:
        started = time.monotonic_ns()
        result = self._machine_call(method)
        if self.hooks.log is not None:
            self.hooks.log(f"'{label}' API request took {(time.monotonic_ns() - started) // 1000} us.")
        return result

    def _flush_metrics(self) -> A.VmmData:
        if self.hooks.flush_metrics is not None:
            try:
                self.hooks.flush_metrics()
            except (OSError, ValueError, SparklerError) as e:
                raise A.MetricsError(f"Cannot flush the metrics: {_describe(e)}") from None
        return A.Empty()


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror} (os error {error.errno}){where}"
    return str(error)


def _check_readable(path: str, what: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise A.BootSourceError(f"{what}: {e.strerror} (os error {e.errno})") from None
    os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _close_quietly(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


__all__ = ["Controller", "ControllerHooks", "DriveConfigError", "PatchDrive", "PutDrive", "initial_config"]
