"""The builder wires drives: virtio-mmio slots, GSIs, command line, ioeventfd/irqfd, event handlers."""

from __future__ import annotations

import os
import struct

import pytest

from sparkler.arch.x86_64 import layout
from sparkler.config import VmmConfig
from sparkler.config.boot_source import BootSourceConfig
from sparkler.config.drive import DriveConfig
from sparkler.config.machine import MachineConfig
from sparkler.devices.virtio import spec
from sparkler.errors import ConfigError, SparklerError
from sparkler.testing.mock_driver import MmioDriver, MockDriver, readable, writable
from sparkler.vmm.builder import BuildOptions, build_microvm, mmio_slots


def test_mmio_slots_follow_firecracker_layout():
    assert mmio_slots(3) == [(0xC000_1000, 5), (0xC000_2000, 6), (0xC000_3000, 7)]
    assert len(mmio_slots(layout.IRQ_MAX - layout.IRQ_BASE + 1)) == 19
    with pytest.raises(ConfigError, match="Too many devices"):
        mmio_slots(layout.IRQ_MAX - layout.IRQ_BASE + 2)


def _config(kernel, drives: list[DriveConfig], boot_args: str = "console=ttyS0") -> VmmConfig:
    return VmmConfig(
        boot_source=BootSourceConfig(kernel_image_path=str(kernel), boot_args=boot_args),
        machine_config=MachineConfig(vcpu_count=1, mem_size_mib=64),
        drives=drives,
    )


def _cmdline(machine) -> str:
    raw = machine.memory.read(layout.CMDLINE_START, 512)
    return bytes(raw).split(b"\0", 1)[0].decode()


def _disk(tmp_path, name: str, sectors: int = 16) -> str:
    path = tmp_path / name
    path.write_bytes(bytes(range(256)) * 2 * sectors)
    return str(path)


def test_build_with_drives(kvm, probe_kernel, tmp_path):
    data = _disk(tmp_path, "data.img")
    root = _disk(tmp_path, "root.img", sectors=8)
    config = _config(
        probe_kernel,
        [
            DriveConfig(drive_id="data", is_root_device=False, path_on_host=data, cache_type="Writeback"),
            DriveConfig(drive_id="rootfs", is_root_device=True, path_on_host=root, is_read_only=True),
        ],
    )
    machine = build_microvm(config, BuildOptions(serial_out=os.open(os.devnull, os.O_WRONLY)))
    try:
        assert _cmdline(machine) == (
            "console=ttyS0 pci=off root=/dev/vda ro virtio_mmio.device=4K@0xc0001000:5 virtio_mmio.device=4K@0xc0002000:6"
        )
        root_t, data_t = machine.devices["block_rootfs"], machine.devices["block_data"]
        bases = {base: dev for base, _len, dev in machine.mmio_bus.devices()}
        assert bases[0xC000_1000] is root_t and bases[0xC000_2000] is data_t
        assert root_t.device.backend.read_only and root_t.device.capacity_sectors == 8
        # one queue eventfd and one rate-limiter timer per drive
        assert len(machine.event_handlers) == 4

        # Play the guest on the data drive: write sector 1, flush, read it back.
        drv = MmioDriver(data_t)
        assert drv.read32(spec.VIRTIO_MMIO_MAGIC_VALUE) == spec.VIRTIO_MMIO_MAGIC
        assert drv.read32(spec.VIRTIO_MMIO_DEVICE_ID) == spec.VIRTIO_ID_BLOCK
        queue = MockDriver(machine.memory, 0x200_0000, 16)
        assert drv.probe([queue]) & spec.VIRTIO_CONFIG_S_DRIVER_OK
        hdr, buf, status = 0x210_0000, 0x210_1000, 0x210_2000
        machine.memory.write(hdr, struct.pack("<IIQ", spec.VIRTIO_BLK_T_OUT, 0, 1))
        machine.memory.write(buf, b"\xab" * 512)
        queue.add_chain([readable(hdr, 16), readable(buf, 512), writable(status, 1)])
        machine.memory.write(hdr + 32, struct.pack("<IIQ", spec.VIRTIO_BLK_T_FLUSH, 0, 0))
        queue.add_chain([readable(hdr + 32, 16), writable(status + 1, 1)])
        # The guest's QueueNotify store would signal the ioeventfd; do it by hand and run the loop's
        # handler for it.
        handlers = dict(machine.event_handlers)
        fired = 0
        for fd, handler in handlers.items():
            try:
                os.eventfd_write(fd, 1)
            except OSError:
                continue  # the timerfd cannot be written
            handler()
            fired += 1
        assert fired == 2
        assert [u[1] for u in queue.take_used()] == [1, 1]
        assert bytes(machine.memory.read(status, 2)) == b"\0\0"
        with open(data, "rb") as f:
            content = f.read()
        assert content[512:1024] == b"\xab" * 512
        assert content[:512] == bytes(range(256)) * 2
    finally:
        machine.stop()


def test_missing_backing_file_fails_the_build(kvm, probe_kernel, tmp_path):
    config = _config(
        probe_kernel, [DriveConfig(drive_id="rootfs", is_root_device=True, path_on_host=str(tmp_path / "nope"))]
    )
    with pytest.raises(SparklerError, match="nope"):
        build_microvm(config, BuildOptions(serial_out=os.open(os.devnull, os.O_WRONLY)))


def test_partuuid_root_and_rw(kvm, probe_kernel, tmp_path):
    config = _config(
        probe_kernel,
        [DriveConfig(drive_id="r", is_root_device=True, path_on_host=_disk(tmp_path, "r"), partuuid="abcd-01")],
        boot_args="a=b",
    )
    machine = build_microvm(config, BuildOptions(serial_out=os.open(os.devnull, os.O_WRONLY)))
    try:
        assert _cmdline(machine) == "a=b pci=off root=PARTUUID=abcd-01 rw virtio_mmio.device=4K@0xc0001000:5"
    finally:
        machine.stop()


# --- PUT /drives in the controller ------------------------------------------------------------------
def test_controller_put_drive(tmp_path):
    from sparkler.vmm import actions as A
    from sparkler.vmm.controller import Controller, DriveConfigError, PutDrive

    ctl = Controller(lambda config, options: None)
    img = _disk(tmp_path, "a.img")
    assert isinstance(ctl.handle(PutDrive(DriveConfig(drive_id="data", is_root_device=False, path_on_host=img))), A.Empty)
    assert isinstance(ctl.handle(PutDrive(DriveConfig(drive_id="root", is_root_device=True, path_on_host=img))), A.Empty)
    assert [d.drive_id for d in ctl.config.drives] == ["root", "data"]

    err = ctl.handle(PutDrive(DriveConfig(drive_id="root2", is_root_device=True, path_on_host=img)))
    assert isinstance(err, DriveConfigError) and str(err) == "A root block device already exists!"
    err = ctl.handle(PutDrive(DriveConfig(drive_id="x", is_root_device=False, path_on_host=str(tmp_path / "no"))))
    assert isinstance(err, DriveConfigError) and "Unable to create the virtio block device" in str(err)
    err = ctl.handle(PutDrive(DriveConfig(drive_id="x", is_root_device=False, path_on_host=img, io_engine="Async")))
    assert isinstance(err, DriveConfigError) and "Async" in str(err)
    assert [d.drive_id for d in ctl.config.drives] == ["root", "data"]  # errors change nothing
    vm_config = ctl.handle(A.GetVmConfig())
    assert [d.drive_id for d in vm_config.config.drives] == ["root", "data"]


def test_controller_patch_drive_after_boot(kvm, probe_kernel, tmp_path):
    from sparkler.config.drive import DriveUpdate
    from sparkler.config.rate_limiter import RateLimiterConfig
    from sparkler.config.serial import TokenBucketConfig
    from sparkler.vmm import actions as A
    from sparkler.vmm.controller import Controller, DriveConfigError, PatchDrive

    machines = []

    def builder(config, options):
        machine = build_microvm(config, options)
        machine.start = lambda: None  # keep the vCPUs parked: only the devices matter here
        machines.append(machine)
        return machine

    small, big = _disk(tmp_path, "small.img", sectors=8), _disk(tmp_path, "big.img", sectors=32)
    config = _config(probe_kernel, [DriveConfig(drive_id="rootfs", is_root_device=True, path_on_host=small)])
    ctl = Controller(builder, BuildOptions(serial_out=os.open(os.devnull, os.O_WRONLY)), config=config)
    pre = ctl.handle(PatchDrive(DriveUpdate(drive_id="rootfs", path_on_host=big)))
    assert isinstance(pre, A.OperationNotSupportedPreBoot)
    assert isinstance(ctl.handle(A.StartMicroVm()), A.Empty)
    try:
        block = machines[0].devices["block_rootfs"].device
        generation = block.config_generation
        assert isinstance(ctl.handle(PatchDrive(DriveUpdate(drive_id="rootfs", path_on_host=big))), A.Empty)
        assert block.capacity_sectors == 32 and block.config_generation == generation + 1
        assert int.from_bytes(block.config_space[:8], "little") == 32
        assert ctl.config.drives[0].path_on_host == big

        limiter = RateLimiterConfig(ops=TokenBucketConfig(size=100, refill_time=1000))
        assert isinstance(ctl.handle(PatchDrive(DriveUpdate(drive_id="rootfs", rate_limiter=limiter))), A.Empty)
        assert block.rate_limiter.ops.size == 100 and block.rate_limiter.bandwidth is None
        bw = RateLimiterConfig(bandwidth=TokenBucketConfig(size=4096, refill_time=100))
        assert isinstance(ctl.handle(PatchDrive(DriveUpdate(drive_id="rootfs", rate_limiter=bw))), A.Empty)
        assert block.rate_limiter.ops.size == 100 and block.rate_limiter.bandwidth.size == 4096

        for bad in (
            DriveUpdate(drive_id="nope", path_on_host=big),
            DriveUpdate(drive_id="rootfs", path_on_host=str(tmp_path / "missing")),
            DriveUpdate(drive_id="rootfs"),
        ):
            err = ctl.handle(PatchDrive(bad))
            assert isinstance(err, DriveConfigError) and str(err).startswith("Unable to patch the block device: ")
        assert block.capacity_sectors == 32
    finally:
        machines[0].stop()
