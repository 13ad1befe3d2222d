"""Minimal i8042: commands, ACK, CPU reset, Ctrl-Alt-Del and its IRQ gating."""

from __future__ import annotations

import pytest

from sparkler.devices.legacy import i8042 as k
from sparkler.devices.legacy.i8042 import I8042, I8042Error


class CountingTrigger:
    def __init__(self) -> None:
        self.count = 0

    def trigger(self) -> None:
        self.count += 1


def make() -> tuple[I8042, CountingTrigger, list[int]]:
    resets: list[int] = []
    trig = CountingTrigger()
    return I8042(lambda: resets.append(1), trig), trig, resets


def rd(dev: I8042, offset: int) -> int:
    buf = bytearray(1)
    dev.read(offset, memoryview(buf))
    return buf[0]


def wr(dev: I8042, offset: int, value: int) -> None:
    dev.write(offset, bytes([value]))


def drain(dev: I8042) -> list[int]:
    out = []
    while rd(dev, k.OFS_STATUS) & k.SB_OUT_DATA_AVAIL:
        out.append(rd(dev, k.OFS_DATA))
    return out


def test_i8042_initial_status_empty_buffer_kbd_enabled() -> None:
    dev, _, _ = make()
    assert rd(dev, k.OFS_STATUS) == k.SB_KBD_ENABLED


def test_i8042_cpu_reset_command_calls_reset() -> None:
    dev, _, resets = make()
    wr(dev, k.OFS_STATUS, 0xFE)
    assert resets == [1]
    assert dev.statistics().reset_count == 1


def test_i8042_read_control_byte_default() -> None:
    dev, _, _ = make()
    wr(dev, k.OFS_STATUS, 0x20)
    assert rd(dev, k.OFS_STATUS) & k.SB_OUT_DATA_AVAIL
    assert rd(dev, k.OFS_DATA) == k.CB_POST_OK | k.CB_KBD_INT
    assert not rd(dev, k.OFS_STATUS) & k.SB_OUT_DATA_AVAIL


def test_i8042_write_control_byte_then_read_back() -> None:
    dev, _, _ = make()
    wr(dev, k.OFS_STATUS, 0x60)
    assert rd(dev, k.OFS_STATUS) & k.SB_I8042_CMD_DATA
    wr(dev, k.OFS_DATA, 0x45)
    assert not rd(dev, k.OFS_STATUS) & k.SB_I8042_CMD_DATA
    wr(dev, k.OFS_STATUS, 0x20)
    assert drain(dev) == [0x45]


def test_i8042_output_port_write_then_read() -> None:
    dev, _, _ = make()
    wr(dev, k.OFS_STATUS, 0xD1)
    wr(dev, k.OFS_DATA, 0x03)
    wr(dev, k.OFS_STATUS, 0xD0)
    assert drain(dev) == [0x03]


def test_i8042_self_tests_answer_ok() -> None:
    dev, _, _ = make()
    wr(dev, k.OFS_STATUS, 0xAA)
    wr(dev, k.OFS_STATUS, 0xAB)
    assert drain(dev) == [0x55, 0x00]


def test_i8042_data_write_without_command_acked() -> None:
    dev, trig, _ = make()
    wr(dev, k.OFS_DATA, 0xF4)  # keyboard "enable scanning"
    assert drain(dev) == [0xFA]
    assert trig.count == 1  # kbd interrupts are enabled by default


def test_i8042_ack_with_kbd_irq_disabled_no_trigger() -> None:
    dev, trig, _ = make()
    wr(dev, k.OFS_STATUS, 0x60)
    wr(dev, k.OFS_DATA, k.CB_POST_OK)
    wr(dev, k.OFS_DATA, 0xFF)
    assert drain(dev) == [0xFA]
    assert trig.count == 0


def test_i8042_ctrl_alt_del_pushes_set2_codes_and_raises_irq() -> None:
    dev, trig, _ = make()
    dev.trigger_ctrl_alt_del()
    assert trig.count == 1
    assert drain(dev) == [0x14, 0x11, 0xE0, 0x71]


def test_i8042_ctrl_alt_del_kbd_irq_disabled_no_trigger() -> None:
    dev, trig, _ = make()
    wr(dev, k.OFS_STATUS, 0x60)
    wr(dev, k.OFS_DATA, 0x00)
    dev.trigger_ctrl_alt_del()
    assert trig.count == 0
    assert drain(dev) == [0x14, 0x11, 0xE0, 0x71]


def test_i8042_ctrl_alt_del_buffer_full_raises_error() -> None:
    dev, _, _ = make()
    for _ in range(4):
        dev.trigger_ctrl_alt_del()
    assert len(dev.buf) == 16
    with pytest.raises(I8042Error):
        dev.trigger_ctrl_alt_del()
    assert dev.statistics().error_count == 1
    assert len(dev.buf) == 16


def test_i8042_command_reply_buffer_full_counted_error() -> None:
    dev, _, _ = make()
    for _ in range(4):
        dev.trigger_ctrl_alt_del()
    wr(dev, k.OFS_STATUS, 0x20)
    assert dev.statistics().error_count == 1


def test_i8042_empty_data_read_zero_and_missed() -> None:
    dev, _, _ = make()
    assert rd(dev, k.OFS_DATA) == 0
    st = dev.statistics()
    assert (st.read_count, st.missed_read_count) == (1, 1)


def test_i8042_unmapped_offsets_counted_missed() -> None:
    dev, _, _ = make()
    assert rd(dev, 2) == 0
    wr(dev, 1, 0x12)
    dev.write(k.OFS_DATA, b"\x01\x02")
    st = dev.statistics()
    assert (st.missed_read_count, st.missed_write_count, st.write_count) == (1, 2, 0)


def test_i8042_unknown_command_ignored() -> None:
    dev, _, resets = make()
    wr(dev, k.OFS_STATUS, 0xED)
    assert drain(dev) == []
    assert resets == []


def test_i8042_statistics_fields_match_firecracker_group() -> None:
    dev, _, _ = make()
    assert set(type(dev.statistics()).__dataclass_fields__) == {
        "error_count", "missed_read_count", "missed_write_count", "read_count", "reset_count", "write_count",
    }


def test_i8042_reset_callable_runs_without_device_lock() -> None:
    seen: list[int] = []
    trig = CountingTrigger()
    dev: I8042

    def reset() -> None:  # another thread would need the lock; reading here must not deadlock
        seen.append(rd(dev, k.OFS_STATUS))

    dev = I8042(reset, trig)
    wr(dev, k.OFS_STATUS, 0xFE)
    assert seen == [k.SB_KBD_ENABLED]
