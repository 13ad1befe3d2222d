"""The real VMM inside the jail: Sparkler's console script as --exec-file, Python bound read-only.

The jailer sees that the exec file is a script (``#!``) and binds the interpreter, the venv, the
``sparkler`` package and ``/usr`` read-only into the jail (``chroot.python_runtime_paths``). Then the
VMM, started with an empty environment as an unprivileged uid in a new PID namespace, must serve its
API on ``<root>/run/firecracker.socket`` and boot the probe guest from a kernel copied into the jail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import sparkler
from sparkler.sdk.client import Client
from tests.jailer.helpers import JAILER, require_root, wait_gone

pytestmark = pytest.mark.usefixtures("kvm")

UID = 12345
GID = 12345
TIMEOUT_S = 60
EXIT_SIGHUP = 156


def vmm_script(directory: Path) -> Path:
    """A ``firecracker`` exec file running *this tree's* VMM on the current interpreter.

    The venv's console script would import the package its editable install points at (the main
    checkout, not bound into the jail when the tests run from another worktree); this script puts
    the directory of the imported ``sparkler`` package (which the jailer binds) on ``sys.path``.
    """
    repo = str(Path(sparkler.__file__).resolve().parent.parent)
    script = directory / "firecracker"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {repo!r})\n"
        "from sparkler.cli import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    return script


def _wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _accepts(path: Path) -> bool:
    """The socket file exists *and* listens (bind creates the file before listen)."""
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


@pytest.fixture
def short_base():
    """A short --chroot-base-dir: the socket path must fit in sun_path (108 bytes)."""
    base = Path(tempfile.mkdtemp(prefix="sj-", dir="/tmp"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("filtered", [False, True], ids=["plain", "seccomp"])
def test_jailed_vmm_serves_api_and_boots_probe(tmp_path, short_base, probe_kernel, filtered):
    require_root()
    exec_file = vmm_script(tmp_path)  # filters every thread by default; a forwarded --no-seccomp does not
    base = short_base
    root = base / "firecracker" / "vm-jailed" / "root"
    root.mkdir(parents=True)
    shutil.copyfile(probe_kernel, root / "probe.elf")  # resources are the caller's job (catalog 3.2)
    os.chown(root / "probe.elf", UID, GID)
    log = open(tmp_path / "vmm.out", "wb")  # noqa: SIM115 - closed below
    started = time.monotonic()
    jailer = subprocess.Popen(
        [*JAILER, "--id", "vm-jailed", "--exec-file", str(exec_file), "--uid", str(UID),
         "--gid", str(GID), "--chroot-base-dir", str(base), "--new-pid-ns",
         *(() if filtered else ("--", "--no-seccomp"))],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    pid = 0
    try:
        sock = root / "run" / "firecracker.socket"
        _wait_for(lambda: _accepts(sock), "the API socket in the jail")
        ready_s = time.monotonic() - started
        pid = int((root / "firecracker.pid").read_text())
        with Client(str(sock)) as api:
            api.request(
                "PUT",
                "/boot-source",
                {
                    "kernel_image_path": "/probe.elf",
                    "boot_args": "console=ttyS0 reboot=k panic=1 probe.hang=1",
                },
            )
            api.request("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
            api.request("PUT", "/actions", {"action_type": "InstanceStart"})
            _wait_for(lambda: "INFO hang" in (tmp_path / "vmm.out").read_text(errors="replace"), "the probe")
        status = Path(f"/proc/{pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        gid_line = next(line for line in status.splitlines() if line.startswith("Gid:"))
        assert uid_line.split()[1:] == [str(UID)] * 4
        assert gid_line.split()[1:] == [str(GID)] * 4
        assert Path(f"/proc/{pid}/environ").read_bytes() == b""
        assert os.readlink(f"/proc/{pid}/root") == "/"  # its root is the jail, as seen from inside
        text = (tmp_path / "vmm.out").read_text(errors="replace")
        assert "[vm-jailed:main] Running Firecracker" in text
        assert "FAIL" not in text
        modes = {
            (Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()): next(
                int(line.split()[1])
                for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines()
                if line.startswith("Seccomp:")
            )
            for tid in os.listdir(f"/proc/{pid}/task")
        }
        assert {"fc_api", "fc_vcpu 0"} <= set(modes)
        assert set(modes.values()) == ({2} if filtered else {0}), modes
        print(f"jailer start to API socket ready: {ready_s * 1000:.0f} ms")
        os.kill(pid, signal.SIGHUP)
        wait_gone(pid, TIMEOUT_S)
    finally:
        if pid and os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid)
        jailer.wait(timeout=TIMEOUT_S)
        log.close()
    assert jailer.returncode == 0
