"""16550A UART (COM1): the register machine Linux's 8250 driver probes and drives, plus adapters.

Registers by offset (DLAB = LCR bit 7)::

    0  read RBR (receive) / write THR (transmit)      DLAB: DLL (divisor low)
    1  IER (interrupt enable: 0x01 data, 0x02 THRE)    DLAB: DLM (divisor high)
    2  read IIR (interrupt identity) / write FCR (FIFO control)
    3  LCR   4 MCR (bit 4 = loopback)   5 LSR   6 MSR   7 SCR (scratch)

Transmission is instant: THR is always empty, so LSR always has THRE|TEMT. Interrupt state:

* "received data available" while the receive FIFO holds bytes and IER bit 0 is set;
* "THR empty" becomes pending when the guest writes THR or newly enables IER bit 1, and is cleared
  when the guest reads IIR while it is the reported cause, or writes THR again.

Every transition that makes an interrupt pending pulses the Trigger (an irqfd edge on GSI 4).
In loopback mode (MCR bit 4) transmitted bytes return as received bytes and MSR mirrors MCR, which
the 8250 autoconfig probe checks. The output sink and the input source are adapters, so the
register machine itself does no I/O.

Interrupt state table (IIR value reported, highest priority first; bits 0xC0 added once FCR bit 0
has enabled the FIFOs)::

    condition                                   IIR    cleared by
    IER bit 0 and receive FIFO not empty        0x04   reading RBR until the FIFO is empty
    IER bit 1 and THRE pending                  0x02   reading IIR (when reported) / writing THR
    nothing                                     0x01   -

Counters (Firecracker's ``uart`` group): ``read_count`` guest reads of RBR, ``write_count`` bytes the
guest transmitted, ``missed_read_count`` input bytes dropped because the 64-byte receive FIFO was
full, ``missed_write_count`` output bytes dropped because the sink would block, ``error_count``
accesses that are not one byte wide plus output errors other than EAGAIN, ``flush_count`` and
``rate_limiter_dropped_bytes`` stay 0 (no buffered writer, no rate limiter here).

Threading: the vCPU thread calls ``read``/``write``, the VMM thread (``vmm.runtime.ConsoleInput``)
calls ``enqueue_input``; one lock serialises them.
"""

from __future__ import annotations

import os
import stat
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sparkler.devices.base import Trigger

DATA, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)
FCR = IIR

IER_RDA = 0x01
IER_THRE = 0x02
IER_MASK = 0x0F

IIR_NONE = 0x01
IIR_THRE = 0x02
IIR_RDA = 0x04
IIR_FIFO_BITS = 0xC0

FCR_FIFO_ENABLE = 0x01
FCR_CLEAR_RX = 0x02

LCR_DLAB = 0x80

MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10

LSR_DR = 0x01
LSR_OVERRUN = 0x02
LSR_THRE = 0x20
LSR_TEMT = 0x40

MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80
MSR_DEFAULT = MSR_DCD | MSR_DSR | MSR_CTS

DEFAULT_DIVISOR = 12  # 9600 baud
RX_FIFO_SIZE = 64


@dataclass(frozen=True)
class SerialStatistics:
    """Firecracker's ``uart`` metrics group."""

    error_count: int
    flush_count: int
    missed_read_count: int
    missed_write_count: int
    read_count: int
    write_count: int
    rate_limiter_dropped_bytes: int = 0


class Serial:
    """The 16550A register machine. ``out(data) -> bool`` receives transmitted bytes (False = dropped,
    an ``OSError`` = output error); ``None`` discards output."""

    def __init__(self, trigger: Trigger, out: Callable[[bytes], bool] | None = None) -> None:
        self._lock = threading.Lock()
        self.space_available = threading.Event()  # set while the receive FIFO has room
        self.space_available.set()
        # Called (on the vCPU thread, under the lock) when a full receive FIFO gets room again, so
        # that the VMM thread resumes reading console input (the builder points it at an eventfd).
        self.space_notify: Callable[[], None] | None = None
        self._trigger = trigger
        self._out = out
        self.ier = 0
        self.lcr = 0x03  # 8N1
        self.mcr = MCR_OUT2
        self.scr = 0
        self.divisor = DEFAULT_DIVISOR
        self.fifo_enabled = False
        self.thre_pending = False
        self.overrun = False
        self.rx: deque[int] = deque()
        self._counts = dict.fromkeys(SerialStatistics.__dataclass_fields__, 0)

    # --- guest side -------------------------------------------------------------------------
    def read(self, offset: int, data: memoryview) -> None:
        with self._lock:
            if len(data) == 1:
                data[0] = self._read_reg(offset)
                return
            self._counts["error_count"] += 1
            data[:] = bytes(len(data))

    def write(self, offset: int, data: bytes) -> None:
        with self._lock:
            if len(data) != 1:
                self._counts["error_count"] += 1
                return
            self._write_reg(offset, data[0])

    def _read_reg(self, offset: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if offset == DATA:
            if dlab:
                return self.divisor & 0xFF
            self._counts["read_count"] += 1
            if not self.rx:
                return 0
            value = self.rx.popleft()
            self._space_freed()
            return value
        if offset == IER:
            return (self.divisor >> 8) & 0xFF if dlab else self.ier
        if offset == IIR:
            iir = self._iir()
            if iir == IIR_THRE:
                self.thre_pending = False
            return iir | (IIR_FIFO_BITS if self.fifo_enabled else 0)
        if offset == LCR:
            return self.lcr
        if offset == MCR:
            return self.mcr
        if offset == LSR:
            lsr = LSR_THRE | LSR_TEMT | (LSR_DR if self.rx else 0) | (LSR_OVERRUN if self.overrun else 0)
            self.overrun = False
            return lsr
        if offset == MSR:
            return self._msr()
        return self.scr

    def _write_reg(self, offset: int, value: int) -> None:
        dlab = self.lcr & LCR_DLAB
        if offset == DATA:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
                return
            self._transmit(value)
        elif offset == IER:
            if dlab:
                self.divisor = (self.divisor & 0x00FF) | (value << 8)
                return
            enabling_thre = value & IER_THRE and not self.ier & IER_THRE
            self.ier = value & IER_MASK
            if enabling_thre:
                self.thre_pending = True
            self._update_interrupt()
        elif offset == FCR:
            self.fifo_enabled = bool(value & FCR_FIFO_ENABLE)
            if value & FCR_CLEAR_RX:
                self.rx.clear()
                self._space_freed()
        elif offset == LCR:
            self.lcr = value
        elif offset == MCR:
            self.mcr = value & 0x1F
        elif offset == SCR:
            self.scr = value
        # LSR and MSR are read-only

    def _transmit(self, value: int) -> None:
        if self.mcr & MCR_LOOP:
            self._receive(bytes([value]))
        else:
            self._counts["write_count"] += 1
            if self._out is not None:
                try:
                    if not self._out(bytes([value])):
                        self._counts["missed_write_count"] += 1
                except OSError:
                    self._counts["error_count"] += 1
        self.thre_pending = True
        self._update_interrupt()

    def _msr(self) -> int:
        if not self.mcr & MCR_LOOP:
            return MSR_DEFAULT
        msr = 0
        if self.mcr & MCR_DTR:
            msr |= MSR_DSR
        if self.mcr & MCR_RTS:
            msr |= MSR_CTS
        if self.mcr & MCR_OUT1:
            msr |= MSR_RI
        if self.mcr & MCR_OUT2:
            msr |= MSR_DCD
        return msr

    def _iir(self) -> int:
        if self.ier & IER_RDA and self.rx:
            return IIR_RDA
        if self.ier & IER_THRE and self.thre_pending:
            return IIR_THRE
        return IIR_NONE

    def _update_interrupt(self) -> None:
        if self._iir() != IIR_NONE:
            self._trigger.trigger()

    def _space_freed(self) -> None:
        if not self.space_available.is_set():
            self.space_available.set()
            if self.space_notify is not None:
                self.space_notify()

    # --- host side ---------------------------------------------------------------------------
    def _receive(self, data: bytes) -> int:
        accepted = min(len(data), RX_FIFO_SIZE - len(self.rx))
        self.rx.extend(data[:accepted])
        if accepted < len(data):
            self.overrun = True
            self._counts["missed_read_count"] += len(data) - accepted
        if len(self.rx) >= RX_FIFO_SIZE:
            self.space_available.clear()
        return accepted

    def enqueue_input(self, data: bytes) -> int:
        """Queue console input for the guest; returns how many bytes fit in the receive FIFO (the
        rest is dropped and counted in ``missed_read_count``). Raises the interrupt when enabled."""
        with self._lock:
            accepted = self._receive(data)
            if accepted:
                self._update_interrupt()
            return accepted

    def input_space(self) -> int:
        """Free bytes in the receive FIFO (read no more than this from the input source)."""
        with self._lock:
            return RX_FIFO_SIZE - len(self.rx)

    def statistics(self) -> SerialStatistics:
        with self._lock:
            return SerialStatistics(**self._counts)


class SerialOutput:
    """Output sink writing to a file descriptor without ever blocking the vCPU (bytes are dropped
    when the reader is not keeping up, as in Firecracker)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        try:
            self._was_blocking = os.get_blocking(fd)
            os.set_blocking(fd, False)
        except OSError:
            self._was_blocking = False

    def close(self) -> None:
        """Give the descriptor its blocking mode back (it may be a terminal shared with a shell)."""
        if self._was_blocking:
            try:
                os.set_blocking(self.fd, True)
            except OSError:
                pass

    def __call__(self, data: bytes) -> bool:
        """Write ``data``; False when it would block (dropped). Other errors raise ``OSError``."""
        try:
            return os.write(self.fd, data) == len(data)
        except BlockingIOError:
            return False


def input_allowed(fd: int) -> bool:
    """Firecracker reads console input only from a terminal or a FIFO (never a file or /dev/null)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return os.isatty(fd) or stat.S_ISFIFO(mode)


