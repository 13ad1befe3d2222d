"""The kernel command line: 2048 bytes including the NUL, printable ASCII, space separated."""

from __future__ import annotations

import pytest

from sparkler.arch.x86_64 import layout
from sparkler.arch.x86_64.cmdline import Cmdline, virtio_mmio_device
from sparkler.errors import ConfigError


def test_cmdline_default_capacity_is_2048_including_nul():
    assert Cmdline().capacity == layout.CMDLINE_MAX_SIZE == 2048


def test_cmdline_2047_chars_fit():
    line = Cmdline()

    line.insert_str("a" * 2047)

    assert line.as_bytes() == b"a" * 2047 + b"\0"
    assert len(line.as_bytes()) == 2048


def test_cmdline_2048_chars_rejected():
    line = Cmdline()

    with pytest.raises(ConfigError, match="2049 bytes"):
        line.insert_str("a" * 2048)

    assert line.as_str() == ""


def test_cmdline_append_overflowing_capacity_rejected_and_line_unchanged():
    line = Cmdline()
    line.insert_str("a" * 2040)

    with pytest.raises(ConfigError):
        line.insert_str("bbbbbbb")  # 2040 + space + 7 + NUL = 2049

    assert line.as_str() == "a" * 2040


def test_cmdline_append_exactly_filling_capacity_accepted():
    line = Cmdline()
    line.insert_str("a" * 2040)

    line.insert_str("bbbbbb")  # 2040 + space + 6 + NUL = 2048

    assert len(line.as_bytes()) == 2048


def test_cmdline_small_capacity_counts_nul():
    line = Cmdline(4)
    line.insert_str("abc")

    with pytest.raises(ConfigError):
        Cmdline(4).insert_str("abcd")
    assert line.as_bytes() == b"abc\0"


def test_cmdline_zero_capacity_rejected():
    with pytest.raises(ValueError):
        Cmdline(0)


@pytest.mark.parametrize("bad", ["a\nb", "tab\there", "nul\0", "del\x7f", "caf\u00e9", "bell\x07"])
def test_cmdline_non_printable_rejected(bad):
    line = Cmdline()

    with pytest.raises(ConfigError, match="printable ASCII"):
        line.insert_str(bad)

    assert line.as_str() == ""


def test_cmdline_parts_joined_by_one_space():
    line = Cmdline()
    line.insert_str("console=ttyS0")
    line.insert_str("  reboot=k  ")
    line.insert("panic", "1")

    assert line.as_bytes() == b"console=ttyS0 reboot=k panic=1\0"


def test_cmdline_empty_insert_ignored():
    line = Cmdline()
    line.insert_str("   ")

    assert line.as_bytes() == b"\0"


@pytest.mark.parametrize(("key", "value"), [("", "v"), ("a b", "v"), ("a=b", "v"), ("k", "x y")])
def test_cmdline_insert_malformed_key_value_rejected(key, value):
    with pytest.raises(ConfigError):
        Cmdline().insert(key, value)


def test_virtio_mmio_device_first_slot_stanza():
    assert virtio_mmio_device(0xC000_1000, 5) == "virtio_mmio.device=4K@0xc0001000:5"


def test_virtio_mmio_device_stanza_fits_cmdline():
    line = Cmdline()

    line.insert_str(virtio_mmio_device(layout.VIRTIO_MMIO_START + 0x1000, 6))

    assert line.as_str() == "virtio_mmio.device=4K@0xc0002000:6"
