"""The config file's ``balloon`` and ``entropy`` sections."""

from __future__ import annotations

import json

import pytest

from sparkler.config import parse_vmm_config
from sparkler.errors import ConfigError

BOOT = {"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}


def parse(**sections):
    return parse_vmm_config(json.dumps({**BOOT, **sections}).encode())


def test_config_balloon_section():
    config = parse(balloon={"amount_mib": 64, "deflate_on_oom": True, "free_page_reporting": True})
    assert config.balloon.target_pages == 64 * 256
    assert config.balloon.stats_polling_interval_s == 0 and not config.balloon.stats_enabled
    assert config.balloon.free_page_reporting


@pytest.mark.parametrize(
    "balloon, message",
    [
        ({"amount_mib": 129, "deflate_on_oom": False}, "Amount of pages requested is too large."),
        ({"amount_mib": 1}, "deflate_on_oom"),
        ({"amount_mib": 1, "deflate_on_oom": False, "stats_polling_interval_s": 65536}, "65535"),
        ({"amount_mib": -1, "deflate_on_oom": False}, ">= 0"),
        ({"amount_mib": 1, "deflate_on_oom": False, "free_page_hinting": True}, "hinting"),
        ({"amount_mib": 1, "deflate_on_oom": False, "extra": 1}, "extra"),
    ],
)
def test_config_balloon_errors(balloon, message):
    with pytest.raises(ConfigError, match=message):
        parse(balloon=balloon)


def test_config_entropy_section():
    assert parse(entropy={}).entropy.rate_limiter is None
    config = parse(entropy={"rate_limiter": {"bandwidth": {"size": 100, "refill_time": 10}}})
    assert config.entropy.rate_limiter.bandwidth.size == 100
    with pytest.raises(ConfigError, match="foo"):
        parse(entropy={"foo": 1})
