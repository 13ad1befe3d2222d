"""Real KVM: tiny guests in real mode and long mode, MMIO round trips, kicking a spinning vCPU.

Guests are a few bytes each: CPL0 code runs in KVM's emulator on kvm-pvm hosts (about 1 us per
instruction). No in-kernel irqchip in the real-mode VMs, so ``hlt`` exits to userspace.
"""

from __future__ import annotations

import os
import signal
import struct
import threading
from collections.abc import Iterator

import pytest

from sparkler.arch.x86_64 import layout
from sparkler.arch.x86_64.cpuid import normalize
from sparkler.arch.x86_64.interrupts import APIC_LVT0, APIC_LVT1, set_lint
from sparkler.arch.x86_64.msr import boot_msr_entries
from sparkler.arch.x86_64.regs import setup_fpu, setup_regs, setup_sregs
from sparkler.errors import KvmError
from sparkler.kvm import exits
from sparkler.kvm.system import REQUIRED_CAPS, Kvm, host_kind
from sparkler.kvm.vcpu import VcpuFd
from sparkler.kvm.vm import VmFd
from sparkler.memory import GuestMemory

pytestmark = pytest.mark.skipif(
    not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="/dev/kvm is absent or not accessible on this host"
)

CODE_ADDR = 0x1000
MMIO_SEGMENT = 0x9000  # real-mode segment whose range (0x90000..) has no memory slot


@pytest.fixture
def kvm() -> Iterator[Kvm]:
    k = Kvm()
    yield k
    k.close()


def _vm(kvm: Kvm, size: int) -> tuple[VmFd, GuestMemory]:
    vm = kvm.create_vm()
    memory = GuestMemory.create([(0, size)])
    for slot, region in enumerate(memory.regions):
        vm.set_user_memory_region(slot, region.gpa, region.size, region.host_addr)
    return vm, memory


def _real_mode(vcpu: VcpuFd, ip: int) -> None:
    sregs = vcpu.get_sregs()
    sregs.cs.base = 0
    sregs.cs.selector = 0
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rip = ip
    regs.rflags = 0x2
    vcpu.set_regs(regs)


def test_real_mode_out_then_hlt(kvm: Kvm) -> None:
    vm, memory = _vm(kvm, 0x80000)
    try:
        # mov al, 0x41; mov dx, 0x3f8; out dx, al; mov al, 0xfe; out 0x64, al; hlt
        memory.write(CODE_ADDR, bytes.fromhex("b041" "baf803" "ee" "b0fe" "e664" "f4"))
        vcpu = vm.create_vcpu(0)
        _real_mode(vcpu, CODE_ADDR)
        assert vcpu.run() == exits.IoOut(port=0x3F8, size=1, count=1, data=b"A")
        assert vcpu.run() == exits.IoOut(port=0x64, size=1, count=1, data=b"\xfe")
        assert vcpu.run() == exits.Hlt()
        vcpu.close()
    finally:
        vm.close()
        memory.close()


def test_real_mode_io_in_and_mmio_round_trip(kvm: Kvm) -> None:
    vm, memory = _vm(kvm, 0x80000)
    try:
        code = bytes.fromhex(
            "b80090"  # mov ax, 0x9000
            "8ed8"  # mov ds, ax
            "c70610003412"  # mov word [0x10], 0x1234     -> MmioWrite(0x90010)
            "a12000"  # mov ax, [0x20]                    -> MmioRead(0x90020, 2 bytes)
            "baf803"  # mov dx, 0x3f8
            "ef"  # out dx, ax                            -> IoOut(data = what we filled)
            "ec"  # in al, dx                             -> IoIn(size 1)
            "ee"  # out dx, al                            -> IoOut(the byte we supplied)
            "f4"  # hlt
        )
        memory.write(CODE_ADDR, code)
        vcpu = vm.create_vcpu(0)
        _real_mode(vcpu, CODE_ADDR)
        assert vcpu.run() == exits.MmioWrite(addr=MMIO_SEGMENT * 16 + 0x10, data=b"\x34\x12")
        read = vcpu.run()
        assert isinstance(read, exits.MmioRead)
        assert read.addr == MMIO_SEGMENT * 16 + 0x20 and len(read.buf) == 2
        read.buf[:] = b"\xcd\xab"
        assert vcpu.run() == exits.IoOut(port=0x3F8, size=2, count=1, data=b"\xcd\xab")
        io_in = vcpu.run()
        assert isinstance(io_in, exits.IoIn) and (io_in.port, io_in.size, io_in.count) == (0x3F8, 1, 1)
        io_in.buf[:] = b"\x5a"
        assert vcpu.run() == exits.IoOut(port=0x3F8, size=1, count=1, data=b"\x5a")
        assert vcpu.run() == exits.Hlt()
        del read, io_in
        vcpu.close()
    finally:
        vm.close()
        memory.close()


def test_rep_outsb_reports_count(kvm: Kvm) -> None:
    vm, memory = _vm(kvm, 0x80000)
    try:
        memory.write(0x2000, b"hello")
        # mov si, 0x2000; mov cx, 5; mov dx, 0x3f8; rep outsb; hlt
        memory.write(CODE_ADDR, bytes.fromhex("be0020" "b90500" "baf803" "f36e" "f4"))
        vcpu = vm.create_vcpu(0)
        _real_mode(vcpu, CODE_ADDR)
        out = b""
        while True:
            exit_ = vcpu.run()
            if isinstance(exit_, exits.Hlt):
                break
            assert isinstance(exit_, exits.IoOut) and exit_.port == 0x3F8 and exit_.size == 1
            assert len(exit_.data) == exit_.count
            out += exit_.data
        assert out == b"hello"
        vcpu.close()
    finally:
        vm.close()
        memory.close()


def test_long_mode_boot_state(kvm: Kvm) -> None:
    """setup_regs/sregs/fpu + boot MSRs + CPUID + LINT: a 64-bit blob at 1 MiB runs and reports RSI."""
    vm, memory = _vm(kvm, 2 * layout.MIB)
    try:
        vm.set_tss_address(layout.KVM_TSS_ADDR)  # >= 2**31: goes through the unsigned ctypes path
        vm.set_identity_map_address(layout.KVM_IDENTITY_MAP_ADDR)
        vm.create_irqchip()
        code = bytes.fromhex(
            "b878563412"  # mov eax, 0x12345678
            "66baf803"  # mov dx, 0x3f8
            "ef"  # out dx, eax
            "89f0"  # mov eax, esi   (boot_params pointer)
            "ef"  # out dx, eax
            "4889e0"  # mov rax, rsp
            "ef"  # out dx, eax
            "ebfe"  # jmp $
        )
        memory.write(layout.HIMEM_START, code)
        vcpu = vm.create_vcpu(0)
        vcpu.set_cpuid2(normalize(kvm.supported_cpuid(), 0, 1, False))
        vcpu.set_msrs(boot_msr_entries())
        setup_regs(vcpu, layout.HIMEM_START)
        setup_sregs(memory, vcpu)
        setup_fpu(vcpu)
        set_lint(vcpu)
        lapic = bytes(vcpu.get_lapic())
        assert (struct.unpack_from("<I", lapic, APIC_LVT0)[0] >> 8) & 7 == 7  # ExtINT
        assert (struct.unpack_from("<I", lapic, APIC_LVT1)[0] >> 8) & 7 == 4  # NMI
        sregs = vcpu.get_sregs()
        assert sregs.cs.l == 1 and sregs.cr3 == layout.PML4_START
        u32 = struct.Struct("<I")
        assert vcpu.run() == exits.IoOut(0x3F8, 4, 1, u32.pack(0x12345678))
        assert vcpu.run() == exits.IoOut(0x3F8, 4, 1, u32.pack(layout.ZERO_PAGE_START))
        assert vcpu.run() == exits.IoOut(0x3F8, 4, 1, u32.pack(layout.BOOT_STACK_POINTER))
        assert dict(vcpu.get_msrs([0x1A0, 0x2FF])) == {0x1A0: 1, 0x2FF: 0x806}
        vcpu.close()
    finally:
        vm.close()
        memory.close()


def test_kick_spinning_vcpu(kvm: Kvm) -> None:
    vm, memory = _vm(kvm, 0x80000)
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    try:
        memory.write(CODE_ADDR, b"\xeb\xfe")  # jmp $
        vcpu = vm.create_vcpu(0)
        _real_mode(vcpu, CODE_ADDR)
        results: list[object] = []
        entered = threading.Event()

        def spin() -> None:
            entered.set()
            results.append(vcpu.run())

        thread = threading.Thread(target=spin, name="test-vcpu")
        thread.start()
        entered.wait(5)
        thread.join(0.2)
        assert thread.is_alive(), f"guest left its loop: {results}"
        vcpu.set_immediate_exit(True)
        assert thread.ident is not None
        signal.pthread_kill(thread.ident, signal.SIGUSR1)
        thread.join(10)
        assert not thread.is_alive()
        assert results == [exits.Interrupted()]
        vcpu.set_immediate_exit(False)
        vcpu.close()
    finally:
        signal.signal(signal.SIGUSR1, previous)
        vm.close()
        memory.close()


def test_require_names_every_missing_capability(kvm: Kvm) -> None:
    kvm.require(REQUIRED_CAPS)
    with pytest.raises(KvmError) as info:
        kvm.require(["KVM_CAP_IRQFD", 0x7FFF_0001, 0x7FFF_0002])
    message = str(info.value)
    assert "KVM_CAP_IRQFD" not in message
    assert str(0x7FFF_0001) in message and str(0x7FFF_0002) in message


def test_api_version_mmap_size_and_cpuid(kvm: Kvm) -> None:
    assert kvm.api_version() == 12
    assert kvm.vcpu_mmap_size() >= 4096
    assert any(e.function == 0 for e in kvm.supported_cpuid())
    assert host_kind() in ("pvm", "hardware")


def test_errors_name_the_ioctl(kvm: Kvm) -> None:
    vm = kvm.create_vm()
    try:
        with pytest.raises(KvmError, match="^KVM_SET_USER_MEMORY_REGION failed: "):
            vm.set_user_memory_region(0, 0x1001, 4096, 0)  # unaligned gpa -> EINVAL
    finally:
        vm.close()
