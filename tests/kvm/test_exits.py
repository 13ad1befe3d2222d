"""exits.decode() over hand-built kvm_run pages (no KVM needed): every exit type, and garbage never raises."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkler.kvm import exits, uapi

PAGE = 4096
UNION = 32  # offsetof(struct kvm_run, io): checked against the header in test_uapi_header.py
REASON = 8  # offsetof(struct kvm_run, exit_reason)


def run_page(reason: int, union: bytes = b"") -> memoryview:
    buf = bytearray(PAGE)
    struct.pack_into("<I", buf, REASON, reason)
    buf[UNION : UNION + len(union)] = union
    return memoryview(buf)


def io_page(direction: int, size: int, port: int, count: int, data_offset: int, data: bytes = b"") -> memoryview:
    run = run_page(uapi.KVM_EXIT_IO, struct.pack("<BBHIQ", direction, size, port, count, data_offset))
    if data:
        run[data_offset : data_offset + len(data)] = data
    return run


def mmio_page(addr: int, data: bytes, length: int, is_write: int) -> memoryview:
    return run_page(uapi.KVM_EXIT_MMIO, struct.pack("<Q8sIB", addr, data, length, is_write))


def test_decode_offsets_used_here_match_uapi_mirror() -> None:
    assert uapi.kvm_run.u.offset == UNION and uapi.kvm_run.exit_reason.offset == REASON


def test_decode_io_out_single_byte_port_and_data() -> None:
    exit_ = exits.decode(io_page(uapi.KVM_EXIT_IO_OUT, 1, 0x3F8, 1, 0x400, b"A"))
    assert exit_ == exits.IoOut(port=0x3F8, size=1, count=1, data=b"A")


def test_decode_io_out_rep_outs_count_gt_1_all_elements() -> None:
    payload = struct.pack("<3H", 0x1111, 0x2222, 0x3333)
    exit_ = exits.decode(io_page(uapi.KVM_EXIT_IO_OUT, 2, 0x1F0, 3, 0x800, payload))
    assert isinstance(exit_, exits.IoOut)
    assert (exit_.port, exit_.size, exit_.count) == (0x1F0, 2, 3)
    assert exit_.data == payload
    assert isinstance(exit_.data, bytes)  # a copy: the next KVM_RUN reuses the page


def test_decode_io_out_data_is_copy_later_page_writes_invisible() -> None:
    run = io_page(uapi.KVM_EXIT_IO_OUT, 1, 0x80, 1, 0x400, b"x")
    exit_ = exits.decode(run)
    run[0x400] = ord("y")
    assert exit_ == exits.IoOut(0x80, 1, 1, b"x")


def test_decode_io_in_writable_buffer_writes_land_in_run_page() -> None:
    run = io_page(uapi.KVM_EXIT_IO_IN, 4, 0xCF8, 2, 0x600)
    exit_ = exits.decode(run)
    assert isinstance(exit_, exits.IoIn)
    assert (exit_.port, exit_.size, exit_.count, len(exit_.buf)) == (0xCF8, 4, 2, 8)
    exit_.buf[:] = bytes(range(1, 9))
    assert bytes(run[0x600:0x608]) == bytes(range(1, 9))
    assert bytes(run[0x5FF:0x600]) == b"\0" and bytes(run[0x608:0x609]) == b"\0"  # nothing outside


@pytest.mark.parametrize("length", [1, 2, 4, 8])
def test_decode_mmio_write_of_len_bytes_data_truncated_to_len(length: int) -> None:
    exit_ = exits.decode(mmio_page(0xD000_0050, bytes(range(0xA0, 0xA8)), length, 1))
    assert exit_ == exits.MmioWrite(addr=0xD000_0050, data=bytes(range(0xA0, 0xA0 + length)))


@pytest.mark.parametrize("length", [1, 2, 4, 8])
def test_decode_mmio_read_of_len_bytes_buf_is_mmio_data(length: int) -> None:
    run = mmio_page(0xFEE0_0030, b"\xee" * 8, length, 0)  # stale bytes, as the kernel leaves them
    exit_ = exits.decode(run)
    assert isinstance(exit_, exits.MmioRead)
    assert exit_.addr == 0xFEE0_0030 and len(exit_.buf) == length
    exit_.buf[:] = bytes(range(1, length + 1))
    assert bytes(run[UNION + 8 : UNION + 8 + length]) == bytes(range(1, length + 1))
    assert bytes(run[UNION + 8 + length : UNION + 16]) == b"\xee" * (8 - length)  # nothing past len


def test_decode_mmio_len_above_8_clamped_to_data_field() -> None:
    assert exits.decode(mmio_page(0x1000, b"12345678", 4096, 1)) == exits.MmioWrite(addr=0x1000, data=b"12345678")
    read = exits.decode(mmio_page(0x1000, b"12345678", 0xFFFF_FFFF, 0))
    assert isinstance(read, exits.MmioRead) and len(read.buf) == 8


def test_decode_internal_error_emulation_failure_instruction_bytes() -> None:
    insn = bytes.fromhex("f3480fb8c0")  # popcnt rax, rax
    union = bytearray(256)
    struct.pack_into("<IIQ", union, 0, uapi.KVM_INTERNAL_ERROR_EMULATION, 9, 1)  # ndata 9, flags bit 0
    union[16] = len(insn)  # emulation_failure.insn_size (offset 48 in kvm_run)
    union[17 : 17 + 15] = insn + b"\x90" * (15 - len(insn))  # the kernel pads with NOPs
    for i in range(3, 9):
        struct.pack_into("<Q", union, 8 + 8 * i, 0x100 + i)
    exit_ = exits.decode(run_page(uapi.KVM_EXIT_INTERNAL_ERROR, bytes(union)))
    assert isinstance(exit_, exits.InternalError)
    assert exit_.suberror == uapi.KVM_INTERNAL_ERROR_EMULATION
    assert exit_.insn == insn
    assert len(exit_.data) == 9 and exit_.data[0] == 1 and exit_.data[8] == 0x108


def test_decode_internal_error_int3_single_byte_insn() -> None:
    union = bytearray(struct.pack("<IIQ", uapi.KVM_INTERNAL_ERROR_EMULATION, 3, 1)) + bytes([1]) + b"\xcc" + b"\x90" * 14
    exit_ = exits.decode(run_page(uapi.KVM_EXIT_INTERNAL_ERROR, bytes(union)))
    assert isinstance(exit_, exits.InternalError) and exit_.insn == b"\xcc"


def test_decode_internal_error_without_insn_flag_no_instruction_bytes() -> None:
    union = struct.pack("<IIQQ", uapi.KVM_INTERNAL_ERROR_EMULATION, 2, 0, 0x0B_CC)
    exit_ = exits.decode(run_page(uapi.KVM_EXIT_INTERNAL_ERROR, union))
    assert exit_ == exits.InternalError(uapi.KVM_INTERNAL_ERROR_EMULATION, (0, 0xBCC), b"")


def test_decode_internal_error_other_suberror_data_only() -> None:
    union = struct.pack("<IIQQQ", 3, 3, 1, 2, 3)  # KVM_INTERNAL_ERROR_DELIVERY_EV, flag-like data[0]
    assert exits.decode(run_page(uapi.KVM_EXIT_INTERNAL_ERROR, union)) == exits.InternalError(3, (1, 2, 3), b"")


def test_decode_internal_error_lying_ndata_and_insn_size_clamped() -> None:
    union = bytearray(struct.pack("<IIQ", uapi.KVM_INTERNAL_ERROR_EMULATION, 0xFFFF_FFFF, 1))
    union += bytes([200]) + b"\xcc" * 40
    exit_ = exits.decode(run_page(uapi.KVM_EXIT_INTERNAL_ERROR, bytes(union)))
    assert isinstance(exit_, exits.InternalError)
    assert len(exit_.data) == 16
    assert exit_.insn == b"\xcc" * 15


def test_decode_system_event_reset_type_and_flags() -> None:
    union = struct.pack("<IIQ", uapi.KVM_SYSTEM_EVENT_RESET, 1, 0x42)
    assert exits.decode(run_page(uapi.KVM_EXIT_SYSTEM_EVENT, union)) == exits.SystemEvent(
        uapi.KVM_SYSTEM_EVENT_RESET, 0x42
    )


def test_decode_system_event_no_data_flags_zero() -> None:
    union = struct.pack("<IIQ", uapi.KVM_SYSTEM_EVENT_SHUTDOWN, 0, 0x99)
    assert exits.decode(run_page(uapi.KVM_EXIT_SYSTEM_EVENT, union)) == exits.SystemEvent(
        uapi.KVM_SYSTEM_EVENT_SHUTDOWN, 0
    )


def test_decode_fail_entry_reason_and_cpu() -> None:
    union = struct.pack("<QI", 0x8000_0021, 3)
    assert exits.decode(run_page(uapi.KVM_EXIT_FAIL_ENTRY, union)) == exits.FailEntry(0x8000_0021, 3)


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (uapi.KVM_EXIT_HLT, exits.Hlt()),
        (uapi.KVM_EXIT_SHUTDOWN, exits.Shutdown()),
        (uapi.KVM_EXIT_INTR, exits.Interrupted()),
    ],
)
def test_decode_payloadless_exits_typed_value(reason: int, expected: exits.Exit) -> None:
    assert exits.decode(run_page(reason)) == expected


@pytest.mark.parametrize("reason", [uapi.KVM_EXIT_DEBUG, uapi.KVM_EXIT_NMI, 999, 0xFFFF_FFFF])
def test_decode_unknown_reason_unknown_with_reason(reason: int) -> None:
    assert exits.decode(run_page(reason)) == exits.Unknown(reason)


@pytest.mark.parametrize(
    ("size", "count", "data_offset"),
    [
        (1, 1, PAGE),  # just past the page
        (4, 2, PAGE - 4),  # straddles the end
        (4, 4, PAGE - 8),
        (1, 1, 2**64 - 1),  # u64 garbage
        (4, 0xFFFF_FFFF, 0x1000 - 1),  # count lies
        (3, 1, 0x100),  # not an I/O size
        (0, 1, 0x100),
    ],
)
def test_decode_io_lying_header_unknown_never_raises(size: int, count: int, data_offset: int) -> None:
    for direction in (uapi.KVM_EXIT_IO_IN, uapi.KVM_EXIT_IO_OUT):
        assert exits.decode(io_page(direction, size, 0x80, count, data_offset)) == exits.Unknown(uapi.KVM_EXIT_IO)


REASONS = st.sampled_from(
    [uapi.KVM_EXIT_IO, uapi.KVM_EXIT_MMIO, uapi.KVM_EXIT_INTERNAL_ERROR, uapi.KVM_EXIT_SYSTEM_EVENT,
     uapi.KVM_EXIT_FAIL_ENTRY, uapi.KVM_EXIT_HLT]
) | st.integers(0, 2**32 - 1)


@settings(max_examples=300, deadline=None)
@given(reason=REASONS, union=st.binary(min_size=0, max_size=256))
def test_decode_random_run_page_typed_exit_never_raises(reason: int, union: bytes) -> None:
    exit_ = exits.decode(run_page(reason, union))
    assert isinstance(exit_, exits.Exit)
