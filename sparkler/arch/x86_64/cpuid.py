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


VENDOR_INTEL = b"GenuineIntel"
VENDOR_AMD = b"AuthenticAMD"
KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1  # kernel spelling

# Intel
INTEL_LEAF_CACHE = 0x4
INTEL_LEAF_V2_TOPOLOGY = 0x1F
EBX_FDP_EXCPTN_ONLY = 1 << 6
EBX_ZERO_FCS_FDS = 1 << 13
# AMD
AMD_EDX_ARCH_CAPABILITIES = 1 << 29  # leaf 7 EDX: no IA32_ARCH_CAPABILITIES MSR is offered
LEAF_AMD_EXT_FEATURES = 0x8000_0001
AMD_ECX_TOPOEXT = 1 << 22
LEAF_AMD_CACHE_TOPOLOGY = 0x8000_001D
LEAF_AMD_EXT_APIC_ID = 0x8000_001E


def vendor(entries: list[kvm_cpuid_entry2]) -> bytes:
    leaf0 = find(entries, 0)
    if leaf0 is None:
        return b""
    return b"".join(v.to_bytes(4, "little") for v in (leaf0.ebx, leaf0.edx, leaf0.ecx))


def _ensure_subleaves(out: list[kvm_cpuid_entry2], function: int, count: int) -> None:
    """Make subleaves 0..count-1 of ``function`` exist (inserted after the last existing one)."""
    positions = [i for i, e in enumerate(out) if e.function == function]
    if not positions:
        return
    insert_at = positions[-1] + 1
    for sub in range(count):
        if find(out, function, sub) is None:
            out.insert(insert_at, kvm_cpuid_entry2(function=function, index=sub, flags=KVM_CPUID_FLAG_SIGNIFCANT_INDEX))
            insert_at += 1
    for e in out:
        if e.function == function:
            e.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX


def _topology_level(e: kvm_cpuid_entry2, vcpu_index: int, vcpu_count: int, threads_per_core: int) -> None:
    """Leaf 0xb / 0x1f subleaf: level 0 = SMT, level 1 = core (whole package), others invalid."""
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


def normalize(
    entries: list[kvm_cpuid_entry2], vcpu_index: int, vcpu_count: int, smt: bool = False
) -> list[kvm_cpuid_entry2]:
    """The CPUID table vCPU ``vcpu_index`` of ``vcpu_count`` boots with (a new list).

    Common part for every vendor, then the Intel or AMD specific leaves (catalog section 4.8).
    Brand strings are passed through.
    """
    out = _copy(entries)
    threads_per_core = 2 if smt and vcpu_count > 1 else 1
    cores = max(1, vcpu_count // threads_per_core)
    _ensure_subleaves(out, LEAF_EXT_TOPOLOGY, 2)
    kind = vendor(out)
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
        elif e.function == LEAF_EXT_TOPOLOGY:
            _topology_level(e, vcpu_index, vcpu_count, threads_per_core)
    if kind == VENDOR_INTEL:
        _intel(out, vcpu_index, vcpu_count, threads_per_core, cores)
    elif kind == VENDOR_AMD:
        _amd(out, vcpu_index, vcpu_count, threads_per_core, cores)
    else:  # unknown vendor: the vendor-neutral safety edits only
        for e in out:
            if e.function == LEAF_EXT_FEATURES and e.index == 0:
                e.ecx &= ~ECX_WAITPKG
    return out


def _intel(out: list[kvm_cpuid_entry2], vcpu_index: int, vcpu_count: int, threads_per_core: int, cores: int) -> None:
    for e in out:
        if e.function == INTEL_LEAF_CACHE and e.eax & 0x1F:  # a valid cache descriptor
            level = (e.eax >> 5) & 0x7
            sharing = threads_per_core if level <= 2 else vcpu_count
            e.eax = (e.eax & 0x3FFF) | ((sharing - 1) << 14) | ((cores - 1) << 26)
        elif e.function == LEAF_THERMAL:
            e.eax &= ~EAX_TURBO
            e.ecx &= ~ECX_EPB
        elif e.function == LEAF_EXT_FEATURES and e.index == 0:
            e.ebx |= EBX_FDP_EXCPTN_ONLY | EBX_ZERO_FCS_FDS
            e.ecx &= ~ECX_WAITPKG
        elif e.function == LEAF_PMU:
            e.eax = e.ebx = e.ecx = e.edx = 0
        elif e.function == INTEL_LEAF_V2_TOPOLOGY:
            _topology_level(e, vcpu_index, vcpu_count, threads_per_core)


def _amd(out: list[kvm_cpuid_entry2], vcpu_index: int, vcpu_count: int, threads_per_core: int, cores: int) -> None:
    for e in out:
        if e.function == LEAF_EXT_FEATURES and e.index == 0:
            e.edx &= ~AMD_EDX_ARCH_CAPABILITIES
            e.ecx &= ~ECX_WAITPKG
        elif e.function == LEAF_AMD_EXT_FEATURES:
            e.ecx |= AMD_ECX_TOPOEXT
        elif e.function == LEAF_AMD_SIZE:
            # ECX 15:12 APIC-id size, 7:0 number of threads - 1.
            e.ecx = (e.ecx & ~0xF0FF) | (_bits_for(vcpu_count) << 12) | (vcpu_count - 1)
        elif e.function == LEAF_AMD_CACHE_TOPOLOGY and e.eax & 0x1F:
            level = (e.eax >> 5) & 0x7
            sharing = threads_per_core if level <= 2 else vcpu_count
            e.eax = (e.eax & ~(0xFFF << 14)) | ((sharing - 1) << 14)
        elif e.function == LEAF_AMD_EXT_APIC_ID:
            e.eax = vcpu_index  # extended APIC id
            e.ebx = ((threads_per_core - 1) << 8) | (vcpu_index // threads_per_core)  # threads/core, core id
            e.ecx = 0  # one node, node id 0


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
