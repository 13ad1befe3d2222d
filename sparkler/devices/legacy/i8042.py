"""A minimal i8042 keyboard controller: enough for Linux's driver, a CPU reset and Ctrl-Alt-Del.

Ports (offsets in a 5-byte range at 0x60): 0 = data, 4 = status (read) / command (write).

Commands: 0x20 read the control byte, 0x60 write it (next data byte), 0xD0 read the output port,
0xD1 write it (next data byte), 0xFE pulse the CPU reset line -> the ``reset`` callable (the VMM ends
the VM with exit code 0, as Firecracker does). A data byte written without a pending command is
ACKed with 0xFA. 0xAA (controller self-test) answers 0x55 and 0xAB (keyboard interface test)
answers 0x00, so Linux's probe succeeds; other commands are ignored (``missed_write_count``). ``trigger_ctrl_alt_del`` queues the set-2 make codes of Ctrl, Alt and Del and
raises IRQ 1 when the guest enabled keyboard interrupts (control byte bit 0).

State: ``cmd`` is the command awaiting its data byte (0 = none; 0x60 or 0xD1); status bit 0x08 is
set while it waits. ``buf`` is the 16-byte output buffer; status bit 0x01 (output buffer full) is set
exactly while it is not empty. A full buffer turns a push into ``error_count`` (command replies) or
``I8042Error`` (Ctrl-Alt-Del). Reads of offsets 1..3 count ``missed_read_count`` and return 0; reading
the data port with an empty buffer returns 0 and counts ``missed_read_count``.

Threading: the vCPU thread and the API thread (``trigger_ctrl_alt_del``) share one lock.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sparkler.devices.base import Trigger

OFS_DATA = 0
OFS_STATUS = 4

CMD_READ_CTR = 0x20
CMD_WRITE_CTR = 0x60
CMD_READ_OUTP = 0xD0
CMD_WRITE_OUTP = 0xD1
CMD_RESET_CPU = 0xFE
CMD_SELF_TEST = 0xAA
CMD_KBD_TEST = 0xAB
SELF_TEST_OK = 0x55
KBD_TEST_OK = 0x00

SB_OUT_DATA_AVAIL = 0x01
SB_I8042_CMD_DATA = 0x08
SB_KBD_ENABLED = 0x10

CB_KBD_INT = 0x01
CB_POST_OK = 0x04

KEY_ACK = 0xFA
KEY_CTRL = 0x14
KEY_ALT = 0x11
KEY_DEL = (0xE0, 0x71)

BUF_SIZE = 16


class I8042Error(Exception):
    pass


@dataclass(frozen=True)
class I8042Statistics:
    """Firecracker's ``i8042`` metrics group."""

    error_count: int
    missed_read_count: int
    missed_write_count: int
    read_count: int
    reset_count: int
    write_count: int


class I8042:
    """The controller. ``reset()`` is called on the vCPU thread (without the device lock held) when the
    guest pulses the reset line."""

    def __init__(self, reset: Callable[[], None], trigger: Trigger) -> None:
        self._lock = threading.RLock()
        self._reset_requested = False
        self._reset = reset
        self._trigger = trigger
        self.status = SB_KBD_ENABLED
        self.control = CB_POST_OK | CB_KBD_INT
        self.outp = 0
        self.cmd = 0
        self.buf: deque[int] = deque()
        self._counts = dict.fromkeys(I8042Statistics.__dataclass_fields__, 0)

    def _push(self, byte: int) -> None:
        if len(self.buf) >= BUF_SIZE:
            raise I8042Error("i8042 output buffer full")
        self.buf.append(byte)
        self.status |= SB_OUT_DATA_AVAIL

    def _pop(self) -> int:
        if not self.buf:
            self._counts["missed_read_count"] += 1
            return 0
        byte = self.buf.popleft()
        if not self.buf:
            self.status &= ~SB_OUT_DATA_AVAIL
        return byte

    def trigger_ctrl_alt_del(self) -> None:
        """Queue Ctrl+Alt+Del (set-2 make codes); raises I8042Error if the buffer cannot take it."""
        with self._lock:
            if len(self.buf) + 4 > BUF_SIZE:
                self._counts["error_count"] += 1
                raise I8042Error("i8042 output buffer full")
            for byte in (KEY_CTRL, KEY_ALT, *KEY_DEL):
                self._push(byte)
            if self.control & CB_KBD_INT:
                self._trigger.trigger()

    def read(self, offset: int, data: memoryview) -> None:
        with self._lock:
            self._read(offset, data)

    def _read(self, offset: int, data: memoryview) -> None:
        value = 0
        if len(data) == 1:
            if offset == OFS_STATUS:
                value = self.status
            elif offset == OFS_DATA:
                value = self._pop()
                self._counts["read_count"] += 1
            else:
                self._counts["missed_read_count"] += 1
        data[:] = bytes([value]) + bytes(len(data) - 1)

    def write(self, offset: int, data: bytes) -> None:
        with self._lock:
            self._reset_requested = False
            self._write(offset, data)
            reset = self._reset_requested
        if reset:
            self._reset()  # outside the lock: the callable may stop the machine

    def _write(self, offset: int, data: bytes) -> None:
        if len(data) != 1:
            self._counts["missed_write_count"] += 1
            return
        value = data[0]
        if offset == OFS_STATUS:
            self._command(value)
        elif offset == OFS_DATA:
            self._data(value)
        else:
            self._counts["missed_write_count"] += 1
            return
        self._counts["write_count"] += 1

    def _command(self, value: int) -> None:
        if value == CMD_RESET_CPU:
            self._counts["reset_count"] += 1
            self._reset_requested = True
        elif value == CMD_READ_CTR:
            self._safe_push(self.control)
        elif value == CMD_WRITE_CTR or value == CMD_WRITE_OUTP:
            self.status |= SB_I8042_CMD_DATA
            self.cmd = value
        elif value == CMD_READ_OUTP:
            self._safe_push(self.outp)
        elif value == CMD_SELF_TEST:
            self._safe_push(SELF_TEST_OK)
        elif value == CMD_KBD_TEST:
            self._safe_push(KBD_TEST_OK)
        else:
            self._counts["missed_write_count"] += 1

    def _data(self, value: int) -> None:
        if self.cmd == CMD_WRITE_CTR:
            self.control = value
        elif self.cmd == CMD_WRITE_OUTP:
            self.outp = value
        else:
            self.buf.clear()
            self._safe_push(KEY_ACK)
            if self.control & CB_KBD_INT:
                self._trigger.trigger()
        self.cmd = 0
        self.status &= ~SB_I8042_CMD_DATA

    def _safe_push(self, byte: int) -> None:
        try:
            self._push(byte)
        except I8042Error:
            self._counts["error_count"] += 1

    def statistics(self) -> I8042Statistics:
        with self._lock:
            return I8042Statistics(**self._counts)
