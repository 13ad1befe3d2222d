"""ctypes mirror of linux/kvm.h and asm/kvm.h (x86_64): kernel names, kernel field order, no policy.

tests/kvm/test_uapi_header.py compiles a C program against the installed <linux/kvm.h> and checks
every size, offset and ioctl number here against it.
"""

from __future__ import annotations

import ctypes
from ctypes import c_int32, c_uint8, c_uint16, c_uint32, c_uint64, sizeof

from sparkler.kvm.ioctl_nr import _IO, _IOR, _IOW, _IOWR

u8, u16, u32, u64, s32 = c_uint8, c_uint16, c_uint32, c_uint64, c_int32

KVMIO = 0xAE
KVM_API_VERSION = 12


class _S(ctypes.Structure):
    """Native alignment, like the kernel's structs (they are naturally aligned)."""


# --- asm/kvm.h --------------------------------------------------------------------------------
class kvm_regs(_S):  # noqa: N801 - kernel name
    _fields_ = [(n, u64) for n in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class kvm_segment(_S):  # noqa: N801
    _fields_ = [
        ("base", u64), ("limit", u32), ("selector", u16), ("type", u8), ("present", u8),
        ("dpl", u8), ("db", u8), ("s", u8), ("l", u8), ("g", u8), ("avl", u8),
        ("unusable", u8), ("padding", u8),
    ]


class kvm_dtable(_S):  # noqa: N801
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


KVM_NR_INTERRUPTS = 256


class kvm_sregs(_S):  # noqa: N801
    _fields_ = [
        ("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment), ("fs", kvm_segment),
        ("gs", kvm_segment), ("ss", kvm_segment), ("tr", kvm_segment), ("ldt", kvm_segment),
        ("gdt", kvm_dtable), ("idt", kvm_dtable),
        ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64), ("cr8", u64),
        ("efer", u64), ("apic_base", u64),
        ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_fpu(_S):  # noqa: N801
    _fields_ = [
        ("fpr", (u8 * 16) * 8), ("fcw", u16), ("fsw", u16), ("ftwx", u8), ("pad1", u8),
        ("last_opcode", u16), ("last_ip", u64), ("last_dp", u64), ("xmm", (u8 * 16) * 16),
        ("mxcsr", u32), ("pad2", u32),
    ]


class kvm_msr_entry(_S):  # noqa: N801
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


class kvm_msrs(_S):  # noqa: N801
    """Header only; the entries follow (see :func:`msrs_buffer`)."""

    _fields_ = [("nmsrs", u32), ("pad", u32)]


class kvm_cpuid_entry2(_S):  # noqa: N801
    _fields_ = [
        ("function", u32), ("index", u32), ("flags", u32), ("eax", u32), ("ebx", u32),
        ("ecx", u32), ("edx", u32), ("padding", u32 * 3),
    ]


class kvm_cpuid2(_S):  # noqa: N801
    """Header only; the entries follow (see :func:`cpuid_buffer`)."""

    _fields_ = [("nent", u32), ("padding", u32)]


KVM_APIC_REG_SIZE = 0x400


class kvm_lapic_state(_S):  # noqa: N801
    _fields_ = [("regs", ctypes.c_char * KVM_APIC_REG_SIZE)]


class kvm_pit_config(_S):  # noqa: N801
    _fields_ = [("flags", u32), ("pad", u32 * 15)]


KVM_PIT_SPEAKER_DUMMY = 1


class _events_exception(_S):  # noqa: N801
    _fields_ = [("injected", u8), ("nr", u8), ("has_error_code", u8), ("pending", u8),
                ("error_code", u32)]


class _events_interrupt(_S):  # noqa: N801
    _fields_ = [("injected", u8), ("nr", u8), ("soft", u8), ("shadow", u8)]


class _events_nmi(_S):  # noqa: N801
    _fields_ = [("injected", u8), ("pending", u8), ("masked", u8), ("pad", u8)]


class _events_smi(_S):  # noqa: N801
    _fields_ = [("smm", u8), ("pending", u8), ("smm_inside_nmi", u8), ("latched_init", u8)]


class kvm_vcpu_events(_S):  # noqa: N801
    _fields_ = [
        ("exception", _events_exception), ("interrupt", _events_interrupt), ("nmi", _events_nmi),
        ("sipi_vector", u32), ("flags", u32), ("smi", _events_smi),
        ("triple_fault_pending", u8), ("reserved", u8 * 26), ("exception_has_payload", u8),
        ("exception_payload", u64),
    ]


# --- linux/kvm.h ------------------------------------------------------------------------------
class kvm_userspace_memory_region(_S):  # noqa: N801
    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64), ("memory_size", u64),
                ("userspace_addr", u64)]


KVM_MEM_LOG_DIRTY_PAGES = 1 << 0


class kvm_irq_level(_S):  # noqa: N801
    _fields_ = [("irq", u32), ("level", u32)]


class kvm_irqfd(_S):  # noqa: N801
    _fields_ = [("fd", u32), ("gsi", u32), ("flags", u32), ("resamplefd", u32), ("pad", u8 * 16)]


class kvm_ioeventfd(_S):  # noqa: N801
    _fields_ = [("datamatch", u64), ("addr", u64), ("len", u32), ("fd", s32), ("flags", u32),
                ("pad", u8 * 36)]


KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2


class kvm_mp_state(_S):  # noqa: N801
    _fields_ = [("mp_state", u32)]


# kvm_run: the fixed header, then a union of exit payloads at offset 32. Only the members Sparkler
# reads are mirrored; the union is sized by its largest member (256 bytes of padding).
class _run_io(_S):  # noqa: N801
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32), ("data_offset", u64)]


class _run_mmio(_S):  # noqa: N801
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class _run_internal(_S):  # noqa: N801
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class _run_fail_entry(_S):  # noqa: N801
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class _run_system_event(_S):  # noqa: N801
    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class _run_hw(_S):  # noqa: N801
    _fields_ = [("hardware_exit_reason", u64)]


class _run_exit_union(ctypes.Union):  # noqa: N801
    _fields_ = [("hw", _run_hw), ("fail_entry", _run_fail_entry), ("io", _run_io), ("mmio", _run_mmio),
                ("internal", _run_internal), ("system_event", _run_system_event), ("padding", ctypes.c_char * 256)]


class kvm_run(_S):  # noqa: N801
    _fields_ = [
        ("request_interrupt_window", u8), ("immediate_exit", u8), ("padding1", u8 * 6),
        ("exit_reason", u32), ("ready_for_interrupt_injection", u8), ("if_flag", u8),
        ("flags", u16), ("cr8", u64), ("apic_base", u64), ("u", _run_exit_union),
    ]


KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

# Exit reasons.
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_SET_TPR = 11
KVM_EXIT_TPR_ACCESS = 12
KVM_EXIT_NMI = 16
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24

KVM_INTERNAL_ERROR_EMULATION = 1

KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3

KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1

# Capabilities (KVM_CHECK_EXTENSION).
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_PIT = 11
KVM_CAP_MP_STATE = 14
KVM_CAP_SYNC_MMU = 16
KVM_CAP_IOMMU = 18
KVM_CAP_ADJUST_CLOCK = 39
KVM_CAP_IOEVENTFD = 36
KVM_CAP_PIT2 = 33
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_IRQFD = 32
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_PIT_STATE2 = 35
KVM_CAP_DEBUGREGS = 50
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_TSC_CONTROL = 60
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_IMMEDIATE_EXIT = 136

CAPABILITY_NAMES = {v: k for k, v in list(globals().items()) if k.startswith("KVM_CAP_")}

# --- ioctls -------------------------------------------------------------------------------------
_BEFORE_IOCTLS = set(globals())
# System ioctls (on /dev/kvm).
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, sizeof(kvm_cpuid2))
# VM ioctls.
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, sizeof(kvm_userspace_memory_region))
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, sizeof(u64))
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_IRQ_LINE = _IOW(KVMIO, 0x61, sizeof(kvm_irq_level))
KVM_IRQFD = _IOW(KVMIO, 0x76, sizeof(kvm_irqfd))
KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, sizeof(kvm_pit_config))
KVM_IOEVENTFD = _IOW(KVMIO, 0x79, sizeof(kvm_ioeventfd))
# vCPU ioctls.
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, sizeof(kvm_regs))
KVM_SET_REGS = _IOW(KVMIO, 0x82, sizeof(kvm_regs))
KVM_GET_SREGS = _IOR(KVMIO, 0x83, sizeof(kvm_sregs))
KVM_SET_SREGS = _IOW(KVMIO, 0x84, sizeof(kvm_sregs))
KVM_GET_MSRS = _IOWR(KVMIO, 0x88, sizeof(kvm_msrs))
KVM_SET_MSRS = _IOW(KVMIO, 0x89, sizeof(kvm_msrs))
KVM_GET_FPU = _IOR(KVMIO, 0x8C, sizeof(kvm_fpu))
KVM_SET_FPU = _IOW(KVMIO, 0x8D, sizeof(kvm_fpu))
KVM_GET_LAPIC = _IOR(KVMIO, 0x8E, sizeof(kvm_lapic_state))
KVM_SET_LAPIC = _IOW(KVMIO, 0x8F, sizeof(kvm_lapic_state))
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, sizeof(kvm_cpuid2))
KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, sizeof(kvm_cpuid2))
KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, sizeof(kvm_mp_state))
KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, sizeof(kvm_mp_state))
KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9F, sizeof(kvm_vcpu_events))
KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xA0, sizeof(kvm_vcpu_events))

IOCTL_NAMES: dict[int, str] = {
    v: k for k, v in list(globals().items()) if k.startswith("KVM_") and k not in _BEFORE_IOCTLS
}
del _BEFORE_IOCTLS


def cpuid_buffer(entries: list[kvm_cpuid_entry2] | int) -> ctypes.Array[ctypes.c_char]:
    """A kvm_cpuid2 followed by its entries: ``entries`` (copied) or room for that many."""
    n = entries if isinstance(entries, int) else len(entries)
    buf = ctypes.create_string_buffer(sizeof(kvm_cpuid2) + n * sizeof(kvm_cpuid_entry2))
    kvm_cpuid2.from_buffer(buf).nent = n
    if not isinstance(entries, int):
        array = (kvm_cpuid_entry2 * n).from_buffer(buf, sizeof(kvm_cpuid2))
        for i, e in enumerate(entries):
            array[i] = e
    return buf


def cpuid_entries(buf: ctypes.Array[ctypes.c_char]) -> list[kvm_cpuid_entry2]:
    n = kvm_cpuid2.from_buffer(buf).nent
    array = (kvm_cpuid_entry2 * n).from_buffer(buf, sizeof(kvm_cpuid2))
    return [kvm_cpuid_entry2.from_buffer_copy(e) for e in array]


def msrs_buffer(entries: list[tuple[int, int]]) -> ctypes.Array[ctypes.c_char]:
    """A kvm_msrs followed by one kvm_msr_entry per (index, value)."""
    buf = ctypes.create_string_buffer(sizeof(kvm_msrs) + len(entries) * sizeof(kvm_msr_entry))
    kvm_msrs.from_buffer(buf).nmsrs = len(entries)
    array = (kvm_msr_entry * len(entries)).from_buffer(buf, sizeof(kvm_msrs))
    for i, (index, value) in enumerate(entries):
        array[i].index = index
        array[i].data = value
    return buf


def msrs_values(buf: ctypes.Array[ctypes.c_char]) -> list[tuple[int, int]]:
    n = kvm_msrs.from_buffer(buf).nmsrs
    array = (kvm_msr_entry * n).from_buffer(buf, sizeof(kvm_msrs))
    return [(e.index, e.data) for e in array]
