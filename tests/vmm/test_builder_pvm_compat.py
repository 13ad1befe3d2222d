"""The builder applies the PVM compatibility mode only when it resolves on (real KVM, probe kernel;
the host kind is forced with monkeypatch so both host kinds are covered on any machine)."""

from __future__ import annotations

import os

import pytest

from sparkler.arch.x86_64 import layout
from sparkler.config import VmmConfig
from sparkler.config.boot_source import BootSourceConfig
from sparkler.config.machine import MachineConfig
from sparkler.errors import ConfigError
from sparkler.kvm import exits, uapi
from sparkler.kvm import system as kvm_system
from sparkler.vmm.builder import BuildOptions, build_microvm
from sparkler.vmm.vcpu import EXIT_ERROR, Vcpu

BOOT_ARGS = "console=ttyS0 reboot=k"


def _build(probe_kernel, monkeypatch, host: str, mode: str, vcpus: int = 1):
    monkeypatch.setattr(kvm_system, "host_kind", lambda: host)
    config = VmmConfig(
        boot_source=BootSourceConfig(kernel_image_path=str(probe_kernel), boot_args=BOOT_ARGS),
        machine_config=MachineConfig(vcpu_count=vcpus, mem_size_mib=64),
    )
    return build_microvm(config, BuildOptions(serial_out=os.open(os.devnull, os.O_WRONLY), pvm_compat=mode))


def _cmdline(machine) -> str:
    return bytes(machine.memory.read(layout.CMDLINE_START, 2048)).split(b"\0", 1)[0].decode()


COMPAT_WORDS = {"noxsave", "nopv", "no-kvmclock"}


def _plain(words: list[str]) -> bool:
    return not COMPAT_WORDS & set(words) and not any(w.startswith("clearcpuid=") for w in words)


@pytest.mark.parametrize(("host", "mode", "vcpus"), [("hardware", "auto", 1), ("hardware", "auto", 2),
                                                     ("hardware", "off", 2), ("pvm", "off", 2)])
def test_machine_unchanged_unless_the_mode_is_on(kvm, probe_kernel, monkeypatch, host, mode, vcpus) -> None:
    """Hardware-KVM hosts under auto (and any host with off) get Firecracker's machine unchanged."""
    machine = _build(probe_kernel, monkeypatch, host, mode, vcpus)
    try:
        words = _cmdline(machine).split()
        assert words[:2] == BOOT_ARGS.split() and _plain(words), words
        assert all(v._reflect is None for v in machine.vcpus)
    finally:
        machine.stop()


@pytest.mark.parametrize(("host", "mode"), [("pvm", "auto"), ("hardware", "on")])
def test_mode_on_appends_words_and_arms_reflection(kvm, probe_kernel, monkeypatch, host, mode) -> None:
    machine = _build(probe_kernel, monkeypatch, host, mode, 2)
    try:
        words = _cmdline(machine).split()
        assert words[:2] == BOOT_ARGS.split()
        assert {"noxsave", "no-kvmclock", "nopv"} <= set(words)
        clear = [w for w in words if w.startswith("clearcpuid=")]
        for w in clear:  # ERMS (297) and FSRM (580) must stay visible
            assert not {"297", "580"} & set(w.split("=", 1)[1].split(","))
        assert all(v._reflect is not None for v in machine.vcpus)
    finally:
        machine.stop()


def test_one_vcpu_gets_no_nopv(kvm, probe_kernel, monkeypatch) -> None:
    machine = _build(probe_kernel, monkeypatch, "pvm", "auto", 1)
    try:
        assert "nopv" not in _cmdline(machine).split()
    finally:
        machine.stop()


def test_bad_mode_in_build_options_is_a_config_error(kvm, probe_kernel, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="on, off, auto"):
        _build(probe_kernel, monkeypatch, "pvm", "sometimes")


# --- the vCPU's internal-error handler -----------------------------------------------------------
class _Fd:
    def get_regs(self):
        return uapi.kvm_regs(rip=0x1234)


def _vcpu(reflect) -> Vcpu:
    return Vcpu(0, _Fd(), None, None, lambda code, reason: None, reflect)  # type: ignore[arg-type]


EMULATION_FAILURE = exits.InternalError(uapi.KVM_INTERNAL_ERROR_EMULATION, (1, 1), b"\xcc")


def test_vcpu_continues_after_a_reflection() -> None:
    calls = []
    vcpu = _vcpu(lambda: calls.append(1) or type("S", (), {"describe": lambda self: "int3"})())
    assert vcpu._internal_error(EMULATION_FAILURE) is None
    assert calls == [1] and vcpu.stats.reflected == 1 and vcpu.stats.failures == 0


def test_vcpu_stops_naming_why_a_reflection_was_refused() -> None:
    def refuse():
        raise RuntimeError("CPL 3 is not 0")

    vcpu = _vcpu(refuse)
    assert vcpu._internal_error(EMULATION_FAILURE) == EXIT_ERROR
    assert "instruction bytes: cc (not reflected: CPL 3 is not 0)" in vcpu._last_reason
    assert vcpu.stats.failures == 1


def test_vcpu_without_the_mode_stops_and_other_suberrors_are_never_reflected() -> None:
    vcpu = _vcpu(None)
    assert vcpu._internal_error(EMULATION_FAILURE) == EXIT_ERROR
    assert "rip=0x1234" in vcpu._last_reason and "not reflected" not in vcpu._last_reason
    calls = []
    armed = _vcpu(lambda: calls.append(1))
    assert armed._internal_error(exits.InternalError(3, (), b"")) == EXIT_ERROR
    assert calls == []
