"""MmdsConfig and the config file's mmds-config section."""

import pytest

from sparkler.config import parse_vmm_config
from sparkler.config.mmds import MmdsConfig, parse_ipv4
from sparkler.errors import ConfigError


def test_vmm_config_mmds_config_needs_existing_interfaces():
    doc = b'{"boot-source": {"kernel_image_path": "k"}, "mmds-config": {"network_interfaces": ["eth0"]}}'
    with pytest.raises(ConfigError, match="does not correspond to any existing network interface"):
        parse_vmm_config(doc)


def test_vmm_config_mmds_config_empty_list_is_refused():
    doc = b'{"boot-source": {"kernel_image_path": "k"}, "mmds-config": {"network_interfaces": [], "version": "V2"}}'
    with pytest.raises(ConfigError, match="is empty"):
        parse_vmm_config(doc)


def test_vmm_config_mmds_config_null_is_none():
    doc = b'{"boot-source": {"kernel_image_path": "k"}, "mmds-config": null}'
    assert parse_vmm_config(doc).mmds_config is None


def test_mmds_config_unknown_field_is_refused():
    doc = b'{"boot-source": {"kernel_image_path": "k"}, "mmds-config": {"network_interfaces": ["a"], "x": 1}}'
    with pytest.raises(ConfigError, match="unknown field"):
        parse_vmm_config(doc)


def test_mmds_config_defaults_and_normalized_address():
    config = MmdsConfig(network_interfaces=["eth0"])
    assert (config.version, config.imds_compat, config.ipv4) == ("V1", False, "169.254.169.254")
    assert config.normalized().ipv4_address == "169.254.169.254"


@pytest.mark.parametrize("good", ["169.254.1.0", "169.254.254.255", "169.254.169.254"])
def test_mmds_config_ipv4_link_local_accepted(good):
    assert str(parse_ipv4(good)) == good


@pytest.mark.parametrize("bad", ["169.254.0.1", "169.254.255.1", "169.253.1.1", "10.0.0.1", "x", "169.254.1.256", ""])
def test_mmds_config_ipv4_other_refused(bad):
    with pytest.raises(ConfigError, match="not link local"):
        parse_ipv4(bad)
