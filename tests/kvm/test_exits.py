"""exits.decode over hand-built kvm_run pages (no KVM needed)."""

from __future__ import annotations

import struct

from sparkler.kvm import exits, uapi

RUN_SIZE = 4096
UNION = uapi.kvm_run.u.offset


def _run(reason: int) -> memoryview:
    page = bytearray(RUN_SIZE)
    struct.pack_into("<I", page, uapi.kvm_run.exit_reason.offset, reason)
    return memoryview(page)


def test_io_out_rep_uses_data_offset_and_count() -> None:
    run = _run(uapi.KVM_EXIT_IO)
    struct.pack_into("<BBHIQ", run, UNION, uapi.KVM_EXIT_IO_OUT, 2, 0x3F8, 3, 0x800)
    run[0x800:0x806] = b"abcdef"
    assert exits.decode(run) == exits.IoOut(0x3F8, 2, 3, b"abcdef")


def test_io_in_buffer_is_a_view_into_kvm_run() -> None:
    run = _run(uapi.KVM_EXIT_IO)
    struct.pack_into("<BBHIQ", run, UNION, uapi.KVM_EXIT_IO_IN, 1, 0x60, 2, 0x800)
    exit_ = exits.decode(run)
    assert isinstance(exit_, exits.IoIn) and len(exit_.buf) == 2
    exit_.buf[:] = b"xy"
    assert bytes(run[0x800:0x802]) == b"xy"


def test_io_with_bad_offset_is_unknown() -> None:
    run = _run(uapi.KVM_EXIT_IO)
    struct.pack_into("<BBHIQ", run, UNION, uapi.KVM_EXIT_IO_OUT, 4, 0x3F8, 4, RUN_SIZE - 8)
    assert exits.decode(run) == exits.Unknown(uapi.KVM_EXIT_IO)


def test_mmio_write_and_read() -> None:
    run = _run(uapi.KVM_EXIT_MMIO)
    struct.pack_into("<Q8sIB", run, UNION, 0xD000_0050, b"\x01\x02\x03\x04zzzz", 4, 1)
    assert exits.decode(run) == exits.MmioWrite(0xD000_0050, b"\x01\x02\x03\x04")
    struct.pack_into("<Q8sIB", run, UNION, 0xD000_0060, b"stale!!!", 8, 0)
    read = exits.decode(run)
    assert isinstance(read, exits.MmioRead) and read.addr == 0xD000_0060 and len(read.buf) == 8
    read.buf[:] = b"12345678"
    assert bytes(run[UNION + 8 : UNION + 16]) == b"12345678"


def test_simple_exits() -> None:
    assert exits.decode(_run(uapi.KVM_EXIT_HLT)) == exits.Hlt()
    assert exits.decode(_run(uapi.KVM_EXIT_SHUTDOWN)) == exits.Shutdown()
    assert exits.decode(_run(uapi.KVM_EXIT_INTR)) == exits.Interrupted()
    assert exits.decode(_run(999)) == exits.Unknown(999)


def test_system_event_and_fail_entry() -> None:
    run = _run(uapi.KVM_EXIT_SYSTEM_EVENT)
    struct.pack_into("<IIQ", run, UNION, uapi.KVM_SYSTEM_EVENT_RESET, 1, 7)
    assert exits.decode(run) == exits.SystemEvent(uapi.KVM_SYSTEM_EVENT_RESET, 7)
    run = _run(uapi.KVM_EXIT_FAIL_ENTRY)
    struct.pack_into("<QI", run, UNION, 0x80000021, 1)
    assert exits.decode(run) == exits.FailEntry(0x80000021, 1)


def test_emulation_failure_carries_instruction_bytes() -> None:
    run = _run(uapi.KVM_EXIT_INTERNAL_ERROR)
    struct.pack_into("<IIQ", run, UNION, uapi.KVM_INTERNAL_ERROR_EMULATION, 3, 1)
    run[UNION + 16] = 2  # insn_size
    run[UNION + 17 : UNION + 19] = b"\xcc\x90"
    exit_ = exits.decode(run)
    assert isinstance(exit_, exits.InternalError)
    assert exit_.suberror == uapi.KVM_INTERNAL_ERROR_EMULATION and exit_.insn == b"\xcc\x90"
    assert exit_.data[0] == 1 and len(exit_.data) == 3
