"""Drive and rate-limiter configuration (catalog 1.3 Drive, section 6)."""

from __future__ import annotations

import json

import msgspec
import pytest

from sparkler.config import parse_vmm_config
from sparkler.config.drive import (
    ASYNC_NOT_SUPPORTED,
    ROOT_EXISTS,
    VHOST_USER_NOT_SUPPORTED,
    DriveConfig,
    insert_drive,
    ordered_drives,
)
from sparkler.config.rate_limiter import RateLimiterConfig, build_rate_limiter
from sparkler.errors import ConfigError


def drive(drive_id: str, root: bool = False, **kw) -> DriveConfig:
    return DriveConfig(drive_id=drive_id, is_root_device=root, path_on_host=kw.pop("path", "/tmp/x"), **kw)


def doc(drives: list[dict]) -> bytes:
    return json.dumps({"boot-source": {"kernel_image_path": "/k"}, "drives": drives}).encode()


def test_defaults_match_firecracker():
    d = msgspec.json.decode(b'{"drive_id":"rootfs","is_root_device":true,"path_on_host":"/a"}', type=DriveConfig)
    assert (d.cache_type, d.io_engine, d.is_read_only, d.partuuid, d.rate_limiter, d.socket) == (
        "Unsafe", "Sync", None, None, None, None,
    )
    assert d.read_only is False
    out = json.loads(msgspec.json.encode(d))
    assert set(out) == {
        "drive_id", "partuuid", "is_root_device", "cache_type", "is_read_only",
        "path_on_host", "rate_limiter", "io_engine", "socket",
    }


def test_root_cmdline_words():
    assert drive("r", True).root_cmdline() == ["root=/dev/vda", "rw"]
    assert drive("r", True, is_read_only=True, partuuid="0eaa91a0-01").root_cmdline() == [
        "root=PARTUUID=0eaa91a0-01",
        "ro",
    ]


def test_root_device_goes_first_and_only_one_root():
    drives = ordered_drives([drive("a"), drive("b"), drive("root", True)])
    assert [d.drive_id for d in drives] == ["root", "a", "b"]
    with pytest.raises(ConfigError, match=ROOT_EXISTS):
        insert_drive(drives, drive("other", True))
    # Replacing the root device itself is fine.
    assert [d.drive_id for d in insert_drive(drives, drive("root", True, is_read_only=True))] == ["root", "a", "b"]


def test_same_id_replaces_in_place_and_former_root_moves_back():
    drives = ordered_drives([drive("r", True), drive("a"), drive("b")])
    replaced = insert_drive(drives, drive("a", path="/new"))
    assert [(d.drive_id, d.path_on_host) for d in replaced] == [("r", "/tmp/x"), ("a", "/new"), ("b", "/tmp/x")]
    demoted = insert_drive(drives, drive("r"))
    assert [d.drive_id for d in demoted] == ["a", "b", "r"]
    assert not any(d.is_root_device for d in demoted)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"io_engine": "Async"}, ASYNC_NOT_SUPPORTED),
        ({"socket": "/run/vhost.sock"}, VHOST_USER_NOT_SUPPORTED),
        ({"path": None}, "path_on_host"),
        ({"partuuid": "has space"}, "partuuid"),
    ],
)
def test_refused_drives_say_why(kw, message):
    with pytest.raises(ConfigError) as info:
        drive("d", **kw).validate()
    assert message in str(info.value)


def test_invalid_drive_id():
    with pytest.raises(ConfigError, match="Invalid drive id"):
        drive("a-b").validate()


def test_config_file_drives_are_accepted_and_ordered():
    config = parse_vmm_config(
        doc(
            [
                {"drive_id": "data", "is_root_device": False, "path_on_host": "/d"},
                {"drive_id": "rootfs", "is_root_device": True, "path_on_host": "/r", "cache_type": "Writeback"},
            ]
        )
    )
    assert [d.drive_id for d in config.block_devices] == ["rootfs", "data"]
    assert config.block_devices[0].cache_type == "Writeback"


def test_config_file_two_roots_and_bad_fields_are_errors():
    root = {"is_root_device": True, "path_on_host": "/r"}
    with pytest.raises(ConfigError, match=ROOT_EXISTS):
        parse_vmm_config(doc([{"drive_id": "a", **root}, {"drive_id": "b", **root}]))
    with pytest.raises(ConfigError):
        parse_vmm_config(doc([{"drive_id": "a", **root, "cache_type": "Writethrough"}]))
    with pytest.raises(ConfigError):
        parse_vmm_config(doc([{"drive_id": "a", **root, "unknown": 1}]))
    with pytest.raises(ConfigError, match="Async"):
        parse_vmm_config(doc([{"drive_id": "a", **root, "io_engine": "Async"}]))


def test_rate_limiter_config_builds_limiter():
    rl = msgspec.json.decode(
        b'{"bandwidth":{"size":1000,"refill_time":100},"ops":{"size":10,"one_time_burst":5,"refill_time":1000}}',
        type=RateLimiterConfig,
    )
    limiter = build_rate_limiter(rl)
    assert limiter is not None
    assert limiter.bandwidth.size == 1000 and limiter.bandwidth.refill_time_ms == 100
    assert limiter.ops.one_time_burst == 5
    assert build_rate_limiter(None) is None
    assert build_rate_limiter(RateLimiterConfig()) is None
    zero = msgspec.json.decode(b'{"bandwidth":{"size":0,"refill_time":100}}', type=RateLimiterConfig)
    assert build_rate_limiter(zero) is None
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"bandwidth":{"size":-1,"refill_time":100}}', type=RateLimiterConfig)
