"""sparkler.kvm.uapi against the installed <linux/kvm.h> and <asm/kvm.h> (rule R2).

A C program generated from uapi.py's own definitions prints every size, offset, ioctl number and
constant as the compiler sees them; the test compares them with ours.
"""

from __future__ import annotations

import ctypes
import os
import struct

import pytest

from sparkler.kvm import exits, uapi
from tests.kvm.cheader import (
    Check,
    c_program,
    compile_and_run,
    constant_checks,
    is_mirrored_struct,
    mismatches,
    struct_checks,
)

HEADERS = ["linux/kvm.h", "asm/kvm.h"]

# Python path -> C member path where the mirror has to name something the header leaves anonymous.
RENAMES = {
    "kvm_run.u": "",  # the exit union is anonymous in kvm_run
    "kvm_vcpu_events.triple_fault_pending": "triple_fault.pending",  # struct { __u8 pending; } triple_fault
}
# Header-only mirrors: the kernel struct continues past what Sparkler reads (kvm_run: sync regs).
NO_SIZEOF = {"kvm_run"}
# Every struct the brief requires to be mirrored (the test also picks up any other kvm_* class).
REQUIRED_STRUCTS = {
    "kvm_regs", "kvm_sregs", "kvm_segment", "kvm_dtable", "kvm_fpu", "kvm_msr_entry", "kvm_msrs",
    "kvm_cpuid_entry2", "kvm_cpuid2", "kvm_lapic_state", "kvm_pit_config", "kvm_vcpu_events",
    "kvm_userspace_memory_region", "kvm_irq_level", "kvm_irqfd", "kvm_ioeventfd", "kvm_mp_state", "kvm_run",
}

# Offsets exits.py decodes with struct formats rather than through the ctypes mirror.
RUN_LAYOUT_EXTRA = [
    Check("kvm_run.emulation_failure.flags", 40, "offsetof(struct kvm_run, emulation_failure.flags)"),
    Check("kvm_run.emulation_failure.insn_size", 48, "offsetof(struct kvm_run, emulation_failure.insn_size)"),
    Check("kvm_run.emulation_failure.insn_bytes", 49, "offsetof(struct kvm_run, emulation_failure.insn_bytes)"),
    Check("kvm_run.system_event.flags", 40, "offsetof(struct kvm_run, system_event.flags)"),
]


def _header_present() -> bool:
    return os.path.exists("/usr/include/linux/kvm.h")


def _mirrored_structs() -> list[type]:
    return [v for k, v in vars(uapi).items() if k.startswith("kvm_") and is_mirrored_struct(v)]


def _constants() -> dict[str, int]:
    return {
        k: v
        for k, v in vars(uapi).items()
        if (k.startswith("KVM_") or k == "KVMIO") and k.isupper() and isinstance(v, int) and not isinstance(v, bool)
    }


@pytest.fixture(scope="module")
def header_values(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Check], dict[str, int | None]]:
    if not _header_present():
        pytest.skip("host limitation: /usr/include/linux/kvm.h missing (install linux-libc-dev)")
    checks: list[Check] = []
    for s in _mirrored_structs():
        checks += struct_checks(s, renames=RENAMES, check_sizeof=s.__name__ not in NO_SIZEOF)
    checks += constant_checks(_constants())
    checks += RUN_LAYOUT_EXTRA
    # every constant must exist in the header: a name the kernel does not define prints "undefined"
    source = c_program(HEADERS, checks, optional={c.c_expr for c in constant_checks(_constants())})
    values = compile_and_run(source, tmp_path_factory.mktemp("kvm_uapi"))
    return checks, values


def test_uapi_mirror_covers_required_structs_all_present() -> None:
    names = {s.__name__ for s in _mirrored_structs()}
    assert REQUIRED_STRUCTS <= names, f"not mirrored: {sorted(REQUIRED_STRUCTS - names)}"
    for member in ("io", "mmio", "internal", "system_event", "fail_entry"):
        assert member in {f[0] for f in uapi._run_exit_union._fields_}, member


def test_uapi_structs_against_kernel_header_sizes_and_offsets_match(header_values) -> None:
    checks, values = header_values
    layout = [c for c in checks if c.label.startswith(("sizeof(", "offsetof(", "kvm_run."))]
    assert len(layout) > 150, "the generated program checks suspiciously few fields"
    missing = [c.label for c in layout if c.label not in values]
    assert not missing, f"no value printed for {missing}"
    assert mismatches(layout, values) == []


def test_uapi_constants_against_kernel_header_values_match(header_values) -> None:
    checks, values = header_values
    consts = [c for c in checks if c.c_expr == c.label]
    undefined = [c.label for c in consts if values.get(c.label) is None]
    assert not undefined, f"uapi.py defines names the kernel header does not: {undefined}"
    assert mismatches(consts, values) == []


def test_uapi_ioctl_numbers_against_kernel_header_every_ioctl_checked(header_values) -> None:
    checks, values = header_values
    ioctls = {name for name, nr in _constants().items() if nr in uapi.IOCTL_NAMES}
    # the ioctls Sparkler issues, each one compared with the header's macro
    for name in ("KVM_RUN", "KVM_SET_USER_MEMORY_REGION", "KVM_GET_SUPPORTED_CPUID", "KVM_SET_MSRS",
                 "KVM_IOEVENTFD", "KVM_IRQFD", "KVM_SET_CPUID2", "KVM_GET_VCPU_EVENTS", "KVM_CREATE_PIT2"):
        assert name in ioctls, name
        assert values[name] == getattr(uapi, name), name


def test_ioctl_names_table_no_two_ioctls_share_a_number() -> None:
    ioctl_consts = {k: v for k, v in _constants().items() if v > 0xFFFF}
    assert len(set(ioctl_consts.values())) == len(ioctl_consts)
    assert {uapi.IOCTL_NAMES[v] for v in ioctl_consts.values()} == set(ioctl_consts)


def test_ioctl_names_table_io_ioctls_without_size_named_constants_excluded() -> None:
    # _IO() ioctls are small numbers (KVM_RUN = 0xae80): errors must still name them
    for name in ("KVM_RUN", "KVM_CREATE_VM", "KVM_CREATE_VCPU", "KVM_SET_TSS_ADDR", "KVM_CREATE_IRQCHIP",
                 "KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE"):
        assert uapi.IOCTL_NAMES[getattr(uapi, name)] == name
    assert all(n.startswith("KVM_") and not n.startswith(("KVM_CAP_", "KVM_EXIT_")) for n in uapi.IOCTL_NAMES.values())
    assert all(v >> 8 & 0xFF == uapi.KVMIO for v in uapi.IOCTL_NAMES)


def test_capability_names_table_maps_each_cap_to_its_name() -> None:
    caps = {k: v for k, v in _constants().items() if k.startswith("KVM_CAP_")}
    assert len(set(caps.values())) == len(caps), "two capabilities share a number"
    for name, number in caps.items():
        assert uapi.CAPABILITY_NAMES[number] == name


def test_exits_struct_formats_match_uapi_mirror_same_size() -> None:
    # exits.py unpacks io and mmio with struct formats; they must describe the mirrored members
    assert exits._IO.size == ctypes.sizeof(uapi._run_io)
    assert exits._MMIO.size == uapi._run_mmio.is_write.offset + 1
    assert exits._RUN_UNION == 32
    assert struct.calcsize("<QI") == uapi._run_fail_entry.cpu.offset + 4


def test_msrs_buffer_round_trip_values_preserved() -> None:
    entries = [(0x10, 1), (0xC000_0082, 0xFFFF_FFFF_8100_0000), (0x2FF, 0x806)]
    buf = uapi.msrs_buffer(entries)
    assert ctypes.sizeof(buf) == 8 + 16 * 3
    assert uapi.msrs_values(buf) == entries


def test_cpuid_buffer_round_trip_entries_preserved() -> None:
    entries = [uapi.kvm_cpuid_entry2(function=f, index=f & 1, eax=f * 3, edx=0xDEAD) for f in range(5)]
    buf = uapi.cpuid_buffer(entries)
    out = uapi.cpuid_entries(buf)
    assert [bytes(e) for e in out] == [bytes(e) for e in entries]
    assert uapi.kvm_cpuid2.from_buffer(uapi.cpuid_buffer(7)).nent == 7
