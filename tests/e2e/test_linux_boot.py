"""Boot the Debian-built Linux guest (``sparkler guest build``) under the VMM.

The guest's init (sparkler/guest/init.sh) prints ``SPARKLER-GUEST-UP``, writes the boot timer
and resets through the i8042 (``reboot=k``), so a good run prints the marker and exits 0.

Skips, each naming its reason:
* no usable /dev/kvm;
* the host's KVM is PVM (kvm_pvm): a stock Linux guest cannot make system calls from user space
  there (python-kvm-notes item 16), so /init can never run; these tests need VMX/SVM;
* the artifacts are not built (``python -m sparkler guest build``), unless ``SPARKLER_SLOW=1``,
  in which case the fixture builds them (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tests.conftest import require_kvm

BOOT_ARGS = "console=ttyS0 reboot=k panic=1 pci=off"
MARKER = "SPARKLER-GUEST-UP"
PVM_MODULE = Path("/sys/module/kvm_pvm")
PVM_REASON = "host /dev/kvm is PVM (kvm_pvm): a stock Linux guest cannot run user space here; needs VMX/SVM"

pytestmark = pytest.mark.slow


def host_kind() -> str:
    """``sparkler.kvm.system.host_kind()``, or the same check done here if that import fails."""
    try:
        from sparkler.kvm.system import host_kind as kvm_host_kind

        return str(kvm_host_kind())
    except Exception:  # noqa: BLE001 - any failure: fall back to the direct check
        return "pvm" if PVM_MODULE.exists() else "hardware"


@pytest.fixture(scope="module")
def guest_artifacts():
    require_kvm()
    if host_kind() == "pvm":
        pytest.skip(PVM_REASON)
    from sparkler.guest import build

    paths = build.artifact_paths()
    built = paths.kernel.exists() and paths.initramfs.exists() and paths.rootfs.exists()
    if not built:
        if os.environ.get("SPARKLER_SLOW") != "1":
            pytest.skip(
                "guest artifacts not built: run `python -m sparkler guest build` "
                "(or set SPARKLER_SLOW=1 to build them here)"
            )
        paths = build.build(build.BuildRequest())
    return paths


def _config(paths, *, boot_args: str = BOOT_ARGS, initrd: bool = True) -> dict:
    boot = {"kernel_image_path": str(paths.kernel), "boot_args": boot_args}
    if initrd:
        boot["initrd_path"] = str(paths.initramfs)
    return {"boot-source": boot, "machine-config": {"vcpu_count": 1, "mem_size_mib": 256}}


def test_linux_initramfs_boot_prints_marker_and_exits_zero(guest_artifacts, run_vmm) -> None:
    run = run_vmm(_config(guest_artifacts), timeout=120)
    assert not run.timed_out, run.describe()
    assert MARKER in run.stdout, run.describe()
    assert run.returncode == 0, run.describe()


def test_linux_boot_timer_written(guest_artifacts, run_vmm) -> None:
    run = run_vmm(_config(guest_artifacts), args=("--boot-timer",), timeout=120)
    assert MARKER in run.stdout, run.describe()
    assert "SPARKLER-BOOT-TIMER-WRITTEN" in run.stdout, run.describe()
    assert run.returncode == 0, run.describe()


@pytest.mark.skipif(
    importlib.util.find_spec("sparkler.config.drive") is None,
    reason="the VMM has no drives (virtio-blk) support yet",
)
def test_linux_ext4_rootfs_boot(guest_artifacts, run_vmm, tmp_path: Path) -> None:
    image = tmp_path / "rootfs.ext4"
    image.write_bytes(guest_artifacts.rootfs.read_bytes())
    config = _config(guest_artifacts, boot_args=BOOT_ARGS + " root=/dev/vda rw", initrd=False)
    config["drives"] = [
        {"drive_id": "rootfs", "path_on_host": str(image), "is_root_device": True, "is_read_only": False}
    ]
    run = run_vmm(config, timeout=120)
    assert MARKER in run.stdout, run.describe()
    assert run.returncode == 0, run.describe()
