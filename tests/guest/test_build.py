"""Unit tests for the guest artifact builder: fragment parsing, dropped-option check, cache keys,
atomic publish, the newc cpio writer, and the CLI; the real build is ``slow`` (SPARKLER_SLOW=1)."""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
from pathlib import Path

import pytest

from sparkler.guest import build, cli, kernel, rootfs

FRAGMENT_REQUIRED = (
    "CONFIG_64BIT",
    "CONFIG_PRINTK",
    "CONFIG_TTY",
    "CONFIG_SERIAL_8250",
    "CONFIG_SERIAL_8250_CONSOLE",
    "CONFIG_VIRTIO",
    "CONFIG_VIRTIO_MMIO",
    "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
    "CONFIG_VIRTIO_BLK",
    "CONFIG_VIRTIO_NET",
    "CONFIG_NET",
    "CONFIG_INET",
    "CONFIG_NETDEVICES",
    "CONFIG_VSOCKETS",
    "CONFIG_VIRTIO_VSOCKETS",
    "CONFIG_HW_RANDOM_VIRTIO",
    "CONFIG_VIRTIO_BALLOON",
    "CONFIG_EXT4_FS",
    "CONFIG_BLK_DEV_INITRD",
    "CONFIG_RD_GZIP",
    "CONFIG_DEVTMPFS",
    "CONFIG_DEVTMPFS_MOUNT",
    "CONFIG_PROC_FS",
    "CONFIG_SYSFS",
    "CONFIG_SERIO_I8042",
    "CONFIG_KEYBOARD_ATKBD",
    "CONFIG_INPUT",
    "CONFIG_KVM_GUEST",
    "CONFIG_HYPERVISOR_GUEST",
    "CONFIG_PARAVIRT",
    "CONFIG_SMP",
    "CONFIG_X86_MPPARSE",
    "CONFIG_BINFMT_ELF",
    "CONFIG_BINFMT_SCRIPT",
    "CONFIG_UNIX",
)


def test_parse_config_set_unset_and_comments() -> None:
    text = 'CONFIG_A=y\n# CONFIG_B is not set\n# a comment\n\nCONFIG_C="str"\nCONFIG_D=0x10\n'
    assert kernel.parse_config(text) == {
        "CONFIG_A": "y",
        "CONFIG_B": "n",
        "CONFIG_C": '"str"',
        "CONFIG_D": "0x10",
    }


def test_parse_config_garbage_line_raises() -> None:
    with pytest.raises(ValueError, match="not a Kconfig line"):
        kernel.parse_config("CONFIG_A=y\nNOT_CONFIG=1\n")


def test_fragment_enables_every_required_option() -> None:
    fragment = kernel.parse_config(kernel.fragment_text())
    missing = [name for name in FRAGMENT_REQUIRED if fragment.get(name) != "y"]
    assert missing == []
    assert fragment["CONFIG_PCI"] == "n"
    assert fragment["CONFIG_ACPI"] == "n"


def test_dropped_options_all_survived_empty() -> None:
    fragment = {"CONFIG_A": "y", "CONFIG_B": "n"}
    final = {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_OTHER": "y"}
    assert kernel.dropped_options(fragment, final) == []


def test_dropped_options_absent_counts_as_n() -> None:
    fragment = kernel.parse_config("CONFIG_VIRTIO_VSOCKETS=y\n# CONFIG_PCI is not set\n")
    final = kernel.parse_config("CONFIG_VSOCKETS=y\n")  # PCI absent == n: fine
    dropped = kernel.dropped_options(fragment, final)
    assert [(d.name, d.wanted, d.got) for d in dropped] == [("CONFIG_VIRTIO_VSOCKETS", "y", "n")]
    assert "CONFIG_VIRTIO_VSOCKETS: fragment wants y, final .config has n" in str(dropped[0])


def test_dropped_options_module_instead_of_builtin_reported() -> None:
    dropped = kernel.dropped_options({"CONFIG_EXT4_FS": "y"}, {"CONFIG_EXT4_FS": "m"})
    assert [d.got for d in dropped] == ["m"]


def test_cache_key_changes_with_fragment_and_version() -> None:
    base = build.cache_key("kernel", "linux-source-6.1=6.1.1", "CONFIG_A=y\n")
    assert base == build.cache_key("kernel", "linux-source-6.1=6.1.1", "CONFIG_A=y\n")
    assert base != build.cache_key("kernel", "linux-source-6.1=6.1.1", "CONFIG_A=y\nCONFIG_B=y\n")
    assert base != build.cache_key("kernel", "linux-source-6.1=6.1.2", "CONFIG_A=y\n")
    # length prefixes: moving a boundary between parts changes the key
    assert build.cache_key("ab", "c") != build.cache_key("a", "bc")


def test_kernel_key_follows_fragment_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "package_version", lambda _p: "6.1.99-1")
    first = build.kernel_key()
    monkeypatch.setattr(kernel, "fragment_text", lambda profile="microvm": "CONFIG_CHANGED=y\n")
    assert build.kernel_key() != first


def test_default_cache_root_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPARKLER_CACHE", str(tmp_path / "c"))
    assert build.default_cache_root() == tmp_path / "c"
    monkeypatch.delenv("SPARKLER_CACHE")
    assert build.default_cache_root() == Path.home() / ".cache" / "sparkler" / "guest"


def test_artifact_paths_under_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(build, "package_version", lambda _p: "1.0")
    paths = build.artifact_paths(tmp_path)
    assert paths.kernel.name == "vmlinux" and paths.kernel.parent.parent == tmp_path
    assert paths.initramfs.parent.name.startswith("initramfs-")
    assert paths.rootfs.parent.name.startswith("rootfs-")
    assert set(json.loads(paths.as_json())) == {"kernel", "initramfs", "rootfs"}


def test_build_one_failure_publishes_nothing(tmp_path: Path) -> None:
    final = tmp_path / "kernel-abc" / "vmlinux"

    def produce(staging: Path, _work: Path) -> None:
        (staging / "vmlinux").write_bytes(b"half")
        raise build.GuestBuildError("boom")

    with pytest.raises(build.GuestBuildError):
        build._build_one(tmp_path, final, lambda _m: None, produce)
    assert not final.parent.exists()
    assert list(tmp_path.iterdir()) == []  # staging and work removed


def test_build_one_publishes_then_reuses_cache(tmp_path: Path) -> None:
    final = tmp_path / "rootfs-abc" / "rootfs.ext4"
    calls: list[str] = []

    def produce(staging: Path, _work: Path) -> None:
        calls.append("built")
        (staging / "rootfs.ext4").write_bytes(b"image")

    messages: list[str] = []
    build._build_one(tmp_path, final, messages.append, produce)
    build._build_one(tmp_path, final, messages.append, produce)
    assert final.read_bytes() == b"image"
    assert stat.S_IMODE(final.parent.stat().st_mode) == 0o755
    assert calls == ["built"]
    assert any(m.startswith("cached:") for m in messages)
    assert [p.name for p in tmp_path.iterdir()] == ["rootfs-abc"]


def test_clean_stale_removes_old_tmp_only(tmp_path: Path) -> None:
    old = tmp_path / ".tmp-kernel-x"
    old.mkdir()
    os.utime(old, (0, 0))
    fresh = tmp_path / ".tmp-kernel-y"
    fresh.mkdir()
    keep = tmp_path / "kernel-z"
    keep.mkdir()
    os.utime(keep, (0, 0))
    build.clean_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-kernel-y", "kernel-z"]


def test_ensure_packages_non_root_names_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "package_version", lambda p: None if p == "flex" else "1")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(build.GuestBuildError, match="missing Debian packages: flex"):
        build.ensure_packages(["bc", "flex"], lambda _m: None)


def test_cpio_writer_roundtrip_and_alignment() -> None:
    buf = io.BytesIO()
    cpio = rootfs.CpioWriter(buf)
    cpio.directory("bin")
    cpio.file("bin/busybox", b"\x7fELF12345", 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.char_device("dev/console", 5, 1)
    cpio.close()
    data = buf.getvalue()
    assert len(data) % 4 == 0
    members = rootfs.parse_newc(data)
    assert [(n, stat.S_IFMT(m)) for n, m, _ in members] == [
        ("bin", stat.S_IFDIR),
        ("bin/busybox", stat.S_IFREG),
        ("bin/sh", stat.S_IFLNK),
        ("dev/console", stat.S_IFCHR),
    ]
    assert members[1][2] == b"\x7fELF12345" and stat.S_IMODE(members[1][1]) == 0o755
    assert members[2][2] == b"busybox"
    assert data.endswith(b"TRAILER!!!\0" + b"\0" * (-(110 + 11) % 4))


def test_cpio_writer_header_fields() -> None:
    buf = io.BytesIO()
    cpio = rootfs.CpioWriter(buf)
    cpio.char_device("dev/console", 5, 1)
    header = buf.getvalue()[:110]
    fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
    assert header[:6] == b"070701"
    assert fields[9:11] == [5, 1]  # rdevmajor, rdevminor
    assert fields[11] == len("dev/console") + 1  # namesize counts the NUL


def test_cpio_writer_closed_rejects_members() -> None:
    cpio = rootfs.CpioWriter(io.BytesIO())
    cpio.close()
    with pytest.raises(ValueError):
        cpio.directory("late")


def test_init_script_prints_marker_and_resets() -> None:
    script = rootfs.init_script()
    assert script.startswith("#!/bin/sh\n")
    assert "SPARKLER-GUEST-UP" in script
    assert "devmem 0xc0000000 8 123" in script
    assert "reboot -f" in script


@pytest.mark.skipif(not rootfs.BUSYBOX_PATH.exists(), reason="busybox-static not installed")
def test_build_initramfs_contains_init_busybox_console(tmp_path: Path) -> None:
    out = rootfs.build_initramfs(tmp_path / "i.cpio.gz", lambda _m: None)
    members = {n: (m, d) for n, m, d in rootfs.parse_newc(gzip.decompress(out.read_bytes()))}
    assert stat.S_ISREG(members["init"][0]) and members["init"][1].startswith(b"#!/bin/sh")
    assert members["bin/busybox"][1] == rootfs.BUSYBOX_PATH.read_bytes()
    assert stat.S_ISCHR(members["dev/console"][0])
    assert members["bin/sh"][1] == b"../bin/busybox"
    assert members["sbin/reboot"][1] == b"../bin/busybox"


def test_cli_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "build" in capsys.readouterr().out


def test_cli_unknown_command_is_usage_error() -> None:
    assert cli.main(["frobnicate"]) == 2


def test_cli_path_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["path", "--cache", str(tmp_path)]) == 0
    paths = json.loads(capsys.readouterr().out)
    assert Path(paths["kernel"]).is_relative_to(tmp_path)
    assert Path(paths["rootfs"]).name == "rootfs.ext4"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SPARKLER_SLOW") != "1", reason="slow: set SPARKLER_SLOW=1")
def test_real_build_produces_all_artifacts() -> None:
    """The full build (about 5 minutes on 2 cores; reuses the default cache)."""
    paths = build.build(build.BuildRequest())
    with paths.kernel.open("rb") as f:
        assert f.read(4) == b"\x7fELF"
    assert gzip.decompress(paths.initramfs.read_bytes())[:6] == b"070701"
    assert paths.rootfs.stat().st_size == rootfs.ROOTFS_SIZE_MIB * 2**20
    final = kernel.parse_config((paths.kernel.parent / "config").read_text())
    assert kernel.dropped_options(kernel.parse_config(kernel.fragment_text()), final) == []


# --- kernel profiles ---------------------------------------------------------------------------------
def test_pvm_test_profile_has_its_own_fragment_key_and_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(build, "package_version", lambda _p: "6.1.99-1")
    assert kernel.fragment_text("pvm-test") != kernel.fragment_text()
    assert build.kernel_key("pvm-test") != build.kernel_key()
    default = build.artifact_paths(tmp_path)
    trimmed = build.artifact_paths(tmp_path, "pvm-test")
    assert default.kernel.parent.name == f"kernel-{build.kernel_key()}"
    assert trimmed.kernel.parent.name == f"kernel-pvm-test-{build.kernel_key('pvm-test')}"
    assert (trimmed.initramfs, trimmed.rootfs) == (default.initramfs, default.rootfs)


def test_pvm_test_fragment_keeps_the_tested_drivers_and_drops_slow_parts() -> None:
    frag = kernel.parse_config(kernel.fragment_text("pvm-test"))
    for option in ("SMP", "SERIAL_8250_CONSOLE", "VIRTIO_MMIO_CMDLINE_DEVICES", "VIRTIO_BLK", "EXT4_FS",
                   "VIRTIO_NET", "IP_PNP", "VIRTIO_VSOCKETS", "HW_RANDOM_VIRTIO", "VIRTIO_BALLOON", "DYNAMIC_DEBUG"):
        assert frag[f"CONFIG_{option}"] == "y", option
    for option in ("BLK_DEV_INITRD", "LEGACY_PTYS", "VT", "INPUT", "ACPI", "PCI"):
        assert frag[f"CONFIG_{option}"] == "n", option


def test_unknown_profile_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown kernel profile"):
        kernel.fragment_text("huge")
    with pytest.raises(build.GuestBuildError, match="unknown kernel profile"):
        build.build(build.BuildRequest(profile="huge", cache_root=tmp_path))


def test_cli_path_with_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["path", "--cache", str(tmp_path), "--profile", "pvm-test"]) == 0
    assert "/kernel-pvm-test-" in json.loads(capsys.readouterr().out)["kernel"]
    assert cli.main(["path", "--profile", "huge"]) == 2
