"""vsock configuration: the model, the config-file section, PUT /vsock and GET /vm/config."""

from __future__ import annotations

import json
import os
import socket

import msgspec
import pytest

from sparkler.api.bodies import vm_config_document
from sparkler.api.faults import ApiFault
from sparkler.api.router import deprecation_of, route
from sparkler.config import parse_vmm_config
from sparkler.config.vsock import VsockConfig
from sparkler.errors import ConfigError
from sparkler.testing.fake_machine import FakeBuilder
from sparkler.vmm import actions as A
from sparkler.vmm.controller import Controller


def put(controller, doc):
    action = route("PUT", "/vsock", json.dumps(doc).encode())
    assert isinstance(action, A.PutVsock), action
    return controller.handle(action)


@pytest.fixture
def controller():
    return Controller(FakeBuilder(), build_options="opts", instance_id="vm1")


def test_vsock_model_requires_cid_and_path():
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"guest_cid": 3}', type=VsockConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"guest_cid": 3, "uds_path": "/v", "extra": 1}', type=VsockConfig)


@pytest.mark.parametrize("cid", [0, 1, 2, 1 << 32])
def test_vsock_reserved_or_oversized_cid_is_refused(cid):
    with pytest.raises(ConfigError, match="guest_cid"):
        VsockConfig(guest_cid=cid, uds_path="/v").validate()


def test_vsock_path_longer_than_sun_path_is_refused():
    with pytest.raises(ConfigError, match="too long"):
        VsockConfig(guest_cid=3, uds_path="/" + "x" * 120).validate()


def test_config_file_vsock_section_is_accepted():
    doc = {"boot-source": {"kernel_image_path": "/k"}, "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"}}
    config = parse_vmm_config(json.dumps(doc).encode())
    assert config.vsock == VsockConfig(guest_cid=3, uds_path="/tmp/v.sock")


def test_config_file_vsock_bad_cid_is_an_error():
    doc = {"boot-source": {"kernel_image_path": "/k"}, "vsock": {"guest_cid": 2, "uds_path": "/tmp/v.sock"}}
    with pytest.raises(ConfigError):
        parse_vmm_config(json.dumps(doc).encode())


def test_router_put_vsock_deprecated_vsock_id_is_accepted_and_flagged():
    action = route("PUT", "/vsock", b'{"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "/v"}')
    assert isinstance(action, A.PutVsock)
    assert action.config == VsockConfig(guest_cid=3, uds_path="/v")
    assert deprecation_of(action) is not None
    plain = route("PUT", "/vsock", b'{"guest_cid": 3, "uds_path": "/v"}')
    assert deprecation_of(plain) is None


def test_router_put_vsock_missing_field_is_a_deserialize_fault():
    result = route("PUT", "/vsock", b'{"guest_cid": 3}')
    assert isinstance(result, ApiFault) and "missing field `uds_path`" in result.message


def test_put_vsock_then_vm_config_lists_it(controller, tmp_path):
    path = str(tmp_path / "v.sock")
    assert put(controller, {"guest_cid": 7, "uds_path": path}) == A.Empty()
    assert not os.path.exists(path)  # checked by binding; the builder binds it at boot
    doc = vm_config_document(controller.config)
    assert doc["vsock"] == {"guest_cid": 7, "uds_path": path}


def test_put_vsock_existing_path_fails_and_changes_nothing(controller, tmp_path):
    path = tmp_path / "taken.sock"
    path.write_text("")
    before = msgspec.json.encode(controller.config)
    result = put(controller, {"guest_cid": 3, "uds_path": str(path)})
    assert isinstance(result, A.VsockConfigError)
    assert str(result).startswith("Vsock config error: Cannot create backend for vsock device")
    assert "Address already in use" in str(result)
    assert msgspec.json.encode(controller.config) == before


def test_put_vsock_unbindable_directory_fails(controller, tmp_path):
    result = put(controller, {"guest_cid": 3, "uds_path": str(tmp_path / "missing" / "v.sock")})
    assert isinstance(result, A.VsockConfigError)


def test_put_vsock_bad_cid_fails(controller, tmp_path):
    result = put(controller, {"guest_cid": 1, "uds_path": str(tmp_path / "v.sock")})
    assert isinstance(result, A.VsockConfigError) and "guest_cid" in str(result)


def test_put_vsock_again_replaces_it(controller, tmp_path):
    assert put(controller, {"guest_cid": 3, "uds_path": str(tmp_path / "a.sock")}) == A.Empty()
    assert put(controller, {"guest_cid": 4, "uds_path": str(tmp_path / "b.sock")}) == A.Empty()
    assert controller.config.vsock == VsockConfig(guest_cid=4, uds_path=str(tmp_path / "b.sock"))


def test_put_vsock_after_boot_is_refused(controller, tmp_path):
    kernel = tmp_path / "k"
    kernel.write_bytes(b"\x7fELF")
    controller.handle(route("PUT", "/boot-source", json.dumps({"kernel_image_path": str(kernel)}).encode()))
    assert controller.handle(route("PUT", "/actions", b'{"action_type": "InstanceStart"}')) == A.Empty()
    result = put(controller, {"guest_cid": 3, "uds_path": str(tmp_path / "v.sock")})
    assert isinstance(result, A.OperationNotSupportedPostBoot)


def test_builder_refuses_a_taken_uds_path(tmp_path):
    from sparkler.vmm.builder import _vsock_specs

    path = tmp_path / "held.sock"
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    holder.bind(str(path))
    doc = {"boot-source": {"kernel_image_path": "/k"}, "vsock": {"guest_cid": 3, "uds_path": str(path)}}
    (spec,) = _vsock_specs(parse_vmm_config(json.dumps(doc).encode()))
    with pytest.raises(ConfigError, match="Cannot create backend for vsock device"):
        spec.create()
    holder.close()


def test_vsock_attaches_after_block_and_before_entropy(tmp_path):
    from sparkler.vmm.builder import virtio_specs

    doc = {
        "boot-source": {"kernel_image_path": "/k"},
        "drives": [{"drive_id": "rootfs", "is_root_device": True, "path_on_host": "/d"}],
        "vsock": {"guest_cid": 3, "uds_path": str(tmp_path / "v.sock")},
        "entropy": {},
    }
    keys = [spec.key for spec in virtio_specs(parse_vmm_config(json.dumps(doc).encode()), None)]
    assert keys == ["block_rootfs", "vsock", "entropy"]  # Firecracker's attach order (catalog 4.5)
