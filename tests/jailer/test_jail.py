"""Real jailed runs of a static probe exec file: chroot layout, ids, rlimits, cgroups, namespaces.

Needs root, gcc with a static libc, and the cgroup hierarchies it uses (skips otherwise). Every test
uses a tmp dir as --chroot-base-dir, a unique parent cgroup removed afterwards, and waits for the
probe to exit.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from sparkler.jailer import cgroup
from tests.jailer.helpers import JAILER, build_probe, read_report, require_root, run_jailer, wait_gone

UID = 12345  # unprivileged ids the probe must run as
GID = 23456
EXEC_NAME = "sparkler-probe"


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    require_root()
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    return build_probe(build_dir, EXEC_NAME)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    b = tmp_path / "base"
    b.mkdir()
    return b


@pytest.fixture
def parent_cgroup():
    """A unique parent cgroup name; its directories are removed from every hierarchy afterwards."""
    name = f"sparkler-test-{uuid.uuid4().hex[:8]}"
    yield name
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f if line.split()[2] in ("cgroup", "cgroup2")]
    for mount in mounts:
        top = os.path.join(mount, name)
        if os.path.isdir(top):
            for dirpath, _, _ in sorted(os.walk(top), key=lambda t: -len(t[0])):
                os.rmdir(dirpath)


def _args(probe: Path, base: Path, vm_id: str, *extra: str) -> list[str]:
    return [
        "--id", vm_id, "--exec-file", str(probe), "--uid", str(UID), "--gid", str(GID),
        "--chroot-base-dir", str(base), *extra,
    ]  # fmt: skip


def _root(base: Path, vm_id: str) -> Path:
    return base / EXEC_NAME / vm_id / "root"


def _hold(probe: Path, base: Path, vm_id: str, *extra: str) -> subprocess.Popen[str]:
    """Start a jailed probe that waits for <root>/release; the caller must release it."""
    return subprocess.Popen(
        [*JAILER, *_args(probe, base, vm_id, *extra), "--", "--hold"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _release(root: Path, pid: int, jailer: subprocess.Popen[str]) -> None:
    (root / "release").touch()
    wait_gone(pid)
    jailer.communicate(timeout=10)


def test_jail_runs_probe_in_chroot_as_uid_gid_with_args(probe, base):
    result = run_jailer(*_args(probe, base, "vm-a"), "--", "--level", "Debug")
    assert result.returncode == 0, result.stderr
    report = read_report(_root(base, "vm-a") / "out.txt")
    assert report["uid"] == [str(UID)] and report["gid"] == [str(GID)]
    assert report["cwd"] == ["/"]
    assert report["host_bin"] == ["0"]  # the host's /bin/sh is not visible
    args = report["arg"]
    assert args[0] == f"/{EXEC_NAME}"
    assert args[1:3] == ["--id", "vm-a"]
    assert args[3] == "--start-time-us" and args[5] == "--start-time-cpu-us"
    assert args[7] == "--parent-cpu-time-us"
    assert args[9:] == ["--level", "Debug"]


def test_jail_layout_exec_copy_pid_file_and_device_nodes(probe, base):
    result = run_jailer(*_args(probe, base, "vm-b"))
    assert result.returncode == 0, result.stderr
    root = _root(base, "vm-b")
    copied = root / EXEC_NAME
    assert copied.read_bytes() == probe.read_bytes()
    assert copied.stat().st_ino != probe.stat().st_ino and copied.stat().st_nlink == 1
    assert (copied.stat().st_uid, copied.stat().st_gid) == (UID, GID)
    report = read_report(root / "out.txt")
    assert (root / f"{EXEC_NAME}.pid").read_text() == report["pid"][0]
    for d in ("", "dev", "dev/net", "run"):
        st = (root / d).stat()
        assert stat.S_IMODE(st.st_mode) == 0o700 and (st.st_uid, st.st_gid) == (UID, GID)
    expected = {"dev/kvm": (10, 232), "dev/net/tun": (10, 200), "dev/urandom": (1, 9)}
    uffd = _misc_minor("userfaultfd")
    if uffd is not None:
        expected["dev/userfaultfd"] = (10, uffd)
    for node, (major, minor) in expected.items():
        st = (root / node).stat()
        assert stat.S_ISCHR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (major, minor)
        assert (st.st_uid, st.st_gid) == (UID, GID)
    assert not (root / "old_root").exists()


def _misc_minor(name: str) -> int | None:
    with open("/proc/misc") as f:
        for line in f:
            minor, dev = line.split()
            if dev == name:
                return int(minor)
    return None


def test_jail_resource_limits_default_and_given(probe, base):
    run_jailer(*_args(probe, base, "vm-c"))
    assert read_report(_root(base, "vm-c") / "out.txt")["nofile"] == ["2048"]
    result = run_jailer(*_args(probe, base, "vm-d", "--resource-limit", "no-file=100",
                               "--resource-limit", "fsize=1048576"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = read_report(_root(base, "vm-d") / "out.txt")
    assert report["nofile"] == ["100"] and report["fsize"] == ["1048576"]


def test_jail_new_pid_ns_probe_is_pid_1_and_pid_file_has_host_pid(probe, base):
    jailer = _hold(probe, base, "vm-e", "--new-pid-ns")
    root = _root(base, "vm-e")
    report = read_report(root / "out.txt")
    host_pid = int((root / f"{EXEC_NAME}.pid").read_text())
    try:
        assert report["pid"] == ["1"]
        assert os.readlink(f"/proc/{host_pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
        assert os.readlink(f"/proc/{host_pid}/root") == "/"  # its root is the jail
    finally:
        _release(root, host_pid, jailer)
    assert jailer.returncode == 0


def test_jail_daemonize_detaches_and_redirects_stdio(probe, base):
    result = run_jailer(*_args(probe, base, "vm-f", "--daemonize"), "--", "--hold")
    assert result.returncode == 0, result.stderr  # the jailer's first fork returned at once
    root = _root(base, "vm-f")
    report = read_report(root / "out.txt")
    pid = int((root / f"{EXEC_NAME}.pid").read_text())
    try:
        assert report["sid_is_pid"] == ["0"]  # setsid, then a second fork: not a session leader
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
        assert os.getsid(pid) != os.getsid(0)
    finally:
        (root / "release").touch()
        wait_gone(pid)


def _v1_mount(controller: str) -> str:
    try:
        return cgroup.v1_hierarchy(controller)
    except Exception:
        pytest.skip(f"no cgroup v1 hierarchy for {controller}")


def test_jail_cgroup_v1_values_written_and_pid_attached(probe, base, parent_cgroup):
    pids_mount = _v1_mount("pids")
    cpuset_mount = _v1_mount("cpuset")
    jailer = _hold(probe, base, "vm-g", "--parent-cgroup", parent_cgroup,
                   "--cgroup", "pids.max=50", "--cgroup", "cpuset.cpus=0")  # fmt: skip
    root = _root(base, "vm-g")
    read_report(root / "out.txt")
    pid = int((root / f"{EXEC_NAME}.pid").read_text())
    try:
        pids_dir = Path(pids_mount, parent_cgroup, "vm-g")
        cpuset_dir = Path(cpuset_mount, parent_cgroup, "vm-g")
        assert (pids_dir / "pids.max").read_text() == "50\n"
        assert (cpuset_dir / "cpuset.cpus").read_text() == "0\n"
        parent_mems = Path(cpuset_mount, "cpuset.mems").read_text()
        assert (cpuset_dir / "cpuset.mems").read_text() == parent_mems  # inherited, attach needs it
        with open(f"/proc/{pid}/cgroup") as f:
            membership = f.read()
        assert f"pids:/{parent_cgroup}/vm-g\n" in membership
        assert f"cpuset:/{parent_cgroup}/vm-g\n" in membership
    finally:
        _release(root, pid, jailer)


def test_jail_cgroup_v2_joins_existing_parent(probe, base, parent_cgroup):
    try:
        unified = cgroup.unified_root()
    except Exception:
        pytest.skip("no cgroup2 mount")
    os.mkdir(os.path.join(unified, parent_cgroup))
    jailer = _hold(probe, base, "vm-h", "--cgroup-version", "2", "--parent-cgroup", parent_cgroup)
    root = _root(base, "vm-h")
    read_report(root / "out.txt")
    pid = int((root / f"{EXEC_NAME}.pid").read_text())
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            assert f"0::/{parent_cgroup}\n" in f.read()
    finally:
        _release(root, pid, jailer)


def test_jail_cgroup_v2_creates_vm_cgroup_and_attaches(probe, base, parent_cgroup):
    try:
        unified = cgroup.unified_root()
    except Exception:
        pytest.skip("no cgroup2 mount")
    available = Path(unified, "cgroup.controllers").read_text().split()
    if "pids" in available:
        setting = "pids.max=40"
    else:
        pytest.skip(f"no usable controller in cgroup2 (available: {available})")
    jailer = _hold(probe, base, "vm-i", "--cgroup-version", "2", "--parent-cgroup", parent_cgroup,
                   "--cgroup", setting)  # fmt: skip
    root = _root(base, "vm-i")
    read_report(root / "out.txt")
    pid = int((root / f"{EXEC_NAME}.pid").read_text())
    try:
        assert Path(unified, parent_cgroup, "vm-i", "pids.max").read_text() == "40\n"
        with open(f"/proc/{pid}/cgroup") as f:
            assert f"0::/{parent_cgroup}/vm-i\n" in f.read()
    finally:
        _release(root, pid, jailer)


def test_jail_netns_is_joined(probe, base):
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is needed to create a network namespace")
    # a netns handle without `ip netns add` (which leaves a /run/netns mount behind): the namespace
    # file of a process that unshared its network namespace
    holder = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    netns = f"/proc/{holder.pid}/ns/net"
    try:
        deadline = time.monotonic() + 10
        while os.stat(netns).st_ino == os.stat("/proc/self/ns/net").st_ino:
            assert time.monotonic() < deadline, "unshare --net did not take effect"
            time.sleep(0.01)
        jailer = _hold(probe, base, "vm-j", "--netns", netns)
        root = _root(base, "vm-j")
        read_report(root / "out.txt")
        pid = int((root / f"{EXEC_NAME}.pid").read_text())
        try:
            assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns).st_ino
        finally:
            _release(root, pid, jailer)
    finally:
        holder.kill()
        holder.wait()


def test_jail_environment_is_empty(probe, base):
    env = dict(os.environ, SPARKLER_SECRET="x")
    jailer = subprocess.Popen([*JAILER, *_args(probe, base, "vm-k"), "--", "--hold"], env=env)
    root = _root(base, "vm-k")
    read_report(root / "out.txt")
    pid = int((root / f"{EXEC_NAME}.pid").read_text())
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            assert f.read() == b""
        assert sorted(os.listdir(f"/proc/{pid}/fd")) == ["0", "1", "2"]
    finally:
        (root / "release").touch()
        wait_gone(pid)
        jailer.wait(timeout=10)


def test_jail_failure_after_mkdir_leaves_no_jail(probe, base):
    result = run_jailer(*_args(probe, base, "vm-l", "--netns", "/nonexistent/netns"))
    assert result.returncode == 1
    assert result.stderr.startswith("Jailer error: Failed to open file /nonexistent/netns")
    assert list(base.iterdir()) == []


def test_jail_bad_cgroup_value_leaves_no_jail_and_no_cgroup(probe, base, parent_cgroup):
    pids_mount = _v1_mount("pids")
    result = run_jailer(*_args(probe, base, "vm-m", "--parent-cgroup", parent_cgroup,
                               "--cgroup", "pids.max=notanumber"))  # fmt: skip
    assert result.returncode == 1
    assert f"Failed to write to {pids_mount}/{parent_cgroup}/vm-m/pids.max" in result.stderr
    assert list(base.iterdir()) == []
    assert not os.path.exists(os.path.join(pids_mount, parent_cgroup))


def test_jail_daemonize_with_new_pid_ns_probe_is_pid_1_detached(probe, base):
    result = run_jailer(*_args(probe, base, "vm-n", "--daemonize", "--new-pid-ns"), "--", "--hold")
    assert result.returncode == 0, result.stderr
    root = _root(base, "vm-n")
    report = read_report(root / "out.txt")
    host_pid = int((root / f"{EXEC_NAME}.pid").read_text())
    try:
        assert report["pid"] == ["1"]
        assert os.readlink(f"/proc/{host_pid}/fd/0") == "/dev/null"
        assert os.getsid(host_pid) != os.getsid(0)
    finally:
        (root / "release").touch()
        wait_gone(host_pid)
