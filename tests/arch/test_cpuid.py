"""CPUID normalisation and the kvm-pvm clearcpuid list, on synthetic tables (no KVM)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparkler.arch.x86_64 import cpuid
from sparkler.kvm.uapi import kvm_cpuid_entry2


def _e(function: int, index: int = 0, eax: int = 0, ebx: int = 0, ecx: int = 0, edx: int = 0) -> kvm_cpuid_entry2:
    return kvm_cpuid_entry2(function=function, index=index, eax=eax, ebx=ebx, ecx=ecx, edx=edx)


def _table() -> list[kvm_cpuid_entry2]:
    return [
        _e(0x0, eax=0xD),
        _e(0x1, eax=0xA10F11, ebx=0xFF_12_34_56, ecx=cpuid.ECX_PDCM | 1, edx=cpuid.EDX_HTT | 1),
        _e(0x6, eax=0x7, ecx=0xF),
        _e(0x7, 0, ebx=1 << 9, ecx=cpuid.ECX_WAITPKG | 1, edx=1 << 4),
        _e(0xA, eax=0x7300403),
        _e(0xB, 0), _e(0xB, 1), _e(0xB, 2),
        _e(0x8000_0008, ecx=0xF0FF),
    ]


def test_normalize_input_table_not_modified() -> None:
    table = _table()
    before = [bytes(e) for e in table]
    cpuid.normalize(table, 1, 2, False)
    assert [bytes(e) for e in table] == before


def test_normalize_leaf1_apic_id_counts_and_feature_bits() -> None:
    out = cpuid.normalize(_table(), 3, 4, False)
    leaf = cpuid.find(out, 1)
    assert leaf is not None
    assert leaf.ebx >> 24 == 3 and (leaf.ebx >> 16) & 0xFF == 4 and (leaf.ebx >> 8) & 0xFF == 8
    assert leaf.ebx & 0xFF == 0x56  # brand index kept
    assert not leaf.ecx & cpuid.ECX_PDCM
    assert leaf.ecx & cpuid.ECX_TSC_DEADLINE and leaf.ecx & cpuid.ECX_HYPERVISOR and leaf.ecx & 1
    assert leaf.edx & cpuid.EDX_HTT
    single = cpuid.find(cpuid.normalize(_table(), 0, 1, False), 1)
    assert single is not None and not single.edx & cpuid.EDX_HTT


def test_normalize_leaf_0xb_smt_and_core_levels() -> None:
    out = cpuid.normalize(_table(), 1, 2, True)
    smt, core, invalid = (cpuid.find(out, 0xB, i) for i in range(3))
    assert smt is not None and core is not None and invalid is not None
    assert (smt.eax, smt.ebx, smt.ecx >> 8, smt.edx) == (1, 2, 1, 1)
    assert (core.eax, core.ebx, core.ecx >> 8 & 0xFF, core.ecx & 0xFF, core.edx) == (1, 2, 2, 1, 1)
    assert (invalid.eax, invalid.ebx, invalid.ecx >> 8) == (0, 0, 0)
    no_smt = cpuid.find(cpuid.normalize(_table(), 0, 2, False), 0xB, 0)
    assert no_smt is not None and (no_smt.eax, no_smt.ebx) == (0, 1)


def _with_vendor(name: bytes) -> list[kvm_cpuid_entry2]:
    table = _table()
    ebx, edx, ecx = (int.from_bytes(name[i : i + 4], "little") for i in (0, 4, 8))
    table[0] = _e(0x0, eax=0xD, ebx=ebx, ecx=ecx, edx=edx)
    return table


def test_vendor_leaf0_string_detected() -> None:
    assert cpuid.vendor(_with_vendor(b"AuthenticAMD")) == b"AuthenticAMD"
    assert cpuid.vendor(_table()) == b"\0" * 12


def test_normalize_intel_cache_pmu_thermal_leaves_adjusted() -> None:
    table = _with_vendor(b"GenuineIntel") + [_e(0x4, 0, eax=0x121), _e(0x4, 3, eax=0x163), _e(0x1F, 0), _e(0x1F, 1)]
    out = cpuid.normalize(table, 0, 4, False)
    pmu, thermal, ext7 = (cpuid.find(out, f) for f in (0xA, 0x6, 0x7))
    assert pmu is not None and (pmu.eax, pmu.ebx, pmu.ecx, pmu.edx) == (0, 0, 0, 0)
    assert thermal is not None and not thermal.eax & cpuid.EAX_TURBO and not thermal.ecx & cpuid.ECX_EPB
    assert ext7 is not None and ext7.ecx == 1
    assert ext7.ebx & cpuid.EBX_FDP_EXCPTN_ONLY and ext7.ebx & cpuid.EBX_ZERO_FCS_FDS
    l1, l3 = cpuid.find(out, 0x4, 0), cpuid.find(out, 0x4, 3)
    assert l1 is not None and l3 is not None
    assert (l1.eax >> 14) & 0xFFF == 0 and l1.eax >> 26 == 3 and (l3.eax >> 14) & 0xFFF == 3
    v2 = cpuid.find(out, 0x1F, 1)
    assert v2 is not None and v2.ebx == 4


def test_normalize_amd_topology_leaves_adjusted() -> None:
    table = _with_vendor(b"AuthenticAMD") + [
        _e(0x8000_0001), _e(0x8000_001D, 0, eax=0x121), _e(0x8000_001D, 3, eax=0x4163), _e(0x8000_001E)
    ]
    table[3].edx |= cpuid.AMD_EDX_ARCH_CAPABILITIES
    out = cpuid.normalize(table, 3, 4, True)
    ext7, amd, ext1, ext_apic = (cpuid.find(out, f) for f in (0x7, 0x8000_0008, 0x8000_0001, 0x8000_001E))
    assert ext7 is not None and not ext7.edx & cpuid.AMD_EDX_ARCH_CAPABILITIES and ext7.ecx == 1
    assert amd is not None and amd.ecx & 0xFF == 3 and (amd.ecx >> 12) & 0xF == 2
    assert ext1 is not None and ext1.ecx & cpuid.AMD_ECX_TOPOEXT
    assert ext_apic is not None and (ext_apic.eax, ext_apic.ebx, ext_apic.ecx) == (3, 0x101, 0)
    l1, l3 = cpuid.find(out, 0x8000_001D, 0), cpuid.find(out, 0x8000_001D, 3)
    assert l1 is not None and l3 is not None
    assert (l1.eax >> 14) & 0xFFF == 1 and (l3.eax >> 14) & 0xFFF == 3 and l3.eax & 0x3FFF == 0x163


def test_normalize_leaf_0xb_missing_subleaf_1_inserted() -> None:
    table = [e for e in _table() if not (e.function == 0xB and e.index > 0)]
    out = cpuid.normalize(table, 1, 2, False)
    core = cpuid.find(out, 0xB, 1)
    assert core is not None and core.ebx == 2 and core.edx == 1 and core.flags & 1
    assert [(e.function, e.index) for e in out if e.function == 0xB] == [(0xB, 0), (0xB, 1)]


def test_pvm_cmdline_additions_unsupported_bits_hidden_erms_fsrm_kept() -> None:
    supported = [_e(0x1, ecx=0x1, edx=0xFF), _e(0x7, 0, ebx=0, ecx=0, edx=0)]
    host = {
        (0x1, 0): (0, 0, 0x1 | 1 << 23, 0xFF | 1 << 28),  # POPCNT (4*32+23), HTT (0*32+28)
        (0x7, 0): (0, 1 << 9 | 1 << 5, 0, 1 << 4),  # ERMS (kept), AVX2 (9*32+5), FSRM (kept)
        (0x8000_0001, 0): (0, 0, 0, 0),
    }
    result = cpuid.pvm_cmdline_additions(supported, lambda leaf, sub: host.get((leaf, sub), (0, 0, 0, 0)))
    assert result == "clearcpuid=28,151,293 noxsave nopv no-kvmclock"
    nothing = cpuid.pvm_cmdline_additions(supported, lambda leaf, sub: (0, 0, 0, 0))
    assert nothing == "noxsave nopv no-kvmclock"


def _vendors() -> list[list[kvm_cpuid_entry2]]:
    return [_table(), _with_vendor(b"GenuineIntel"), _with_vendor(b"AuthenticAMD")]


@pytest.mark.parametrize("table", _vendors(), ids=["unknown", "intel", "amd"])
def test_normalize_every_vendor_input_not_modified_output_fresh(table: list[kvm_cpuid_entry2]) -> None:
    table = [e for e in table if not (e.function == 0xB and e.index > 0)]  # forces an insertion
    before = [bytes(e) for e in table]
    out = cpuid.normalize(table, 2, 4, True)
    assert [bytes(e) for e in table] == before and len(table) == len(before)
    assert not any(o is e for o in out for e in table)


@given(count=st.integers(1, 64), data=st.data(), smt=st.booleans())
def test_normalize_any_vcpu_apic_id_in_leaf1_ebx_and_every_leaf_0xb_edx(count: int, data, smt: bool) -> None:
    index = data.draw(st.integers(0, count - 1))
    out = cpuid.normalize(_with_vendor(b"GenuineIntel"), index, count, smt)
    leaf1 = cpuid.find(out, 1)
    assert leaf1 is not None and leaf1.ebx >> 24 == index
    topo = [e for e in out if e.function == 0xB]
    assert len(topo) >= 2 and all(e.edx == index for e in topo)
    core = cpuid.find(out, 0xB, 1)
    assert core is not None and core.ebx == count and (1 << core.eax) >= count  # APIC-id bits cover all


@pytest.mark.parametrize(("count", "htt"), [(1, False), (2, True), (8, True)])
def test_normalize_htt_only_when_more_than_one_vcpu(count: int, htt: bool) -> None:
    for edx_in in (0, cpuid.EDX_HTT):
        table = _table()
        table[1].edx = edx_in
        leaf = cpuid.find(cpuid.normalize(table, 0, count), 1)
        assert leaf is not None and bool(leaf.edx & cpuid.EDX_HTT) is htt


def test_normalize_leaf1_hypervisor_tsc_deadline_set_pdcm_cleared_other_bits_kept() -> None:
    table = _table()
    table[1].ecx = cpuid.ECX_PDCM | 0x0000_0201  # SSE3 + SSSE3
    leaf = cpuid.find(cpuid.normalize(table, 0, 1), 1)
    assert leaf is not None
    assert leaf.ecx == 0x0000_0201 | cpuid.ECX_HYPERVISOR | cpuid.ECX_TSC_DEADLINE
    assert leaf.eax == 0xA10F11  # family/model/stepping passed through


def test_normalize_per_vcpu_tables_differ_only_in_apic_ids() -> None:
    a, b = (cpuid.normalize(_with_vendor(b"GenuineIntel"), i, 2) for i in (0, 1))
    diffs = {(x.function, x.index) for x, y in zip(a, b, strict=True) if bytes(x) != bytes(y)}
    assert diffs == {(0x1, 0), (0xB, 0), (0xB, 1), (0xB, 2)}


def test_normalize_host_supported_cpuid_apic_ids_per_vcpu() -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("host limitation: /dev/kvm is not usable")
    from sparkler.kvm.system import Kvm

    kvm = Kvm()
    try:
        supported = kvm.supported_cpuid()
    finally:
        kvm.close()
    before = [bytes(e) for e in supported]
    for index in range(3):
        out = cpuid.normalize(supported, index, 3)
        leaf1 = cpuid.find(out, 1)
        assert leaf1 is not None and leaf1.ebx >> 24 == index and leaf1.edx & cpuid.EDX_HTT
        assert leaf1.ecx & cpuid.ECX_HYPERVISOR and leaf1.ecx & cpuid.ECX_TSC_DEADLINE
        assert not leaf1.ecx & cpuid.ECX_PDCM
        if cpuid.find(supported, 0xB) is not None:
            assert all(e.edx == index for e in out if e.function == 0xB)
    assert [bytes(e) for e in supported] == before
