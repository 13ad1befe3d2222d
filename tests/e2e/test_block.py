"""virtio-blk end to end: the probe guest boots with drives attached from the config file."""

from __future__ import annotations

BASE_ARGS = "console=ttyS0 reboot=k panic=1 probe.cpus=1 probe.mem_mib=128"


def _config(kernel, drives: list[dict], extra: str = "") -> dict:
    return {
        "boot-source": {"kernel_image_path": str(kernel), "boot_args": f"{BASE_ARGS} {extra}".strip()},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "drives": drives,
    }


def _assert_clean(run) -> None:
    assert not run.timed_out, run.describe()
    assert run.reports.finished, run.describe()
    assert not run.reports.fails, run.describe()
    assert run.returncode == 0, run.describe()


def test_drives_appear_on_the_guest_command_line(kvm, probe_kernel, run_vmm, tmp_path):
    root, data = tmp_path / "root.img", tmp_path / "data.img"
    root.write_bytes(bytes(64 * 1024))
    data.write_bytes(bytes(64 * 1024))
    drives = [
        {"drive_id": "data", "is_root_device": False, "path_on_host": str(data)},
        {"drive_id": "rootfs", "is_root_device": True, "path_on_host": str(root), "is_read_only": True},
    ]
    run = run_vmm(_config(probe_kernel, drives))
    _assert_clean(run)
    line = run.reports.named("cmdline", "INFO")[0].fields["value"]
    assert line == (
        f"{BASE_ARGS} root=/dev/vda ro virtio_mmio.device=4K@0xc0001000:5 virtio_mmio.device=4K@0xc0002000:6"
    ), run.describe()
    assert root.read_bytes() == bytes(64 * 1024)


def test_missing_backing_file_is_a_clear_startup_error(kvm, probe_kernel, run_vmm, tmp_path):
    drives = [{"drive_id": "rootfs", "is_root_device": True, "path_on_host": str(tmp_path / "missing.img")}]
    run = run_vmm(_config(probe_kernel, drives))
    assert not run.timed_out, run.describe()
    assert run.returncode != 0, run.describe()
    assert "missing.img" in run.stdout + run.stderr, run.describe()


def test_async_io_engine_is_refused(kvm, probe_kernel, run_vmm, tmp_path):
    img = tmp_path / "root.img"
    img.write_bytes(bytes(4096))
    drives = [{"drive_id": "rootfs", "is_root_device": True, "path_on_host": str(img), "io_engine": "Async"}]
    run = run_vmm(_config(probe_kernel, drives))
    assert run.returncode != 0, run.describe()
    assert "Async" in run.stdout + run.stderr, run.describe()
