"""Boot the probe guest under the VMM and check, from inside the guest, what the VMM gave it.

The probe (sparkler/testing/guests) reports ``PASS|FAIL|INFO name k=v`` lines on the serial console;
each test boots one configuration and requires every expected PASS line, no FAIL line, the final
``INFO probe done`` line and exit code 0 (the probe ends with an i8042 reset).
"""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import subprocess

import pytest

from sparkler.testing.probe import build_probe, fnv1a32, parse_reports

BASE_ARGS = "console=ttyS0 reboot=k panic=1"
# checks every Linux-protocol boot must pass
COMMON_PASSES = {"boot_params", "e820", "ram_access", "user_mode", "mptable"}

KVM_CHECK_EXTENSION = 0xAE03
KVM_CAP_MAX_VCPUS = 66


def _config(kernel, *, vcpus: int, mem_mib: int, extra: str = "", initrd=None) -> dict:
    args = f"{BASE_ARGS} probe.cpus={vcpus} probe.mem_mib={mem_mib}"
    if extra:
        args += " " + extra
    boot = {"kernel_image_path": str(kernel), "boot_args": args}
    if initrd is not None:
        boot["initrd_path"] = str(initrd)
    return {"boot-source": boot, "machine-config": {"vcpu_count": vcpus, "mem_size_mib": mem_mib}}


def _assert_clean_run(run, expected_passes) -> None:
    reports = run.reports
    assert not run.timed_out, "VMM killed by the watchdog\n" + run.describe()
    assert reports.finished, "probe never printed 'INFO probe done'\n" + run.describe()
    assert not reports.fails, "probe reported failures:\n" + "\n".join(r.line for r in reports.fails)
    missing = {name for name in expected_passes if not reports.passed(name)}
    assert not missing, f"missing PASS lines {sorted(missing)}\n" + run.describe()
    assert run.returncode == 0, run.describe()


def _cmdline_value(reports) -> str:
    lines = reports.named("cmdline", "INFO")
    assert lines, "no 'INFO cmdline' line"
    return lines[0].fields["value"]


def _max_vcpus() -> int:
    fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    try:
        return fcntl.ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS)
    finally:
        os.close(fd)


# ---- the kit itself (no KVM needed) -------------------------------------------------------------


def test_probe_build_is_cached_by_source_hash(tmp_path):
    first = build_probe("linux", cache_dir=tmp_path)
    second = build_probe("linux", cache_dir=tmp_path)

    assert first == second
    assert first.read_bytes()[:4] == b"\x7fELF"
    assert first.read_bytes()[16] == 2  # ET_EXEC


def test_probe_variants_differ_only_by_pvh_note(tmp_path):
    linux = build_probe("linux", cache_dir=tmp_path).read_bytes()
    pvh = build_probe("pvh", cache_dir=tmp_path).read_bytes()

    assert b"Xen\x00" not in linux
    assert b"Xen\x00" in pvh


def test_parse_reports_reads_kinds_fields_and_quoted_cmdline():
    text = (
        "noise\nINFO probe start\r\n"
        'INFO cmdline value="console=ttyS0 a=b probe.x="y""\n'
        "PASS mptable cpus=4\nFAIL e820 what=ram_total total=5 expected=6\n"
        "INFO probe done fails=1\n"
    )

    reports = parse_reports(text)

    assert [r.kind for r in reports] == ["INFO", "INFO", "PASS", "FAIL", "INFO"]
    assert reports[1].fields["value"] == 'console=ttyS0 a=b probe.x="y"'
    assert reports.named("mptable")[0].fields == {"cpus": "4"}
    assert reports.fails[0].fields["what"] == "ram_total"
    assert reports.finished


def test_fnv1a32_matches_reference_vectors():
    assert fnv1a32(b"") == 0x811C9DC5
    assert fnv1a32(b"a") == 0xE40C292C
    assert fnv1a32(b"foobar") == 0xBF9CF968


# ---- booting under the VMM ----------------------------------------------------------------------


def test_probe_boot_1cpu_128mib_all_checks_pass(kvm, probe_kernel, run_vmm):
    config = _config(probe_kernel, vcpus=1, mem_mib=128)

    run = run_vmm(config)

    _assert_clean_run(run, COMMON_PASSES)
    assert run.reports.named("boot", "INFO")[0].fields["protocol"] == "linux"
    assert run.reports.named("mptable", "PASS")[0].fields["cpus"] == "1"


def test_probe_boot_cmdline_passes_through_verbatim(kvm, probe_kernel, run_vmm):
    odd = "probe.note=x,y:z/1 key=va=lue foo.bar-baz=0x10 _under=1"
    config = _config(probe_kernel, vcpus=1, mem_mib=128, extra=odd)

    run = run_vmm(config)

    _assert_clean_run(run, COMMON_PASSES)
    boot_args = config["boot-source"]["boot_args"]
    assert _cmdline_value(run.reports).startswith(boot_args), run.describe()


def test_probe_boot_4cpus_mptable_and_smp_bringup(kvm, probe_kernel, run_vmm):
    if _max_vcpus() < 4:
        pytest.skip(f"host limitation: KVM_CAP_MAX_VCPUS = {_max_vcpus()} < 4")
    config = _config(probe_kernel, vcpus=4, mem_mib=128, extra="probe.smp=1")

    run = run_vmm(config, timeout=90)

    _assert_clean_run(run, COMMON_PASSES | {"smp"})
    assert run.reports.named("mptable", "PASS")[0].fields["cpus"] == "4"
    assert run.reports.named("smp", "PASS")[0].fields["online"] == "4"


def test_probe_boot_4gib_e820_crosses_mmio_gap(kvm, probe_kernel, run_vmm):
    config = _config(probe_kernel, vcpus=1, mem_mib=4096)

    run = run_vmm(config, timeout=90)

    _assert_clean_run(run, COMMON_PASSES)
    entries = {
        (r.fields["addr"], r.fields["size"], r.fields["type"])
        for r in run.reports.named("e820", "INFO")
        if "i" in r.fields
    }
    assert ("0x100000000", "0x40000000", "1") in entries, run.describe()  # [4 GiB, 5 GiB) RAM
    assert ("0x100000", hex(0xC0000000 - 0x100000), "1") in entries, run.describe()


def test_probe_boot_initrd_bytes_verified(kvm, probe_kernel, run_vmm, tmp_path):
    data = random.Random(1234).randbytes(6000)  # not page sized on purpose
    initrd = tmp_path / "initrd.bin"
    initrd.write_bytes(data)
    extra = f"probe.initrd_sum=0x{fnv1a32(data):08x}"
    config = _config(probe_kernel, vcpus=1, mem_mib=128, extra=extra, initrd=initrd)

    run = run_vmm(config)

    _assert_clean_run(run, COMMON_PASSES | {"initrd"})
    assert run.reports.named("initrd", "PASS")[0].fields["size"] == str(len(data))


def test_probe_boot_touch_pages(kvm, probe_kernel, run_vmm):
    config = _config(probe_kernel, vcpus=1, mem_mib=128, extra="probe.touch_mib=32")

    run = run_vmm(config)

    _assert_clean_run(run, COMMON_PASSES | {"touch"})


def test_probe_exception_is_reported_and_run_ends(kvm, probe_kernel, run_vmm):
    config = _config(probe_kernel, vcpus=1, mem_mib=128, extra="probe.fault=ud")

    run = run_vmm(config)

    assert run.reports.finished, run.describe()
    exc = run.reports.named("exception", "FAIL")
    assert exc and exc[0].fields["vec"] == "6", run.describe()
    assert run.returncode == 0, run.describe()


def test_run_vmm_watchdog_kills_a_hung_guest(kvm, probe_kernel, run_vmm):
    config = _config(probe_kernel, vcpus=1, mem_mib=128, extra="probe.hang=1")

    run = run_vmm(config, timeout=8)

    assert run.timed_out and run.returncode is None, run.describe()
    assert any(r.name == "hang" for r in run.reports), run.describe()


def test_probe_pvh_variant_boots(kvm, probe_kernel_pvh, run_vmm):
    """The PVH-note build boots too, whichever entry the VMM picks (Firecracker prefers PVH)."""
    config = _config(probe_kernel_pvh, vcpus=1, mem_mib=128)

    run = run_vmm(config)

    protocol = run.reports.named("boot", "INFO")[0].fields["protocol"] if run.reports else "?"
    expected = {"e820", "ram_access", "user_mode", "mptable"}
    expected |= {"boot_params"} if protocol == "linux" else {"pvh_start_info"}
    _assert_clean_run(run, expected)


# ---- the same probe under QEMU microvm (side by side; validates the kit itself) -----------------


def _qemu(kernel, smp: int, mem_mib: int, append: str, initrd=None, timeout: float = 60):
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 not installed (optional side-by-side check)")
    cmd = [
        qemu, "-enable-kvm", "-cpu", "host,-arch-capabilities",
        "-M", "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=on",
        "-m", f"{mem_mib}M", "-smp", str(smp), "-nodefaults", "-no-user-config", "-nographic",
        "-serial", "stdio", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
        "-kernel", str(kernel), "-append", append,
    ]  # fmt: skip
    if initrd is not None:
        cmd += ["-initrd", str(initrd)]
    res = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    return res, parse_reports(res.stdout.decode("utf-8", "replace"))


def test_probe_under_qemu_microvm_pvh(kvm, probe_kernel_pvh, tmp_path):
    data = random.Random(99).randbytes(5000)
    initrd = tmp_path / "initrd.bin"
    initrd.write_bytes(data)
    append = (
        f"console=ttyS0 probe.layout=none probe.cpus=2 probe.smp=1 probe.initrd_sum=0x{fnv1a32(data):08x}"
    )

    res, reports = _qemu(probe_kernel_pvh, 2, 128, append, initrd=initrd)

    out = res.stdout.decode("utf-8", "replace") + res.stderr.decode("utf-8", "replace")
    assert reports.finished, out
    assert not reports.fails, out
    for name in ("pvh_start_info", "e820", "user_mode", "initrd", "smp"):
        assert reports.passed(name), out
    assert res.returncode == 1, out  # isa-debug-exit: (0 << 1) | 1
