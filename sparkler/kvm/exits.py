"""Decode ``kvm_run`` once into typed exit values.

Each KVM_RUN return is turned into one small frozen dataclass. For exits that expect an answer
(IoIn, MmioRead) ``buf`` is a writable memoryview into the vCPU's ``kvm_run`` page: the handler
fills it in place and the next KVM_RUN hands the bytes to the guest. Decoding is a table lookup by
exit reason; nothing else in Sparkler looks at raw exit numbers.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from sparkler.kvm import uapi

_RUN_UNION = uapi.kvm_run.u.offset  # 32
_IO = struct.Struct("<BBHIQ")  # direction, size, port, count, data_offset
_MMIO = struct.Struct("<Q8sIB")  # phys_addr, data, len, is_write
_U32x2 = struct.Struct("<II")
_REASON = struct.Struct("<I")
_REASON_OFFSET = uapi.kvm_run.exit_reason.offset


@dataclass(frozen=True, slots=True)
class IoOut:
    port: int
    size: int
    count: int
    data: bytes


@dataclass(frozen=True, slots=True)
class IoIn:
    port: int
    size: int
    count: int
    buf: memoryview


@dataclass(frozen=True, slots=True)
class MmioWrite:
    addr: int
    data: bytes


@dataclass(frozen=True, slots=True)
class MmioRead:
    addr: int
    buf: memoryview


@dataclass(frozen=True, slots=True)
class Hlt:
    pass


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


@dataclass(frozen=True, slots=True)
class SystemEvent:
    type: int
    flags: int


@dataclass(frozen=True, slots=True)
class InternalError:
    suberror: int
    data: tuple[int, ...]
    insn: bytes


@dataclass(frozen=True, slots=True)
class FailEntry:
    reason: int
    cpu: int


@dataclass(frozen=True, slots=True)
class Interrupted:
    """KVM_RUN returned EINTR (the vCPU was kicked) or KVM_EXIT_INTR."""


@dataclass(frozen=True, slots=True)
class Unknown:
    reason: int


Exit = IoOut | IoIn | MmioWrite | MmioRead | Hlt | Shutdown | SystemEvent | InternalError | FailEntry | Interrupted | Unknown

INTERRUPTED = Interrupted()
_HLT = Hlt()
_SHUTDOWN = Shutdown()


def _io(run: memoryview) -> Exit:
    direction, size, port, count, offset = _IO.unpack_from(run, _RUN_UNION)
    length = size * count
    if size not in (1, 2, 4) or offset + length > len(run):
        return Unknown(uapi.KVM_EXIT_IO)
    if direction == uapi.KVM_EXIT_IO_OUT:
        return IoOut(port, size, count, bytes(run[offset : offset + length]))
    return IoIn(port, size, count, run[offset : offset + length])


def _mmio(run: memoryview) -> Exit:
    addr, data, length, is_write = _MMIO.unpack_from(run, _RUN_UNION)
    length = min(length, 8)
    if is_write:
        return MmioWrite(addr, data[:length])
    start = _RUN_UNION + 8
    return MmioRead(addr, run[start : start + length])


def _internal(run: memoryview) -> Exit:
    suberror, ndata = _U32x2.unpack_from(run, _RUN_UNION)
    ndata = min(ndata, 16)
    data = struct.unpack_from(f"<{ndata}Q", run, _RUN_UNION + 8)
    insn = b""
    # For emulation failures data[0] bit 0 says instruction bytes follow: data[1] low byte is the
    # length and the bytes start right after it (kvm_run.emulation_failure layout).
    if suberror == uapi.KVM_INTERNAL_ERROR_EMULATION and ndata >= 2 and data[0] & 1:
        insn_size = run[_RUN_UNION + 16]
        insn = bytes(run[_RUN_UNION + 17 : _RUN_UNION + 17 + min(insn_size, 15)])
    return InternalError(suberror, tuple(data), insn)


def _system_event(run: memoryview) -> Exit:
    type_, ndata = _U32x2.unpack_from(run, _RUN_UNION)
    flags = struct.unpack_from("<Q", run, _RUN_UNION + 8)[0] if ndata else 0
    return SystemEvent(type_, flags)


def _fail_entry(run: memoryview) -> Exit:
    reason, cpu = struct.unpack_from("<QI", run, _RUN_UNION)
    return FailEntry(reason, cpu)


_DECODERS: dict[int, Callable[[memoryview], Exit]] = {
    uapi.KVM_EXIT_IO: _io,
    uapi.KVM_EXIT_MMIO: _mmio,
    uapi.KVM_EXIT_HLT: lambda run: _HLT,
    uapi.KVM_EXIT_SHUTDOWN: lambda run: _SHUTDOWN,
    uapi.KVM_EXIT_INTR: lambda run: INTERRUPTED,
    uapi.KVM_EXIT_SYSTEM_EVENT: _system_event,
    uapi.KVM_EXIT_INTERNAL_ERROR: _internal,
    uapi.KVM_EXIT_FAIL_ENTRY: _fail_entry,
}


def decode(run: memoryview) -> Exit:
    """The exit described by the ``kvm_run`` page ``run``."""
    reason = _REASON.unpack_from(run, _REASON_OFFSET)[0]
    decoder = _DECODERS.get(reason)
    return decoder(run) if decoder is not None else Unknown(reason)


