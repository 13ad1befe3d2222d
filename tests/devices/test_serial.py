"""16550A UART register machine: the probe Linux's 8250 driver runs, interrupts, FIFO, adapters."""

from __future__ import annotations

import os

import pytest

from sparkler.devices.legacy import serial as s
from sparkler.devices.legacy.serial import Serial, SerialOutput, input_allowed


class CountingTrigger:
    def __init__(self) -> None:
        self.count = 0

    def trigger(self) -> None:
        self.count += 1


def rd(dev: Serial, offset: int) -> int:
    buf = bytearray(1)
    dev.read(offset, memoryview(buf))
    return buf[0]


def wr(dev: Serial, offset: int, value: int) -> None:
    dev.write(offset, bytes([value]))


def make(out: list[bytes] | None = None) -> tuple[Serial, CountingTrigger]:
    trig = CountingTrigger()
    sink = None
    if out is not None:

        def sink(data: bytes) -> bool:
            out.append(data)
            return True

    return Serial(trig, sink), trig


def test_serial_reset_state_matches_16550a_defaults() -> None:
    dev, _ = make()
    assert rd(dev, s.IER) == 0
    assert rd(dev, s.IIR) == 0x01
    assert rd(dev, s.LCR) == 0x03
    assert rd(dev, s.MCR) == 0x08
    assert rd(dev, s.LSR) == 0x60
    assert rd(dev, s.MSR) == 0xB0


def test_serial_linux_autoconfig_detects_16550a() -> None:
    """The register sequence of Linux's 8250 autoconfig() and autoconfig_16550a()."""
    dev, _ = make()
    # IER test: 0 reads back 0, 0x0F reads back 0x0F
    wr(dev, s.IER, 0)
    assert rd(dev, s.IER) & 0x0F == 0
    wr(dev, s.IER, 0x0F)
    assert rd(dev, s.IER) & 0x0F == 0x0F
    wr(dev, s.IER, 0)
    # scratch register holds a value
    for v in (0xA5, 0x5A):
        wr(dev, s.SCR, v)
        assert rd(dev, s.SCR) == v
    # loopback MSR test: MCR = LOOP | OUT2 | RTS -> MSR high nibble = DCD | CTS
    saved_mcr = rd(dev, s.MCR)
    wr(dev, s.MCR, 0x10 | 0x0A)
    assert rd(dev, s.MSR) & 0xF0 == 0x90
    wr(dev, s.MCR, saved_mcr)
    # EFR probe (LCR 0xBF), then FIFO enable: IIR bits 7:6 == 3 means 16550A
    wr(dev, s.LCR, 0xBF)
    wr(dev, s.FCR, 0)
    wr(dev, s.LCR, 0)
    wr(dev, s.FCR, 0x01)
    assert rd(dev, s.IIR) >> 6 == 3
    # 16750 test: 64-byte FIFO bit must not show (IIR >> 5 stays 6 with and without DLAB)
    wr(dev, s.FCR, 0x01 | 0x20)
    assert rd(dev, s.IIR) >> 5 == 6
    wr(dev, s.LCR, 0x80)
    wr(dev, s.FCR, 0x01 | 0x20)
    wr(dev, s.LCR, 0)
    assert rd(dev, s.IIR) >> 5 == 6
    # XScale UUE bit (IER bit 6) does not stick
    wr(dev, s.IER, 0x40)
    assert rd(dev, s.IER) & 0x40 == 0
    assert rd(dev, s.LSR) == 0x60


def test_serial_fifo_disabled_iir_has_no_fifo_bits() -> None:
    dev, _ = make()
    wr(dev, s.FCR, 0x01)
    wr(dev, s.FCR, 0x00)
    assert rd(dev, s.IIR) == 0x01


def test_serial_dlab_set_divisor_latch_read_back() -> None:
    dev, _ = make([])
    wr(dev, s.IER, 0x03)
    wr(dev, s.LCR, 0x83)
    assert rd(dev, s.DATA) == 12 and rd(dev, s.IER) == 0  # default divisor 12
    wr(dev, s.DATA, 0x01)
    wr(dev, s.IER, 0x02)
    assert (rd(dev, s.DATA), rd(dev, s.IER)) == (0x01, 0x02)
    assert dev.divisor == 0x0201
    wr(dev, s.LCR, 0x03)
    assert rd(dev, s.IER) == 0x03  # the real IER was not touched


def test_serial_dlab_set_data_write_not_transmitted() -> None:
    out: list[bytes] = []
    dev, _ = make(out)
    wr(dev, s.LCR, 0x80)
    wr(dev, s.DATA, ord("x"))
    assert out == [] and dev.statistics().write_count == 0


def test_serial_thr_write_goes_to_output() -> None:
    out: list[bytes] = []
    dev, _ = make(out)
    for ch in b"hi\n":
        wr(dev, s.DATA, ch)
    assert b"".join(out) == b"hi\n"
    assert dev.statistics().write_count == 3


def test_serial_ier_thre_enable_raises_thre_interrupt() -> None:
    dev, trig = make([])
    wr(dev, s.IER, s.IER_THRE)
    assert trig.count == 1
    assert rd(dev, s.IIR) == 0x02
    assert rd(dev, s.IIR) == 0x01  # reading IIR cleared the THRE cause


def test_serial_thr_write_with_thre_enabled_raises_interrupt() -> None:
    dev, trig = make([])
    wr(dev, s.IER, s.IER_THRE)
    rd(dev, s.IIR)
    wr(dev, s.DATA, ord("a"))
    assert trig.count == 2
    assert rd(dev, s.IIR) == 0x02


def test_serial_thr_write_with_interrupts_disabled_no_trigger() -> None:
    dev, trig = make([])
    wr(dev, s.DATA, ord("a"))
    assert trig.count == 0
    assert rd(dev, s.IIR) == 0x01


def test_serial_input_with_rda_enabled_raises_interrupt() -> None:
    dev, trig = make()
    wr(dev, s.IER, s.IER_RDA)
    assert dev.enqueue_input(b"ab") == 2
    assert trig.count == 1
    assert rd(dev, s.IIR) == 0x04
    assert rd(dev, s.LSR) & s.LSR_DR
    assert rd(dev, s.DATA) == ord("a")
    assert rd(dev, s.IIR) == 0x04
    assert rd(dev, s.DATA) == ord("b")
    assert rd(dev, s.IIR) == 0x01
    assert rd(dev, s.LSR) == 0x60
    assert dev.statistics().read_count == 2


def test_serial_input_with_rda_disabled_no_trigger_until_enabled() -> None:
    dev, trig = make()
    dev.enqueue_input(b"z")
    assert trig.count == 0
    assert rd(dev, s.IIR) == 0x01
    wr(dev, s.IER, s.IER_RDA)
    assert trig.count == 1
    assert rd(dev, s.IIR) == 0x04


def test_serial_rda_and_thre_pending_rda_has_priority() -> None:
    dev, _ = make([])
    wr(dev, s.IER, s.IER_RDA | s.IER_THRE)
    dev.enqueue_input(b"q")
    assert rd(dev, s.IIR) == 0x04
    rd(dev, s.DATA)
    assert rd(dev, s.IIR) == 0x02
    assert rd(dev, s.IIR) == 0x01


def test_serial_input_overflow_dropped_and_counted() -> None:
    dev, _ = make()
    assert dev.enqueue_input(bytes(range(60))) == 60
    assert dev.input_space() == 4
    assert dev.enqueue_input(b"0123456789") == 4
    assert dev.statistics().missed_read_count == 6
    assert not dev.space_available.is_set()
    assert rd(dev, s.LSR) & s.LSR_OVERRUN
    assert not rd(dev, s.LSR) & s.LSR_OVERRUN  # cleared by reading LSR
    got = bytes(rd(dev, s.DATA) for _ in range(64))
    assert got == bytes(range(60)) + b"0123"
    assert dev.space_available.is_set()


def test_serial_fcr_clear_rx_empties_fifo() -> None:
    dev, _ = make()
    dev.enqueue_input(b"abc")
    wr(dev, s.FCR, s.FCR_FIFO_ENABLE | s.FCR_CLEAR_RX)
    assert rd(dev, s.LSR) & s.LSR_DR == 0
    assert dev.input_space() == s.RX_FIFO_SIZE


def test_serial_empty_rbr_read_returns_zero() -> None:
    dev, _ = make()
    assert rd(dev, s.DATA) == 0


def test_serial_loopback_thr_write_returns_as_input() -> None:
    out: list[bytes] = []
    dev, trig = make(out)
    wr(dev, s.IER, s.IER_RDA)
    wr(dev, s.MCR, s.MCR_LOOP)
    wr(dev, s.DATA, 0x42)
    assert out == []
    assert trig.count == 1
    assert rd(dev, s.DATA) == 0x42


@pytest.mark.parametrize(
    ("mcr", "msr"),
    [(0x01, 0x20), (0x02, 0x10), (0x04, 0x40), (0x08, 0x80), (0x0F, 0xF0), (0x00, 0x00)],
)
def test_serial_loopback_mcr_bits_mirrored_in_msr(mcr: int, msr: int) -> None:
    dev, _ = make()
    wr(dev, s.MCR, s.MCR_LOOP | mcr)
    assert rd(dev, s.MSR) == msr


def test_serial_lsr_msr_writes_ignored() -> None:
    dev, _ = make()
    wr(dev, s.LSR, 0xFF)
    wr(dev, s.MSR, 0xFF)
    assert (rd(dev, s.LSR), rd(dev, s.MSR)) == (0x60, 0xB0)


def test_serial_wide_access_counted_as_error_and_zero_filled() -> None:
    dev, _ = make([])
    buf = bytearray(b"\xff\xff")
    dev.read(s.LSR, memoryview(buf))
    dev.write(s.DATA, b"ab")
    assert buf == b"\0\0"
    assert dev.statistics().error_count == 2
    assert dev.statistics().write_count == 0


def test_serial_sink_dropping_counts_missed_write() -> None:
    dev = Serial(CountingTrigger(), lambda _data: False)
    wr(dev, s.DATA, 0x41)
    st = dev.statistics()
    assert (st.write_count, st.missed_write_count) == (1, 1)


def test_serial_sink_oserror_counts_error() -> None:
    def broken(_data: bytes) -> bool:
        raise BrokenPipeError

    dev = Serial(CountingTrigger(), broken)
    wr(dev, s.DATA, 0x41)
    assert dev.statistics().error_count == 1


def test_serial_statistics_fields_match_firecracker_uart_group() -> None:
    dev, _ = make()
    fields = set(type(dev.statistics()).__dataclass_fields__)
    assert fields == {
        "error_count", "flush_count", "missed_read_count", "missed_write_count",
        "read_count", "write_count", "rate_limiter_dropped_bytes",
    }
    with pytest.raises(AttributeError):
        dev.statistics().read_count = 3  # type: ignore[misc]


def test_serial_output_to_pipe_written_nonblocking() -> None:
    r, w = os.pipe()
    try:
        sink = SerialOutput(w)
        assert os.get_blocking(w) is False
        dev = Serial(CountingTrigger(), sink)
        for ch in b"boot ok\n":
            wr(dev, s.DATA, ch)
        assert os.read(r, 100) == b"boot ok\n"
        sink.close()
        assert os.get_blocking(w) is True
    finally:
        os.close(r)
        os.close(w)


def test_serial_output_full_pipe_drops_and_counts() -> None:
    r, w = os.pipe()
    try:
        sink = SerialOutput(w)
        dev = Serial(CountingTrigger(), sink)
        chunk = b"x" * 65536
        while True:  # fill the pipe
            try:
                os.write(w, chunk)
            except BlockingIOError:
                break
        try:
            while True:
                os.write(w, b"x")
        except BlockingIOError:
            pass
        wr(dev, s.DATA, ord("y"))
        assert dev.statistics().missed_write_count == 1
        sink.close()
    finally:
        os.close(r)
        os.close(w)


def test_input_allowed_fifo_true_regular_file_false(tmp_path) -> None:
    r, w = os.pipe()
    f = os.open(tmp_path / "f", os.O_CREAT | os.O_RDWR)
    try:
        assert input_allowed(r)
        assert not input_allowed(f)
        assert not input_allowed(9999)
    finally:
        for fd in (r, w, f):
            os.close(fd)


def test_serial_linux_startup_thre_bug_probe_finds_no_bug() -> None:
    """serial8250_do_startup's UART_BUG_TXEN / UART_BUG_THRE detection sequence."""
    dev, _ = make([])
    wr(dev, s.IER, s.IER_THRE)
    lsr = rd(dev, s.LSR)
    iir = rd(dev, s.IIR)
    wr(dev, s.IER, 0)
    wr(dev, s.IER, s.IER_THRE)
    iir1 = rd(dev, s.IIR)
    wr(dev, s.IER, 0)
    assert not (lsr & s.LSR_TEMT and iir & s.IIR_NONE)  # no UART_BUG_TXEN
    assert not (not iir1 & s.IIR_NONE and iir & s.IIR_NONE)  # no UART_BUG_THRE
    assert iir == iir1 == 0x02
