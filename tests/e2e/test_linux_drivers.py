"""Slow tier: real Linux drivers against our devices, on any KVM host including PVM ones.

One boot per module (a module-scoped fixture) of the ``pvm-test`` kernel profile
(``sparkler guest build --profile pvm-test``: only the drivers checked here, no initramfs) with
2 vCPUs and the ext4 rootfs on our virtio-blk; every check reads the guest console of that boot and
fails with the console lines that explain why. On a PVM host the VMM's PVM compatibility mode
(``--pvm-compat auto``) makes the stock kernel boot emulated; its user space cannot run there, so
the boot ends with init's first system call failing, the panic, and the ``reboot=k`` reset
(``panic=-1``): the checks stop at the kernel reaching ``Run /init``.

Each device check is one entry of DEVICE_CHECKS: the config section that attaches the device, the
console pattern that shows its driver bound, and the module that tells whether Sparkler has the
device yet (the check skips naming it when not).

The kernel and rootfs are built on first use (about 5 minutes on 2 cores, cached in
``~/.cache/sparkler/guest``); the tests skip, naming the reason, without /dev/kvm or when the
build cannot run here (missing Debian packages as non-root).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import CompletedRun, _run, require_kvm

# The first test also builds the guest when it is not cached (about 5-10 minutes on 2 cores).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

PROFILE = "pvm-test"
VCPUS = 2
MEM_MIB = 64
# rodata=off: mark_rodata_ro() poisons ~3.5 MiB of freed gaps byte by byte (30 s emulated);
# tsc_early_khz + tsc=reliable: with no-kvmclock the guest cannot calibrate its TSC (the PIT
# calibration fails under emulation) and would tick on jiffies; dyndbg prints each driver binding
# (a KERN_DEBUG line, hence loglevel=8).
BOOT_ARGS = (
    'console=ttyS0 reboot=k panic=-1 printk.time=1 loglevel=8 rodata=off tsc=reliable dyndbg="func driver_bound +p"'
)
BOOT_TIMEOUT_S = 900
EXT4_SUPERBLOCK = 1024
EXT4_MAGIC = 0xEF53


@dataclass
class LinuxBoot:
    """The result of the module's one boot."""

    run: CompletedRun
    disk: Path
    superblock_before: bytes
    metrics: list[dict] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def console(self) -> str:
        return self.run.stdout

    def excerpt(self, *patterns: str, context: int = 3, limit: int = 40) -> str:
        """Console lines matching ``patterns`` (with context), else the console's tail."""
        lines = self.console.splitlines()
        keep: set[int] = set()
        for i, line in enumerate(lines):
            if any(re.search(p, line) for p in patterns):
                keep.update(range(max(0, i - context), min(len(lines), i + context + 1)))
        chosen = [lines[i] for i in sorted(keep)][:limit] if keep else lines[-limit:]
        head = "matching console lines" if keep else f"no console line matches {patterns}; console tail"
        return (
            f"{head}:\n" + "\n".join(chosen) + f"\n--- run: returncode={self.run.returncode} "
            f"timed_out={self.run.timed_out} duration={self.run.duration_s:.1f}s\n--- stderr tail ---\n"
            + self.run.stderr[-3000:]
        )

    def search(self, pattern: str) -> re.Match[str] | None:
        return re.search(pattern, self.console, re.MULTILINE)

    def block_metrics(self) -> dict[str, int]:
        """The ``block`` group summed over every metrics line of the run (each line is a delta)."""
        totals: dict[str, int] = {}
        for doc in self.metrics:
            for key, value in doc.get("block", {}).items():
                if isinstance(value, int):
                    totals[key] = totals.get(key, 0) + value
        return totals


# --- device checks: one entry per virtio device beyond the root drive -------------------------------
class BootEnv:
    """What device checks may add to the boot: config sections, guest command-line words, a prefix
    for the VMM command (e.g. ``ip netns exec``), processes that run alongside the boot, and the
    cleanups (an ExitStack). ``notes`` collects per-check results (e.g. ping output)."""

    def __init__(self, work: Path, stack: ExitStack) -> None:
        self.work, self.stack = work, stack
        self.boot_args: list[str] = []
        self.cmd_prefix: list[str] = []
        self.notes: dict[str, str] = {}
        self.after_boot: list[Callable[[], None]] = []


@dataclass(frozen=True)
class DeviceCheck:
    """One virtio device: the config-file section that attaches it (``section``/``value``), the Linux
    driver that must bind to it, and ``setup(config, env)`` for anything beyond the section."""

    name: str
    section: str
    value: Callable[[Path], object]  # the section's value, given the boot's work directory
    driver: str
    setup: Callable[[dict, BootEnv], None] | None = None

    @property
    def landed(self) -> bool:
        """Sparkler accepts the section and the builder attaches a virtio device for it."""
        from sparkler.config import parse_vmm_config
        from sparkler.vmm.builder import BuildOptions, virtio_specs

        doc = {
            "boot-source": {"kernel_image_path": "/nonexistent"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
            self.section: self.value(Path("/nonexistent")),
        }
        try:
            return len(virtio_specs(parse_vmm_config(json.dumps(doc).encode()), BuildOptions())) > 0
        except Exception:  # noqa: BLE001 - unknown section, or no builder support yet
            return False


NET_HOST_IP, NET_GUEST_IP, NET_GUEST_MAC = "172.16.231.1", "172.16.231.2", "06:00:ac:10:e7:02"
# ICMP echo every 0.1 s from the netns for the whole boot (no `ping` binary needed): argv is the
# destination, the duration in seconds and the log file, which gets one line per echo reply.
PINGER = r"""
import os, select, socket, struct, sys, time
dst, stop_at, path = sys.argv[1], time.monotonic() + float(sys.argv[2]), sys.argv[3]
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xFFFF


def checksum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


seq = 0
with open(path, "a") as log:
    while time.monotonic() < stop_at:
        seq = (seq + 1) & 0xFFFF
        body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"sparkler"
        try:
            sock.sendto(body[:2] + struct.pack("!H", checksum(body)) + body[4:], (dst, 0))
        except OSError as e:
            log.write(f"send seq={seq}: {e}\n")
        until = time.monotonic() + 0.1
        while (left := until - time.monotonic()) > 0 and select.select([sock], [], [], left)[0]:
            data, addr = sock.recvfrom(2048)
            kind, _, _, rid, rseq = struct.unpack_from("!BBHHH", data, (data[0] & 0xF) * 4)
            if kind == 0 and rid == ident and addr[0] == dst:
                log.write(f"echo reply from {dst} seq={rseq}\n")
        log.flush()
"""


def _net_setup(config: dict, env: BootEnv) -> None:
    """A tap in a fresh netns: the VMM runs inside it, the guest configures eth0 with ``ip=``, and an
    ICMP echo loop (PINGER) runs in the netns for the whole boot; the guest kernel answers while it
    is up (from IP-Config until the panic after Run /init)."""
    ns = f"pvml{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    env.stack.callback(subprocess.run, ["ip", "netns", "del", ns], check=False)
    for cmd in (
        ["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"],
        ["ip", "addr", "add", f"{NET_HOST_IP}/30", "dev", "tap0"],
        ["ip", "link", "set", "tap0", "up"],
        # A permanent neighbour entry: echo requests go out at once instead of waiting on ARP
        # retries, so a short window (a fast hardware-KVM boot) is still caught.
        ["ip", "neigh", "add", NET_GUEST_IP, "lladdr", NET_GUEST_MAC, "dev", "tap0", "nud", "permanent"],
    ):
        subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
    env.cmd_prefix = ["ip", "netns", "exec", ns]
    env.boot_args.append(f"ip={NET_GUEST_IP}::{NET_HOST_IP}:255.255.255.252::eth0:off")
    out, err = env.work / "ping.log", env.work / "ping.err"
    with err.open("wb") as err_file:
        ping = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", PINGER, NET_GUEST_IP, str(BOOT_TIMEOUT_S), str(out)],
            stdin=subprocess.DEVNULL,
            stdout=err_file,
            stderr=subprocess.STDOUT,
        )

    def stop() -> None:
        if ping.poll() is None:
            ping.terminate()
            ping.wait(10)
        env.notes["ping"] = (out.read_text(errors="replace") if out.exists() else "") + err.read_text(errors="replace")

    env.stack.callback(stop)
    env.after_boot.append(stop)


DEVICE_CHECKS: list[DeviceCheck] = [
    DeviceCheck(
        "net",
        "network-interfaces",
        lambda _work: [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": NET_GUEST_MAC}],
        "virtio_net",
        _net_setup,
    ),
    DeviceCheck("rng", "entropy", lambda _work: {}, "virtio_rng"),
    DeviceCheck(
        "vsock", "vsock", lambda work: {"guest_cid": 3, "uds_path": str(work / "v.sock")}, "vmw_vsock_virtio_transport"
    ),
    DeviceCheck("balloon", "balloon", lambda _work: {"amount_mib": 0, "deflate_on_oom": False}, "virtio_balloon"),
]


# --- the boot ------------------------------------------------------------------------------------------
def _artifacts():
    from sparkler.guest import build, kernel, rootfs

    paths = build.artifact_paths(profile=PROFILE)
    if paths.kernel.exists() and paths.rootfs.exists():
        return paths
    missing = [p for p in (*kernel.BUILD_PACKAGES, *rootfs.BUILD_PACKAGES) if build.package_version(p) is None]
    if missing and not _is_root():
        pytest.skip(f"the {PROFILE} guest cannot be built here: missing Debian packages {' '.join(missing)}")
    try:
        return build.build(build.BuildRequest(profile=PROFILE), progress=lambda m: print(m, file=sys.stderr))
    except build.GuestBuildError as e:
        pytest.fail(f"building the {PROFILE} guest failed: {e}")


def _tsc_khz() -> int | None:
    """The TSC frequency KVM gives vCPUs (KVM_GET_TSC_KHZ on a scratch vCPU), or None."""
    import fcntl

    kvm_create_vm, kvm_create_vcpu, kvm_get_tsc_khz = 0xAE01, 0xAE41, 0xAEA3
    fds = []
    try:
        fds.append(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
        fds.append(fcntl.ioctl(fds[0], kvm_create_vm, 0))
        fds.append(fcntl.ioctl(fds[1], kvm_create_vcpu, 0))
        khz = fcntl.ioctl(fds[2], kvm_get_tsc_khz, 0)
        return khz if khz > 0 else None
    except OSError:
        return None
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _is_root() -> bool:
    return os.geteuid() == 0


@pytest.fixture(scope="module")
def linux_boot(tmp_path_factory) -> Iterator[LinuxBoot]:
    require_kvm()
    paths = _artifacts()
    work = tmp_path_factory.mktemp("linux-drivers")
    disk = work / "rootfs.ext4"
    shutil.copyfile(paths.rootfs, disk)
    with disk.open("rb") as f:
        f.seek(EXT4_SUPERBLOCK)
        superblock = f.read(1024)
    khz = _tsc_khz()
    config: dict = {
        "boot-source": {"kernel_image_path": str(paths.kernel)},
        "machine-config": {"vcpu_count": VCPUS, "mem_size_mib": MEM_MIB},
        # Writeback: the device offers VIRTIO_BLK_F_FLUSH, so ext4's barriers reach the host as flushes.
        "drives": [
            {
                "drive_id": "rootfs",
                "path_on_host": str(disk),
                "is_root_device": True,
                "is_read_only": False,
                "cache_type": "Writeback",
            }
        ],
    }
    with ExitStack() as stack:
        env = BootEnv(work, stack)
        env.boot_args = [BOOT_ARGS] + ([f"tsc_early_khz={khz}"] if khz else [])
        for check in DEVICE_CHECKS:
            if check.landed:
                config[check.section] = check.value(work)
                if check.setup is not None:
                    check.setup(config, env)
        config["boot-source"]["boot_args"] = " ".join(env.boot_args)
        cfg = work / "vm.json"
        cfg.write_text(json.dumps(config, indent=2))
        metrics = work / "metrics.json"
        cmd = [*env.cmd_prefix, sys.executable, "-m", "sparkler", "--no-api", "--config-file", str(cfg),
               "--metrics-path", str(metrics)]
        run = _run(cmd, work, BOOT_TIMEOUT_S)
        for hook in env.after_boot:
            hook()
        (work / "console.log").write_text(run.stdout)
        docs = []
        if metrics.exists():
            for line in metrics.read_text().splitlines():
                try:
                    docs.append(json.loads(line))
                except ValueError:
                    continue
        yield LinuxBoot(run, disk, superblock, docs, dict(env.notes))


# --- the checks ------------------------------------------------------------------------------------------
def test_boot_ran_to_the_end(linux_boot: LinuxBoot) -> None:
    """The VMM ended by itself through the guest's reset (no watchdog kill, no KVM failure)."""
    assert not linux_boot.run.timed_out, "the boot did not finish in time\n" + linux_boot.excerpt(r"\S")
    assert linux_boot.run.returncode == 0, linux_boot.excerpt(r"Kernel panic|BUG|Oops|KVM_EXIT")


def test_two_cpus_brought_up(linux_boot: LinuxBoot) -> None:
    match = linux_boot.search(r"smp: Brought up \d+ nodes?, (\d+) CPUs?")
    assert match is not None and int(match.group(1)) == VCPUS, linux_boot.excerpt(r"smp|CPU|APIC|Booting")


def test_root_mounted_from_our_virtio_blk(linux_boot: LinuxBoot) -> None:
    explain = linux_boot.excerpt(r"virtio|vda|EXT4|VFS|root")
    assert linux_boot.search(r"driver: 'virtio_blk': driver_bound: bound to device 'virtio\d+'"), explain
    assert linux_boot.search(r"virtio_blk virtio\d+: \[vda\]"), explain
    assert linux_boot.search(r"EXT4-fs \(vda\): mounted filesystem"), explain
    assert linux_boot.search(r"VFS: Mounted root \(ext4 filesystem\)"), explain


def test_block_reads_writes_and_flushes_reach_the_host_file(linux_boot: LinuxBoot) -> None:
    explain = linux_boot.excerpt(r"virtio|vda|EXT4|VFS")
    block = linux_boot.block_metrics()
    assert block.get("read_count", 0) > 0 and block.get("read_bytes", 0) > 0, f"block metrics {block}\n{explain}"
    assert block.get("write_count", 0) > 0 and block.get("write_bytes", 0) > 0, f"block metrics {block}\n{explain}"
    assert block.get("flush_count", 0) > 0, f"block metrics {block}\n{explain}"
    with linux_boot.disk.open("rb") as f:
        f.seek(EXT4_SUPERBLOCK)
        after = f.read(1024)
    # ext4 superblock: s_mnt_count at 0x34 (a read-write mount increments it), s_magic at 0x38.
    assert struct.unpack_from("<H", after, 0x38)[0] == EXT4_MAGIC, "the host file lost its ext4 superblock"
    before_mnt = struct.unpack_from("<H", linux_boot.superblock_before, 0x34)[0]
    after_mnt = struct.unpack_from("<H", after, 0x34)[0]
    assert after_mnt == before_mnt + 1, f"s_mnt_count {before_mnt} -> {after_mnt}: the mount was not written\n{explain}"


def test_kernel_reaches_run_init(linux_boot: LinuxBoot) -> None:
    assert linux_boot.search(r"Run \S+ as init process"), linux_boot.excerpt(r"init|VFS|panic|Freeing")


def _check(name: str) -> DeviceCheck:
    return next(c for c in DEVICE_CHECKS if c.name == name)


@pytest.mark.parametrize("check", DEVICE_CHECKS, ids=[c.name for c in DEVICE_CHECKS])
def test_driver_bound_to_our_device(linux_boot: LinuxBoot, check: DeviceCheck) -> None:
    if not check.landed:
        pytest.skip(f"Sparkler has no {check.name} device yet (the {check.section!r} config section attaches nothing)")
    bound = rf"driver: '{check.driver}': driver_bound: bound to device 'virtio\d+'"
    assert linux_boot.search(bound), linux_boot.excerpt(r"driver_bound", r"virtio", check.driver)


def test_net_ip_autoconfig_and_host_ping_answered(linux_boot: LinuxBoot) -> None:
    check = _check("net")
    if not check.landed:
        pytest.skip("Sparkler has no net device yet (the 'network-interfaces' config section attaches nothing)")
    explain = linux_boot.excerpt(r"IP-Config|eth0|virtio_net|ipaddr")
    assert linux_boot.search(r"IP-Config: Complete"), explain
    assert linux_boot.search(rf"ipaddr={re.escape(NET_GUEST_IP)}\b"), explain
    ping = linux_boot.notes.get("ping", "")
    assert f"echo reply from {NET_GUEST_IP}" in ping, (
        f"no ping reply from the guest kernel; ping output tail:\n{ping[-1500:]}\n"
        + explain
    )
