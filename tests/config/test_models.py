"""Config models: defaults, strictness, PATCH semantics, boot_args rules."""

import msgspec
import pytest

from sparkler.config import VmmConfig, parse_vmm_config
from sparkler.config.boot_source import BootSourceConfig
from sparkler.config.machine import MachineConfig, MachineConfigUpdate
from sparkler.errors import ConfigError


def test_machine_config_defaults():
    assert MachineConfig() == MachineConfig(vcpu_count=1, mem_size_mib=128, smt=False, huge_pages="None")


def test_vmm_config_unknown_top_level_key_rejected():
    with pytest.raises(ConfigError, match="bogus"):
        parse_vmm_config(b'{"boot-source": {"kernel_image_path": "k"}, "bogus": 1}')


def test_machine_config_unknown_field_and_type_error():
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"vcpu_count": 1, "x": 2}', type=MachineConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"vcpu_count": "1"}', type=MachineConfig)


def test_machine_config_update_error_changes_nothing():
    current = MachineConfig(vcpu_count=2)
    with pytest.raises(ConfigError, match="vCPUs"):
        MachineConfigUpdate(vcpu_count=0).apply(current)
    assert current.vcpu_count == 2
    assert MachineConfigUpdate(mem_size_mib=256).apply(current) == MachineConfig(
        vcpu_count=2, mem_size_mib=256
    )


def test_boot_args_non_printable_and_too_long():
    with pytest.raises(ConfigError, match="printable"):
        BootSourceConfig("k", boot_args="a\x01b").validate()
    with pytest.raises(ConfigError):
        BootSourceConfig("k", boot_args="a" * 2048).validate()
    BootSourceConfig("k", boot_args="a" * 2047).validate()


def test_vmm_config_machine_default():
    config = parse_vmm_config(b'{"boot-source": {"kernel_image_path": "k"}}')
    assert isinstance(config, VmmConfig) and config.machine == MachineConfig()


@pytest.mark.parametrize("missing", ["vcpu_count", "mem_size_mib"])
def test_config_file_machine_config_needs_both_sizes(missing):
    section = {"vcpu_count": 2, "mem_size_mib": 256}
    del section[missing]
    doc = {"boot-source": {"kernel_image_path": "/k"}, "machine-config": section}
    with pytest.raises(ConfigError, match=f"missing field `{missing}`"):
        parse_vmm_config(msgspec.json.encode(doc))
    section[missing] = 2 if missing == "vcpu_count" else 256
    assert parse_vmm_config(msgspec.json.encode(doc)).machine.vcpu_count == 2
