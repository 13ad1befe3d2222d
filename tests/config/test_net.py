"""Network interface bodies: MAC syntax, uniqueness, MTU bounds, the PATCH form, the config file."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparkler.config import parse_vmm_config
from sparkler.config.net import (
    NetworkInterfaceConfig,
    NetworkInterfaceUpdate,
    format_mac,
    insert_interface,
    parse_mac,
)
from sparkler.errors import ConfigError


def iface(i="eth0", tap="tap0", mac=None, **kw):
    return NetworkInterfaceConfig(iface_id=i, host_dev_name=tap, guest_mac=mac, **kw)


@given(st.binary(min_size=6, max_size=6))
def test_mac_round_trip(mac):
    assert parse_mac(format_mac(mac)) == mac
    assert parse_mac(format_mac(mac).upper()) == mac


@pytest.mark.parametrize("bad", ["", "06:00:00:00:00", "06:00:00:00:00:0g", "6:0:0:0:0:1", "06-00-00-00-00-01", "06:00:00:00:00:00:00"])
def test_bad_mac_is_refused(bad):
    with pytest.raises(ConfigError, match="Invalid MAC address"):
        parse_mac(bad)


def test_duplicate_mac_is_refused_with_firecrackers_message():
    first = [iface(mac="06:00:AC:10:00:02")]
    with pytest.raises(ConfigError) as info:
        insert_interface(first, iface("eth1", "tap1", mac="06:00:AC:10:00:02"))
    assert str(info.value) == "The MAC address is already in use: 06:00:ac:10:00:02"
    # the same id again replaces, in place
    replaced = insert_interface(first, iface(tap="tap9", mac="06:00:AC:10:00:02"))
    assert [(n.host_dev_name, n.guest_mac) for n in replaced] == [("tap9", "06:00:ac:10:00:02")]


def test_same_tap_twice_is_refused():
    with pytest.raises(ConfigError, match="already used"):
        insert_interface([iface()], iface("eth1"))


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b"])
def test_bad_tap_names(name):
    with pytest.raises(ConfigError, match="Invalid tap name"):
        iface(tap=name).validate()


@pytest.mark.parametrize("mtu, ok", [(67, False), (68, True), (65535, True), (65536, False)])
def test_mtu_bounds(mtu, ok):
    body = json.dumps({"iface_id": "e", "host_dev_name": "t", "mtu": mtu}).encode()
    if ok:
        assert msgspec.json.decode(body, type=NetworkInterfaceConfig).mtu == mtu
    else:
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(body, type=NetworkInterfaceConfig)


def test_unknown_fields_refused():
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"iface_id":"e","host_dev_name":"t","allow_mmds_requests":true}', type=NetworkInterfaceConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"iface_id":"e","host_dev_name":"t"}', type=NetworkInterfaceUpdate)


def test_config_file_network_interfaces(tmp_path):
    doc = {
        "boot-source": {"kernel_image_path": "/k"},
        "network-interfaces": [
            {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:00:00:00:01",
             "rx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}},
            {"iface_id": "eth1", "host_dev_name": "tap1"},
        ],
    }
    config = parse_vmm_config(json.dumps(doc).encode())
    assert [n.iface_id for n in config.net_devices] == ["eth0", "eth1"]
    assert config.net_devices[0].mac_bytes == bytes.fromhex("060000000001")
    doc["network-interfaces"][1]["guest_mac"] = "06:00:00:00:00:01"
    with pytest.raises(ConfigError, match="already in use"):
        parse_vmm_config(json.dumps(doc).encode())
