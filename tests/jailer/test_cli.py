"""Jailer flags and Firecracker's errors; every error leaves no jail directory behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sparkler.cli import ArgParseError
from sparkler.jailer import JailerError
from sparkler.jailer.cli import parse_jailer_args, split_jailer_arguments
from tests.jailer.helpers import run_jailer

UID = "12345"  # any unprivileged id; it need not exist in /etc/passwd


@pytest.fixture
def exec_file(tmp_path: Path) -> Path:
    exe = tmp_path / "firecracker"
    exe.write_bytes(b"\x7fELF")
    exe.chmod(0o755)
    return exe


@pytest.fixture
def base(tmp_path: Path) -> Path:
    b = tmp_path / "jail-base"
    b.mkdir()
    return b


def _required(exec_file: Path, base: Path, **overrides: str) -> list[str]:
    flags = {"id": "vm-1", "exec-file": str(exec_file), "uid": UID, "gid": UID, "chroot-base-dir": str(base)}
    flags.update(overrides)
    return [token for name, value in flags.items() for token in (f"--{name}", value)]


def test_split_repeatable_flags_collect_values_and_forward_after_double_dash():
    values, extra = split_jailer_arguments(
        ["--cgroup", "a.b=1", "--cgroup", "c.d=2", "--daemonize", "--", "--level", "Debug"]
    )
    assert values == {"cgroup": ["a.b=1", "c.d=2"], "daemonize": True}
    assert extra == ("--level", "Debug")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--id", "a", "--id", "b"], "provided more than once"),
        (["--bogus", "x"], "Found argument '--bogus'"),
        (["--id=a"], "Found argument '--id=a'"),
        (["--id", "--uid"], "Missing value for argument 'id'"),
        (["--id", "a"], "Argument 'exec-file' required, but not found."),
    ],
)
def test_parse_grammar_errors_raise_argparseerror(argv, message):
    with pytest.raises(ArgParseError, match=message):
        parse_jailer_args(argv)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"id": "bad_id"}, "Invalid instance ID"),
        ({"uid": "-1"}, "Invalid uid: -1"),
        ({"gid": "4294967296"}, "Invalid gid: 4294967296"),
        ({"exec-file": "/nonexistent/fc"}, "Failed to canonicalize path /nonexistent/fc: No such file"),
        ({"exec-file": "/tmp"}, "/tmp is not a file"),
        ({"chroot-base-dir": "/etc/hostname"}, "/etc/hostname is not a directory"),
        ({"cgroup-version": "3"}, "3 is an invalid cgroup version specifier"),
        ({"parent-cgroup": "/abs"}, "Parent cgroup path is invalid"),
        ({"parent-cgroup": "a/../b"}, "Parent cgroup path is invalid"),
        ({"cgroup": "cpuset.cpus"}, "Invalid format for cgroups: cpuset.cpus"),
        ({"cgroup": "cpuset.cpus=0=1"}, "Invalid format for cgroups"),
        ({"cgroup": "cpuset.cpus="}, "Invalid format for cgroups"),
        ({"cgroup": "../cpuset.cpus=0"}, "Invalid format for cgroups"),
        ({"resource-limit": "stack=10"}, "Invalid resource argument: stack"),
        ({"resource-limit": "fsize"}, "Invalid format for resources limits: fsize"),
        ({"resource-limit": "fsize=-3"}, "Invalid limit value for resource: fsize=-3"),
    ],
)
def test_parse_bad_values_raise_jailererror(exec_file, base, override, message):
    with pytest.raises(JailerError, match=message):
        parse_jailer_args(_required(exec_file, base, **override))


def test_parse_defaults_follow_firecracker(exec_file, base):
    args = parse_jailer_args(_required(exec_file, base))
    assert args.exec_name == "firecracker"
    assert args.parent_cgroup == "firecracker"
    assert args.cgroup_version == 1
    assert args.resource_limits == {"no-file": 2048}
    assert args.chroot_dir == os.path.join(str(base), "firecracker", "vm-1", "root")


def test_jailer_argument_error_exits_1_with_message():
    result = run_jailer("--id", "x", "--nope")
    assert result.returncode == 1
    assert "Arguments parsing error: Found argument '--nope'" in result.stderr


def test_jailer_bad_value_exits_1_and_builds_nothing(exec_file, base):
    result = run_jailer(*_required(exec_file, base), "--resource-limit", "no-file=lots")
    assert result.returncode == 1
    assert result.stderr.startswith("Jailer error: Invalid limit value for resource")
    assert list(base.iterdir()) == []


def test_jailer_unavailable_v2_controller_exits_1_and_builds_nothing(exec_file, base):
    with open("/proc/mounts") as f:
        if " cgroup2 " not in f.read():
            pytest.skip("no cgroup2 mount")
    result = run_jailer(*_required(exec_file, base), "--cgroup-version", "2", "--cgroup", "nosuchctl.max=1")
    assert result.returncode == 1
    assert "Controller nosuchctl is unavailable" in result.stderr
    assert list(base.iterdir()) == []


def test_jailer_version_prints_banner():
    result = run_jailer("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("Jailer v")


def test_jailer_help_lists_flags():
    result = run_jailer("--help")
    assert result.returncode == 0
    for flag in ("--exec-file", "--cgroup-version", "--resource-limit", "--new-pid-ns", "--netns"):
        assert flag in result.stdout
