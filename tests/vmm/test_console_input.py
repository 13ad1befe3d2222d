"""Console input reaches the guest's UART without loss: a full receive FIFO pauses reading stdin
until the guest drains it (the UART's space event), then reading resumes."""

from __future__ import annotations

import os

from sparkler.devices.legacy.serial import DATA, RX_FIFO_SIZE, Serial
from sparkler.host.eventfd import EventFd
from sparkler.vmm.event_loop import EventLoop
from sparkler.vmm.runtime import ConsoleInput


class _Trigger:
    def trigger(self) -> None:
        pass


def _guest_reads(serial: Serial, n: int) -> bytes:
    out = bytearray()
    buf = bytearray(1)
    for _ in range(n):
        serial.read(DATA, memoryview(buf))
        out += buf
    return bytes(out)


def test_console_input_is_paced_by_the_fifo_and_nothing_is_dropped():
    serial = Serial(_Trigger())
    evt = EventFd()
    serial.space_notify = evt.write
    serial.space_event = evt
    loop = EventLoop()
    r, w = os.pipe()
    payload = bytes(range(256)) * 2 + b"end"  # 515 bytes: eight FIFO fills and a bit
    try:
        os.write(w, payload)
        os.close(w)
        w = -1
        console = ConsoleInput(loop, serial, r)
        console.start()
        received = bytearray()
        for _ in range(100):
            loop.run_once(0)
            if serial.input_space() == 0:
                assert not console.reading  # paused while the FIFO is full
            received += _guest_reads(serial, RX_FIFO_SIZE - serial.input_space())
            if console.eof:
                break
        assert bytes(received) == payload
        assert serial.statistics().missed_read_count == 0
        assert console.eof and r not in loop
    finally:
        loop.close()
        evt.close()
        os.close(r)
        if w >= 0:
            os.close(w)


def test_without_space_event_input_past_the_fifo_is_counted_as_missed():
    serial = Serial(_Trigger())
    loop = EventLoop()
    r, w = os.pipe()
    try:
        os.write(w, b"x" * 100)
        console = ConsoleInput(loop, serial, r)
        console.start()
        loop.run_once(0)  # one 64-byte read fills the FIFO
        loop.run_once(0)  # the next 36 bytes do not fit
        assert serial.input_space() == 0
        assert serial.statistics().missed_read_count == 36
    finally:
        loop.close()
        os.close(r)
        os.close(w)
