"""The builder: the only place that wires a validated configuration into a running machine.

Order (Firecracker's): check the host and KVM capabilities; create the VM and its in-kernel
interrupt controllers and PIT; map guest memory; load the kernel and initrd; assemble the command
line; write boot_params, e820 and the MP table; attach the legacy devices with their irqfds; create
and configure every vCPU (CPUID, MSRs, registers, FPU, LAPIC). Everything opened along the way is
closed again if a later step fails, so a failed build leaves nothing behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any

from sparkler import logger as log
from sparkler.arch.x86_64 import boot, cpuid, interrupts, layout, loader, msr, pvm_compat, regs
from sparkler.arch.x86_64.cmdline import Cmdline, virtio_mmio_device
from sparkler.config import VmmConfig
from sparkler.devices.legacy.i8042 import I8042
from sparkler.devices.legacy.serial import Serial, SerialOutput
from sparkler.errors import ConfigError
from sparkler.host.eventfd import EventFd, EventFdTrigger
from sparkler.kvm import system as kvm_system
from sparkler.memory import GuestMemory
from sparkler.vmm.bus import Bus
from sparkler.vmm.event_loop import DeviceHost, EventLoop
from sparkler.vmm.machine import Machine
from sparkler.vmm.runtime_options import BuildOptions
from sparkler.vmm.vcpu import Vcpu

PVM_HOST_WARNING = (
    "Host /dev/kvm is PVM (kvm_pvm, no hardware virtualisation): only PVM-enabled guest kernels run "
    "natively here. Other guest kernel code runs in KVM's instruction emulator (about 1 us per "
    "instruction) and a stock Linux guest cannot run its user space."
)


def _now_us() -> tuple[int, int]:
    return time.monotonic_ns() // 1000, time.process_time_ns() // 1000


def build_microvm(config: VmmConfig, options: BuildOptions) -> Machine:
    """Build (but do not start) the microVM described by ``config``."""
    config.validate()
    machine_cfg = config.machine
    with ExitStack() as cleanup:
        machine = _build(config, machine_cfg, options, cleanup)
        cleanup.pop_all()
    return machine


def _build(config: VmmConfig, mc: Any, options: BuildOptions, cleanup: ExitStack) -> Machine:
    start_wall_us, start_cpu_us = _now_us()
    if options.start_wall_us is not None:
        start_wall_us = options.start_wall_us
    if options.start_cpu_us is not None:
        start_cpu_us = options.start_cpu_us

    kvm = kvm_system.Kvm()
    cleanup.callback(kvm.close)
    kvm.require()  # Firecracker's required capability set
    host = kvm_system.host_kind()
    if host == "pvm":
        log.warn(PVM_HOST_WARNING)
    try:
        pvm_compat_on = pvm_compat.resolve_mode(options.pvm_compat, host)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    supported = kvm.supported_cpuid()

    mem_size = mc.mem_size_mib << 20
    memory = GuestMemory.create(layout.ram_regions(mem_size))
    cleanup.callback(memory.close)

    # Load the guest images before creating the VM: a bad image is the commonest error.
    bs = config.boot_source
    kernel = loader.load_kernel(memory, bs.kernel_image_path)
    initrd = None
    if bs.initrd_path is not None:
        initrd = loader.load_initrd(memory, bs.initrd_path, kernel.kernel_end)

    specs = virtio_specs(config, options)
    slots = mmio_slots(len(specs))
    cmdline = Cmdline(layout.CMDLINE_MAX_SIZE)
    try:
        cmdline.insert_str(bs.effective_boot_args)
        cmdline.insert_str("pci=off")  # Firecracker's, unless --enable-pci (Sparkler has no PCI)
        for spec, (addr, gsi) in zip(specs, slots, strict=True):
            for word in spec.cmdline:
                cmdline.insert_str(word)
            cmdline.insert_str(virtio_mmio_device(addr, gsi))
        if pvm_compat_on:
            additions = pvm_compat.cmdline_additions(supported, mc.vcpu_count)
            for word in additions:
                cmdline.insert_str(word)
            why = "auto: host KVM is PVM" if options.pvm_compat == "auto" else "--pvm-compat on"
            log.info(
                f"PVM compatibility mode on ({why}): guest command line += {' '.join(additions)}; "
                "INT3/INT n emulation failures are reflected into the guest"
            )
    except ConfigError as e:
        raise ConfigError(f"Invalid boot arguments: {e}") from None
    boot.configure_system(memory, kernel, cmdline.as_bytes(), initrd, mc.vcpu_count)

    vm = kvm.create_vm()
    cleanup.callback(vm.close)
    vm.set_tss_address(layout.KVM_TSS_ADDR)
    vm.set_identity_map_address(layout.KVM_IDENTITY_MAP_ADDR)
    vm.create_irqchip()
    vm.create_pit2()
    for slot, region in enumerate(memory.regions):
        vm.set_user_memory_region(slot, region.gpa, region.size, region.host_addr)

    pio_bus, mmio_bus = Bus(), Bus()
    machine_ref: list[Machine] = []

    def request_exit(code: int, reason: str) -> None:
        machine_ref[0].request_exit(code, reason)

    closeables: list[Any] = []
    devices: dict[str, Any] = {}

    serial_irq = EventFdTrigger()
    closeables.append(serial_irq)
    vm.register_irqfd(serial_irq, layout.IRQ_SERIAL_COM1)
    serial_out_fd = options.serial_out if options.serial_out is not None else 1
    serial_output = SerialOutput(serial_out_fd)
    closeables.append(serial_output)  # gives the console fd its blocking mode back at exit
    serial = Serial(serial_irq, serial_output)
    serial_space = EventFd()  # the guest drained a full receive FIFO: read console input again
    closeables.append(serial_space)
    serial.space_notify = serial_space.write
    serial.space_event = serial_space  # type: ignore[attr-defined]
    pio_bus.insert(serial, layout.PORT_COM1, layout.PORT_COM1_SIZE)
    devices["serial"] = serial

    kbd_irq = EventFdTrigger()
    closeables.append(kbd_irq)
    vm.register_irqfd(kbd_irq, layout.IRQ_I8042)
    i8042 = I8042(lambda: request_exit(0, ""), kbd_irq)
    pio_bus.insert(i8042, layout.PORT_I8042, layout.PORT_I8042_SIZE)
    devices["i8042"] = i8042

    if options.boot_timer:
        from sparkler.devices.pseudo.boot_timer import BootTimer, format_boot_time

        def on_boot() -> None:
            wall_us, cpu_us = _now_us()
            log.info(format_boot_time(wall_us - start_wall_us, cpu_us - start_cpu_us))

        timer = BootTimer(on_boot)
        mmio_bus.insert(timer, layout.BOOT_TIMER_ADDR, layout.BOOT_TIMER_SIZE)
        devices["boot_timer"] = timer

    event_handlers: list[tuple[int, Any]] = []
    loop = EventLoop()
    closeables.append(loop)
    try:
        for spec, (addr, gsi) in zip(specs, slots, strict=True):
            device = spec.create()
            closeables.append(device)
            wiring = VirtioWiring(vm, memory, mmio_bus, loop, closeables, event_handlers)
            devices[spec.key] = wiring.attach(device, addr, gsi)
    except BaseException:
        for c in reversed(closeables):
            c.close()
        raise

    vcpus: list[Vcpu] = []
    for index in range(mc.vcpu_count):
        fd = vm.create_vcpu(index)
        closeables.append(fd)
        fd.set_cpuid2(cpuid.normalize(supported, index, mc.vcpu_count, mc.smt))
        fd.set_msrs(msr.boot_msr_entries())
        regs.setup_regs(fd, kernel.entry)
        regs.setup_fpu(fd)
        regs.setup_sregs(memory, fd)
        interrupts.set_lint(fd)
        reflect = partial(pvm_compat.reflect_soft_interrupt, fd, memory) if pvm_compat_on else None
        vcpus.append(Vcpu(index, fd, pio_bus, mmio_bus, request_exit, reflect))

    machine = Machine(vm, memory, pio_bus, mmio_bus, vcpus, devices, closeables + [vm, kvm], event_handlers, loop)
    machine_ref.append(machine)
    for c in closeables:
        cleanup.callback(c.close)
    return machine


def mmio_slots(count: int) -> list[tuple[int, int]]:
    """``(base address, GSI)`` of the first ``count`` virtio-mmio devices, in attach order."""
    slots = [(layout.VIRTIO_MMIO_START + n * layout.VIRTIO_MMIO_SIZE, layout.IRQ_BASE + n) for n in range(count)]
    if slots and slots[-1][1] > layout.IRQ_MAX:
        raise ConfigError(f"Too many devices: at most {layout.IRQ_MAX - layout.IRQ_BASE + 1} virtio devices fit.")
    return slots


class OneShotTimer:
    """A non-blocking ``timerfd`` (CLOCK_MONOTONIC) armed for one absolute deadline at a time."""

    def __init__(self) -> None:
        import ctypes

        class timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        class itimerspec(ctypes.Structure):
            _fields_ = [("it_interval", timespec), ("it_value", timespec)]

        self._ctypes, self._timespec, self._itimerspec = ctypes, timespec, itimerspec
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.timerfd_create(1, os.O_CLOEXEC | os.O_NONBLOCK)  # CLOCK_MONOTONIC
        if fd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"timerfd_create: {os.strerror(errno)}")
        self.fd = fd
        self.armed_ns: int | None = None

    def arm_at(self, deadline_ns: int) -> None:
        """Fire at ``deadline_ns`` (time.monotonic_ns clock); a deadline already past fires at once."""
        sec, nsec = divmod(max(deadline_ns, 1), 1_000_000_000)
        spec = self._itimerspec(self._timespec(0, 0), self._timespec(sec, nsec))
        if self._libc.timerfd_settime(self.fd, 1, self._ctypes.byref(spec), None) != 0:  # TFD_TIMER_ABSTIME
            errno = self._ctypes.get_errno()
            raise OSError(errno, f"timerfd_settime: {os.strerror(errno)}")
        self.armed_ns = deadline_ns

    def acknowledge(self) -> int:
        self.armed_ns = None
        try:
            return int.from_bytes(os.read(self.fd, 8), "little")
        except BlockingIOError:
            return 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True)
class VirtioSpec:
    """One virtio-mmio device to attach: its ``machine.devices`` key, a factory that opens its host
    resources (called at attach time, in attach order), and command-line words placed before its
    ``virtio_mmio.device=`` entry (e.g. ``root=/dev/vda ro``)."""

    key: str
    create: Callable[[], Any]
    cmdline: tuple[str, ...] = ()


def virtio_specs(config: VmmConfig, options: BuildOptions) -> list[VirtioSpec]:
    """Every configured virtio device in Firecracker's attach order (catalog 4.5), which fixes
    each one's MMIO address and GSI: balloon, block (root first), net, vsock, entropy."""
    specs: list[VirtioSpec] = []
    specs += _balloon_specs(config)
    specs += _block_specs(config)
    specs += _net_specs(config, options)
    specs += _vsock_specs(config)
    specs += _entropy_specs(config)
    return specs


def _balloon_specs(config: VmmConfig) -> list[VirtioSpec]:
    balloon = config.balloon
    if balloon is None:
        return []

    def create() -> Any:
        from sparkler.devices.virtio.balloon.device import BalloonDevice

        return BalloonDevice(
            balloon.amount_mib,
            deflate_on_oom=balloon.deflate_on_oom,
            stats_polling_interval_s=balloon.stats_polling_interval_s,
            free_page_reporting=balloon.free_page_reporting,
        )

    return [VirtioSpec("balloon", create)]


def _entropy_specs(config: VmmConfig) -> list[VirtioSpec]:
    entropy = config.entropy
    if entropy is None:
        return []

    def create() -> Any:
        from sparkler.config.rate_limiter import build_rate_limiter
        from sparkler.devices.virtio.rng.device import EntropyDevice

        return EntropyDevice(build_rate_limiter(entropy.rate_limiter))

    return [VirtioSpec("entropy", create)]


def _vsock_specs(config: VmmConfig) -> list[VirtioSpec]:
    vsock = config.vsock
    if vsock is None:
        return []

    def create() -> Any:
        from sparkler.devices.virtio.vsock.device import VsockDevice

        try:
            return VsockDevice(vsock.guest_cid, vsock.uds_path)
        except OSError as e:
            raise ConfigError(
                "Cannot create backend for vsock device: Error binding to the host-side Unix socket "
                f"{vsock.uds_path}: {e.strerror} (os error {e.errno})"
            ) from None

    return [VirtioSpec("vsock", create)]


def _block_specs(config: VmmConfig) -> list[VirtioSpec]:
    def factory(drive: Any) -> Callable[[], Any]:
        def create() -> Any:
            from sparkler.config.rate_limiter import build_rate_limiter
            from sparkler.devices.virtio.block.device import BlockDevice
            from sparkler.devices.virtio.block.io import CacheType, DiskBackend

            backend = DiskBackend.open(
                drive.path_on_host, read_only=drive.read_only, cache_type=CacheType(drive.cache_type)
            )
            return BlockDevice(drive.drive_id, backend, build_rate_limiter(drive.rate_limiter))

        return create

    return [
        VirtioSpec(
            f"block_{drive.drive_id}",
            factory(drive),
            tuple(drive.root_cmdline()) if drive.is_root_device else (),
        )
        for drive in config.block_devices
    ]


def _mmds_interfaces(config: VmmConfig) -> tuple[set[str], str | None]:
    """The interface ids MMDS is enabled on and its IPv4 address (mmds-config; dict or model)."""
    mc: Any = config.mmds_config
    if not mc:
        return set(), None
    get = mc.get if isinstance(mc, dict) else lambda k, d=None: getattr(mc, k, d)
    return set(get("network_interfaces") or []), get("ipv4_address") or "169.254.169.254"


def _net_specs(config: VmmConfig, options: BuildOptions) -> list[VirtioSpec]:
    mmds_ids, mmds_ipv4 = _mmds_interfaces(config)

    def factory(iface: Any) -> Callable[[], Any]:
        def create() -> Any:
            from sparkler.config.rate_limiter import build_rate_limiter
            from sparkler.devices.virtio.net.device import NetDevice
            from sparkler.devices.virtio.net.tap import Tap

            stack = None
            mmds = getattr(options, "mmds", None)
            if iface.iface_id in mmds_ids and mmds is not None:
                from sparkler.mmds.ns import DEFAULT_MAC, MmdsNetworkStack

                stack = MmdsNetworkStack(DEFAULT_MAC, mmds_ipv4, mmds)
            tap = Tap.open(iface.host_dev_name)
            return NetDevice(
                iface.iface_id,
                tap,
                guest_mac=iface.mac_bytes,
                mtu=iface.mtu,
                rx_rate_limiter=build_rate_limiter(iface.rx_rate_limiter),
                tx_rate_limiter=build_rate_limiter(iface.tx_rate_limiter),
                mmds_stack=stack,
            )

        return create

    return [VirtioSpec(f"net_{iface.iface_id}", factory(iface)) for iface in config.net_devices]


class VirtioWiring:
    """Puts one virtio device on the machine: MMIO transport on the bus, irqfd out, one ioeventfd
    per queue in (served on the VMM thread's loop), a timerfd for its rate limiters, and a
    :class:`DeviceHost` for the host fds the device registers itself."""

    def __init__(
        self,
        vm: Any,
        memory: GuestMemory,
        mmio_bus: Bus,
        loop: EventLoop,
        closeables: list[Any],
        event_handlers: list[tuple[int, Any]],
    ) -> None:
        self.vm, self.memory, self.mmio_bus, self.loop = vm, memory, mmio_bus, loop
        self.closeables, self.event_handlers = closeables, event_handlers

    def attach(self, device: Any, addr: int, gsi: int) -> Any:
        from sparkler.devices.virtio import spec
        from sparkler.devices.virtio.interrupt import IrqTrigger
        from sparkler.devices.virtio.mmio import MmioTransport

        device.report_error = log.error
        irq_evt = EventFdTrigger()
        self.closeables.append(irq_evt)
        self.vm.register_irqfd(irq_evt, gsi)
        transport = MmioTransport(device, self.memory, IrqTrigger(irq_evt))
        self.mmio_bus.insert(transport, addr, layout.VIRTIO_MMIO_SIZE)

        timer = OneShotTimer()
        self.closeables.append(timer)

        def rearm() -> None:
            deadline = device.timer_deadline_ns()
            if deadline is not None and timer.armed_ns != deadline:
                timer.arm_at(deadline)

        def on_timer() -> None:
            if timer.acknowledge():
                device.process_rate_limiter_event()
                rearm()

        self.event_handlers.append((timer.fd, on_timer))

        for index in range(len(device.queues)):
            queue_evt = EventFd()
            self.closeables.append(queue_evt)
            self.vm.register_ioeventfd(queue_evt, addr + spec.VIRTIO_MMIO_QUEUE_NOTIFY, 4, datamatch=index)

            def on_kick(evt: EventFd = queue_evt, index: int = index) -> None:
                if evt.read():
                    device.queue_notify(index)
                    rearm()

            self.event_handlers.append((queue_evt.fd, on_kick))
        device.attach_host(DeviceHost(self.loop, rearm))
        return transport


__all__ = ["BuildOptions", "VirtioSpec", "VirtioWiring", "build_microvm", "mmio_slots", "virtio_specs", "PVM_HOST_WARNING"]
