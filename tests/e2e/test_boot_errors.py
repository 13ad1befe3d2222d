"""End to end: every bad boot configuration ends the VMM with a non-zero exit, a clear message and no
process left behind; and a big guest that touches little memory costs little host memory.

Each test runs ``python -m sparkler --no-api --config-file cfg`` in its own session, reaps it with
``os.wait4`` (for its resource usage) and then checks that its process group is empty.

Tests run as root here, and root reads any file: the "unreadable" cases therefore start the VMM with
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped from its bounding set, so a mode-000 file really
cannot be opened (while root-owned /dev/kvm, mode 0600, still can).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

TIMEOUT_S = 60
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
BASE_ARGS = "console=ttyS0 reboot=k panic=1"


@dataclass(frozen=True)
class Outcome:
    returncode: int
    output: str  # stdout + stderr (the log goes to stdout)
    maxrss_kib: int
    group_empty: bool

    def describe(self) -> str:
        return f"returncode={self.returncode} maxrss={self.maxrss_kib} KiB\n{self.output[-4000:]}"


def _drop_file_read_override() -> None:  # pragma: no cover - runs in the child before exec
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _can_drop_caps() -> bool:
    import subprocess

    try:
        subprocess.run(["true"], preexec_fn=_drop_file_read_override, check=True)  # noqa: PLW1509
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _run_vmm(tmp_path: Path, config_path: Path, *, no_dac_override: bool = False) -> Outcome:
    import subprocess

    out_path = tmp_path / "vmm.out"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "sparkler", "--no-api", "--config-file", str(config_path)]
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(  # noqa: PLW1509 - preexec_fn only drops capabilities
            cmd,
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_drop_file_read_override if no_dac_override else None,
        )
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            pytest.fail(f"VMM still running after {TIMEOUT_S} s:\n{out_path.read_text(errors='replace')}")
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen from waiting again
    try:
        os.killpg(proc.pid, 0)
        group_empty = False
        os.killpg(proc.pid, signal.SIGKILL)  # do not leak it into later tests
    except ProcessLookupError:
        group_empty = True
    return Outcome(proc.returncode, out_path.read_text(errors="replace"), usage.ru_maxrss, group_empty)


def _config_file(tmp_path: Path, config: dict | str) -> Path:
    path = tmp_path / "vmm-config.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return path


def _config(kernel: str | Path, *, vcpus: int = 1, mem_mib: int = 128, initrd: Path | None = None) -> dict:
    boot: dict = {"kernel_image_path": str(kernel), "boot_args": BASE_ARGS}
    if initrd is not None:
        boot["initrd_path"] = str(initrd)
    return {"boot-source": boot, "machine-config": {"vcpu_count": vcpus, "mem_size_mib": mem_mib}}


def _assert_failed(outcome: Outcome, *fragments: str) -> None:
    assert outcome.returncode not in (0, None), outcome.describe()
    assert outcome.returncode > 0, f"killed by a signal\n{outcome.describe()}"
    for fragment in fragments:
        assert fragment in outcome.output, f"missing {fragment!r}\n{outcome.describe()}"
    assert "Traceback" not in outcome.output, outcome.describe()
    assert outcome.group_empty, "a process of the VMM's group outlived it\n" + outcome.describe()


# --- kernel image errors (the builder opens /dev/kvm first, so these need KVM) -----------------


def test_vmm_missing_kernel_file_exits_with_error(kvm, tmp_path):
    kernel = tmp_path / "no-such-vmlinux"

    outcome = _run_vmm(tmp_path, _config_file(tmp_path, _config(kernel)))

    _assert_failed(outcome, f"The kernel file {kernel} does not exist")


def test_vmm_unreadable_kernel_exits_with_error(kvm, tmp_path, probe_kernel):
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(probe_kernel.read_bytes())
    kernel.chmod(0)
    as_root = os.geteuid() == 0
    if as_root and not _can_drop_caps():
        pytest.skip("running as root without CAP_SETPCAP: cannot make a file unreadable to the VMM")

    outcome = _run_vmm(tmp_path, _config_file(tmp_path, _config(kernel)), no_dac_override=as_root)

    _assert_failed(outcome, f"The kernel file {kernel} cannot be read: permission denied")


def test_vmm_kernel_is_directory_exits_with_error(kvm, tmp_path):
    outcome = _run_vmm(tmp_path, _config_file(tmp_path, _config(tmp_path)))

    _assert_failed(outcome, f"The kernel file {tmp_path} is a directory")


def test_vmm_kernel_is_fifo_exits_without_blocking(kvm, tmp_path):
    fifo = tmp_path / "kernel.fifo"
    os.mkfifo(fifo)  # opening it for reading would block until a writer appears

    outcome = _run_vmm(tmp_path, _config_file(tmp_path, _config(fifo)))

    _assert_failed(outcome, f"The kernel file {fifo} is not a regular file")


def test_vmm_kernel_neither_elf_nor_bzimage_exits_with_error(kvm, tmp_path):
    kernel = tmp_path / "notes.txt"
    kernel.write_text("this is not a kernel\n" * 100)

    outcome = _run_vmm(tmp_path, _config_file(tmp_path, _config(kernel)))

    _assert_failed(outcome, f"Invalid kernel image {kernel}", "neither an ELF vmlinux nor a bzImage")


def test_vmm_truncated_elf_exits_with_error(kvm, tmp_path, probe_kernel):
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(probe_kernel.read_bytes()[:0x1800])  # headers intact, segments cut short

    outcome = _run_vmm(tmp_path, _config_file(tmp_path, _config(kernel)))

    _assert_failed(outcome, f"Invalid kernel image {kernel}", "extends past the end of the file")


def test_vmm_truncated_elf_header_exits_with_error(kvm, tmp_path, probe_kernel):
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(probe_kernel.read_bytes()[:40])

    outcome = _run_vmm(tmp_path, _config_file(tmp_path, _config(kernel)))

    _assert_failed(outcome, f"Invalid kernel image {kernel}", "truncated ELF header")


def test_vmm_lying_elf_header_exits_with_error(kvm, tmp_path, probe_kernel):
    kernel = tmp_path / "vmlinux"
    image = bytearray(probe_kernel.read_bytes())
    struct.pack_into("<H", image, 56, 0xFFFF)  # e_phnum: 65535 program headers in a 44 KiB file
    kernel.write_bytes(bytes(image))

    outcome = _run_vmm(tmp_path, _config_file(tmp_path, _config(kernel)))

    _assert_failed(outcome, f"Invalid kernel image {kernel}", "program headers extend past the end of the file")


def test_vmm_memory_too_small_for_kernel_and_initrd_exits_with_error(kvm, tmp_path, probe_kernel):
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(os.urandom(3 << 20))  # 3 MiB initrd, 2 MiB guest

    outcome = _run_vmm(tmp_path, _config_file(tmp_path, _config(probe_kernel, mem_mib=2, initrd=initrd)))

    _assert_failed(outcome, f"The initrd {initrd}", "does not fit in guest memory", "increase mem_size_mib")


def test_vmm_memory_too_small_for_kernel_exits_with_error(kvm, tmp_path, probe_kernel):
    outcome = _run_vmm(tmp_path, _config_file(tmp_path, _config(probe_kernel, mem_mib=1)))

    _assert_failed(outcome, f"Invalid kernel image {probe_kernel}", "does not fit in guest memory")


def test_vmm_missing_initrd_exits_with_error(kvm, tmp_path, probe_kernel):
    initrd = tmp_path / "no-initrd"

    outcome = _run_vmm(tmp_path, _config_file(tmp_path, _config(probe_kernel, initrd=initrd)))

    _assert_failed(outcome, f"The initrd file {initrd} does not exist")


def test_vmm_boot_args_too_long_exits_with_error(kvm, tmp_path, probe_kernel):
    config = _config(probe_kernel)
    config["boot-source"]["boot_args"] = "a" * 2048  # 2049 bytes with the NUL; 2048 fit

    outcome = _run_vmm(tmp_path, _config_file(tmp_path, config))

    _assert_failed(outcome, "Invalid boot arguments", "2048 bytes")


def test_vmm_boot_args_not_printable_exits_with_error(kvm, tmp_path, probe_kernel):
    config = _config(probe_kernel)
    config["boot-source"]["boot_args"] = "console=ttyS0\treboot=k"

    outcome = _run_vmm(tmp_path, _config_file(tmp_path, config))

    _assert_failed(outcome, "Invalid boot arguments", "printable ASCII")


# --- configuration errors (caught before KVM is touched) ------------------------------------


@pytest.mark.parametrize("vcpus", [0, 33])
def test_vmm_vcpu_count_out_of_range_exits_with_error(tmp_path, vcpus):
    config = _config(tmp_path / "vmlinux", vcpus=vcpus)

    outcome = _run_vmm(tmp_path, _config_file(tmp_path, config))

    _assert_failed(outcome, "Configuration for VMM from one single json failed", "The number of vCPUs")


def test_vmm_unknown_config_key_exits_with_error(tmp_path):
    config = _config(tmp_path / "vmlinux")
    config["machine-config"]["vcpus"] = 2

    outcome = _run_vmm(tmp_path, _config_file(tmp_path, config))

    _assert_failed(outcome, "Configuration for VMM from one single json failed", "unknown field `vcpus`")


def test_vmm_unknown_top_level_config_key_exits_with_error(tmp_path):
    config = _config(tmp_path / "vmlinux")
    config["netwrok-interfaces"] = []

    outcome = _run_vmm(tmp_path, _config_file(tmp_path, config))

    _assert_failed(outcome, "Configuration for VMM from one single json failed", "netwrok-interfaces")


def test_vmm_bad_json_exits_with_error(tmp_path):
    outcome = _run_vmm(tmp_path, _config_file(tmp_path, '{"boot-source": {"kernel_image_path": '))

    _assert_failed(outcome, "Configuration for VMM from one single json failed", "Invalid config file")


def test_vmm_unreadable_config_file_exits_with_error(tmp_path):
    path = _config_file(tmp_path, _config(tmp_path / "vmlinux"))
    path.chmod(0)
    as_root = os.geteuid() == 0
    if as_root and not _can_drop_caps():
        pytest.skip("running as root without CAP_SETPCAP: cannot make a file unreadable to the VMM")

    outcome = _run_vmm(tmp_path, path, no_dac_override=as_root)

    _assert_failed(outcome, f"Unable to read config file {path}", "Permission denied")


def test_vmm_missing_config_file_exits_with_error(tmp_path):
    path = tmp_path / "absent.json"

    outcome = _run_vmm(tmp_path, path)

    _assert_failed(outcome, f"Unable to read config file {path}")


def test_vmm_config_file_is_directory_exits_with_error(tmp_path):
    outcome = _run_vmm(tmp_path, tmp_path)

    _assert_failed(outcome, f"Unable to read config file {tmp_path}", "Is a directory")


# --- demand paging --------------------------------------------------------------------------


def test_vmm_4gib_guest_touching_little_memory_keeps_small_rss(kvm, tmp_path, probe_kernel):
    config = _config(probe_kernel, mem_mib=4096)
    config["boot-source"]["boot_args"] = f"{BASE_ARGS} probe.cpus=1 probe.mem_mib=4096"

    outcome = _run_vmm(tmp_path, _config_file(tmp_path, config))

    assert outcome.returncode == 0, outcome.describe()
    assert "PASS e820" in outcome.output and "INFO probe done fails=0" in outcome.output, outcome.describe()
    assert outcome.group_empty
    # Typically ~18 MiB. One run in a loaded CI clone peaked at 256 MiB (cause not yet found; noted on
    # the issue); 512 MiB is still 1/8 of the guest, so eager allocation of guest RAM fails this test.
    assert outcome.maxrss_kib < 512 * 1024, f"peak RSS {outcome.maxrss_kib} KiB for a 4 GiB guest"

