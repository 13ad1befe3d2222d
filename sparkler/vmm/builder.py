"""The builder: the only place that wires a validated configuration into a running machine.

Order (Firecracker's): check the host and KVM capabilities; create the VM and its in-kernel
interrupt controllers and PIT; map guest memory; load the kernel and initrd; assemble the command
line; write boot_params, e820 and the MP table; attach the legacy devices with their irqfds; create
and configure every vCPU (CPUID, MSRs, registers, FPU, LAPIC). Everything opened along the way is
closed again if a later step fails, so a failed build leaves nothing behind.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from sparkler import logger as log
from sparkler.arch.x86_64 import boot, cpuid, interrupts, layout, loader, msr, regs
from sparkler.arch.x86_64.cmdline import Cmdline
from sparkler.config import VmmConfig
from sparkler.devices.legacy.i8042 import I8042
from sparkler.devices.legacy.serial import Serial, SerialOutput
from sparkler.errors import ConfigError
from sparkler.host.eventfd import EventFdTrigger
from sparkler.kvm import system as kvm_system
from sparkler.memory import GuestMemory
from sparkler.vmm.bus import Bus
from sparkler.vmm.machine import Machine
from sparkler.vmm.vcpu import Vcpu

PVM_HOST_WARNING = (
    "Host /dev/kvm is PVM (kvm_pvm, no hardware virtualisation): only PVM-enabled guest kernels run "
    "natively here. Other guest kernel code runs in KVM's instruction emulator (about 1 us per "
    "instruction) and a stock Linux guest cannot run its user space."
)


@dataclass(frozen=True)
class BuildOptions:
    boot_timer: bool = False
    serial_out: int | None = None  # fd for guest console output; None = stdout
    serial_in: int | None = None  # fd to read guest console input from; None = none
    instance_id: str = "anonymous-instance"
    # Reference points for the boot-timer line (CLOCK_MONOTONIC / process CPU, in microseconds).
    start_wall_us: int | None = None
    start_cpu_us: int | None = None


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
    if kvm_system.host_kind() == "pvm":
        log.warn(PVM_HOST_WARNING)

    mem_size = mc.mem_size_mib << 20
    memory = GuestMemory.create(layout.ram_regions(mem_size))
    cleanup.callback(memory.close)

    # Load the guest images before creating the VM: a bad image is the commonest error.
    bs = config.boot_source
    kernel = loader.load_kernel(memory, bs.kernel_image_path)
    initrd = None
    if bs.initrd_path is not None:
        initrd = loader.load_initrd(memory, bs.initrd_path, kernel.kernel_end)

    cmdline = Cmdline(layout.CMDLINE_MAX_SIZE)
    try:
        cmdline.insert_str(bs.effective_boot_args)
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

    supported = kvm.supported_cpuid()
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
        vcpus.append(Vcpu(index, fd, pio_bus, mmio_bus, request_exit))

    machine = Machine(vm, memory, pio_bus, mmio_bus, vcpus, devices, closeables + [vm, kvm])
    machine_ref.append(machine)
    for c in closeables:
        cleanup.callback(c.close)
    return machine


__all__ = ["BuildOptions", "build_microvm", "PVM_HOST_WARNING"]
