"""CPUID normalisation: what every vCPU sees, derived from what KVM supports (catalog section 4.8).

Pure functions over copies of ``kvm_cpuid_entry2`` lists; no KVM calls here.
"""

from __future__ import annotations

from collections.abc import Callable

from sparkler.kvm.uapi import kvm_cpuid_entry2

# Leaf 1
EBX_CLFLUSH_SHIFT = 8
EBX_MAX_LOGICAL_SHIFT = 16
EBX_APIC_ID_SHIFT = 24
ECX_PDCM = 1 << 15
ECX_TSC_DEADLINE = 1 << 24
ECX_HYPERVISOR = 1 << 31
EDX_HTT = 1 << 28
CLFLUSH_LINE_QWORDS = 8  # 64-byte cache line, in units of 8 bytes

# Leaf 0xb: extended topology
LEAF_EXT_TOPOLOGY = 0xB
LEVEL_TYPE_SMT = 1
LEVEL_TYPE_CORE = 2

# Leaf 6 (Intel): turbo boost and energy-performance features are host facts, not guest facts.
LEAF_THERMAL = 0x6
EAX_TURBO = 1 << 1
ECX_EPB = 1 << 3

# Leaf 7 subleaf 0: WAITPKG (ECX bit 5) lets a guest park a host core; Firecracker clears it.
LEAF_EXT_FEATURES = 0x7
ECX_WAITPKG = 1 << 5

# Leaf 0xa: architectural PMU, not virtualised by Sparkler.
LEAF_PMU = 0xA

# AMD: leaf 0x80000008 ECX: number of threads - 1 in bits 7:0.
LEAF_AMD_SIZE = 0x8000_0008


def _copy(entries: list[kvm_cpuid_entry2]) -> list[kvm_cpuid_entry2]:
    return [kvm_cpuid_entry2.from_buffer_copy(bytes(e)) for e in entries]


def _bits_for(count: int) -> int:
    """Number of APIC-id bits needed to number ``count`` things."""
    return max(0, (count - 1).bit_length())


def normalize(
    entries: list[kvm_cpuid_entry2], vcpu_index: int, vcpu_count: int, smt: bool = False
) -> list[kvm_cpuid_entry2]:
    """The CPUID table vCPU ``vcpu_index`` of ``vcpu_count`` boots with (a new list)."""
    out = _copy(entries)
    threads_per_core = 2 if smt and vcpu_count > 1 else 1
    for e in out:
        if e.function == 0x1:
            e.ebx = (
                (vcpu_index << EBX_APIC_ID_SHIFT)
                | (min(vcpu_count, 255) << EBX_MAX_LOGICAL_SHIFT)
                | (CLFLUSH_LINE_QWORDS << EBX_CLFLUSH_SHIFT)
                | (e.ebx & 0xFF)
            )
            e.ecx = (e.ecx & ~ECX_PDCM) | ECX_TSC_DEADLINE | ECX_HYPERVISOR
            e.edx = e.edx | EDX_HTT if vcpu_count > 1 else e.edx & ~EDX_HTT
        elif e.function == LEAF_THERMAL:
            e.eax &= ~EAX_TURBO
            e.ecx &= ~ECX_EPB
        elif e.function == LEAF_EXT_FEATURES and e.index == 0:
            e.ecx &= ~ECX_WAITPKG
        elif e.function == LEAF_PMU:
            e.eax = e.ebx = e.ecx = e.edx = 0
        elif e.function == LEAF_EXT_TOPOLOGY:
            e.edx = vcpu_index  # x2APIC id
            if e.index == 0:
                e.eax = _bits_for(threads_per_core)
                e.ebx = threads_per_core
                e.ecx = (LEVEL_TYPE_SMT << 8) | e.index
            elif e.index == 1:
                e.eax = _bits_for(vcpu_count)
                e.ebx = vcpu_count
                e.ecx = (LEVEL_TYPE_CORE << 8) | e.index
            else:
                e.eax = e.ebx = 0
                e.ecx = e.index
        elif e.function == LEAF_AMD_SIZE:
            e.ecx = (e.ecx & ~0xF0FF) | (_bits_for(vcpu_count) << 12) | (vcpu_count - 1)
    return out


def find(entries: list[kvm_cpuid_entry2], function: int, index: int = 0) -> kvm_cpuid_entry2 | None:
    for e in entries:
        if e.function == function and e.index == index:
            return e
    return None


# --- kvm-pvm hosts: hide what the guest would see natively but KVM does not support -----------------
# Linux feature words (arch/x86/include/asm/cpufeatures.h): word -> (leaf, subleaf, register).
LINUX_FEATURE_WORDS: dict[int, tuple[int, int, str]] = {
    0: (0x1, 0, "edx"),
    1: (0x8000_0001, 0, "edx"),
    4: (0x1, 0, "ecx"),
    6: (0x8000_0001, 0, "ecx"),
    9: (0x7, 0, "ebx"),
    16: (0x7, 0, "ecx"),
    18: (0x7, 0, "edx"),
}
X86_FEATURE_ERMS = 9 * 32 + 9
X86_FEATURE_FSRM = 18 * 32 + 4
# Hiding these makes memmove use a flag-dependent loop that kvm-pvm's emulator corrupts
# (python-kvm-notes item 14); `rep movsb` is emulated correctly.
KEEP_VISIBLE = frozenset({X86_FEATURE_ERMS, X86_FEATURE_FSRM})
PVM_FIXED_ARGS = "noxsave nopv no-kvmclock"

RawCpuid = Callable[[int, int], tuple[int, int, int, int]]
_REG_INDEX = {"eax": 0, "ebx": 1, "ecx": 2, "edx": 3}


def hidden_feature_bits(supported: list[kvm_cpuid_entry2], raw: RawCpuid) -> list[int]:
    """Linux feature bit numbers the host CPU has but KVM does not offer (minus KEEP_VISIBLE)."""
    bits: list[int] = []
    for word, (leaf, subleaf, reg) in sorted(LINUX_FEATURE_WORDS.items()):
        entry = find(supported, leaf, subleaf)
        offered = getattr(entry, reg) if entry is not None else 0
        host = raw(leaf, subleaf)[_REG_INDEX[reg]]
        extra = host & ~offered & 0xFFFF_FFFF
        bits.extend(word * 32 + b for b in range(32) if extra >> b & 1 and word * 32 + b not in KEEP_VISIBLE)
    return bits


def pvm_cmdline_additions(supported: list[kvm_cpuid_entry2], raw: RawCpuid | None = None) -> str:
    """Guest command-line words for a stock kernel on kvm-pvm (python-kvm-notes items 10-14a).

    ``raw`` reads host CPUID (default: :func:`sparkler.host.cpuid_raw.cpuid`); tests pass a fake.
    """
    if raw is None:
        from sparkler.host.cpuid_raw import cpuid as raw
    bits = hidden_feature_bits(supported, raw)
    words = [f"clearcpuid={','.join(str(b) for b in bits)}"] if bits else []
    return " ".join([*words, PVM_FIXED_ARGS])
