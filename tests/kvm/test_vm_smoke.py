"""The KVM layer against the real /dev/kvm, with tiny hand-assembled guests.

Guest code at CPL0 is emulated on PVM hosts (about 1 us per instruction), so every blob is a
handful of instructions. Each KVM_RUN has a watchdog that kicks the vCPU, so a guest that never
exits fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import signal
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from sparkler.arch.x86_64 import cpuid, interrupts, layout, msr, regs
from sparkler.errors import KvmError, UnsupportedHost
from sparkler.host.eventfd import EventFd
from sparkler.kvm import exits, system, uapi
from sparkler.kvm.system import Kvm
from sparkler.kvm.vcpu import VcpuFd
from sparkler.kvm.vm import VmFd
from sparkler.memory import GuestMemory
from sparkler.vmm.vcpu import KICK_SIGNAL, install_kick_handler
from tests.conftest import require_kvm

CODE = 0x1000  # real-mode code address
RUN_TIMEOUT_S = 20.0


@pytest.fixture(autouse=True)
def _kvm_and_kick_handler() -> None:
    require_kvm()
    install_kick_handler()  # pytest runs tests on the main thread


@dataclass
class Guest:
    kvm: Kvm
    vm: VmFd
    memory: GuestMemory
    vcpu: VcpuFd


@contextmanager
def guest(ram: list[tuple[int, int]], *, irqchip: bool = False) -> Iterator[Guest]:
    kvm = Kvm()
    vm = kvm.create_vm()
    memory = GuestMemory.create(ram)
    vcpu = None
    try:
        vm.set_tss_address(layout.KVM_TSS_ADDR)  # >= 2**31: the ctypes ioctl path (pitfall 1)
        vm.set_identity_map_address(layout.KVM_IDENTITY_MAP_ADDR)  # only valid before the first vCPU
        for slot, region in enumerate(memory.regions):
            vm.set_user_memory_region(slot, region.gpa, region.size, region.host_addr)
        if irqchip:
            vm.create_irqchip()
        vcpu = vm.create_vcpu(0)
        yield Guest(kvm, vm, memory, vcpu)
    finally:
        if vcpu is not None:
            vcpu.close()
        vm.close()
        memory.close()
        kvm.close()


def real_mode(g: Guest, code: bytes) -> None:
    """Load ``code`` at 0x1000 and point the vCPU at it in real mode (CS base 0)."""
    g.memory.write(CODE, code)
    sregs = g.vcpu.get_sregs()
    sregs.cs.base = 0
    sregs.cs.selector = 0
    g.vcpu.set_sregs(sregs)
    r = uapi.kvm_regs()
    r.rip = CODE
    r.rflags = 2
    g.vcpu.set_regs(r)


def run(vcpu: VcpuFd, timeout: float = RUN_TIMEOUT_S) -> exits.Exit:
    """One KVM_RUN on this thread; a watchdog kicks it after ``timeout`` seconds."""
    tid = threading.get_ident()
    done = threading.Event()

    def kick() -> None:
        if not done.is_set():
            vcpu.set_immediate_exit(True)
            signal.pthread_kill(tid, KICK_SIGNAL)

    timer = threading.Timer(timeout, kick)
    timer.start()
    try:
        exit_ = vcpu.run()
    finally:
        done.set()
        timer.cancel()
    assert not isinstance(exit_, exits.Interrupted), f"guest did not exit within {timeout}s (watchdog kick)"
    return exit_


# --- real mode: port I/O -------------------------------------------------------------------------
def test_vcpu_run_real_mode_out_byte_ioout_then_hlt() -> None:
    # mov dx,0x3f8; mov al,0x41; out dx,al; hlt
    with guest([(0, 0x10000)]) as g:
        real_mode(g, bytes.fromhex("baf803" "b041" "ee" "f4"))
        assert run(g.vcpu) == exits.IoOut(port=0x3F8, size=1, count=1, data=b"A")
        assert run(g.vcpu) == exits.Hlt()
        assert g.vcpu.get_regs().rip == CODE + 7


def test_vcpu_run_real_mode_in_buffer_filled_guest_echoes_it() -> None:
    # mov dx,0x60; in al,dx; inc al; mov dx,0x3f8; out dx,al;
    # mov dx,0x71; in ax,dx; mov dx,0x3f8; out dx,ax; hlt
    code = bytes.fromhex("ba6000" "ec" "fec0" "baf803" "ee" "ba7100" "ed" "baf803" "ef" "f4")
    with guest([(0, 0x10000)]) as g:
        real_mode(g, code)
        exit_ = run(g.vcpu)
        assert isinstance(exit_, exits.IoIn) and (exit_.port, exit_.size, exit_.count) == (0x60, 1, 1)
        exit_.buf[:] = b"\x41"
        assert run(g.vcpu) == exits.IoOut(0x3F8, 1, 1, b"\x42")  # our byte, incremented by the guest
        exit_ = run(g.vcpu)
        assert isinstance(exit_, exits.IoIn) and (exit_.port, exit_.size) == (0x71, 2)
        exit_.buf[:] = b"\xcd\xab"
        assert run(g.vcpu) == exits.IoOut(0x3F8, 2, 1, b"\xcd\xab")
        assert run(g.vcpu) == exits.Hlt()


def test_vcpu_run_real_mode_rep_outsb_ioout_count_matches_data() -> None:
    # mov si,0x2000; mov cx,5; mov dx,0x3f8; rep outsb; hlt
    with guest([(0, 0x10000)]) as g:
        g.memory.write(0x2000, b"hello")
        real_mode(g, bytes.fromhex("be0020" "b90500" "baf803" "f36e" "f4"))
        out = b""
        for _ in range(10):  # KVM may hand the string over in one exit or in several
            exit_ = run(g.vcpu)
            if isinstance(exit_, exits.Hlt):
                break
            assert isinstance(exit_, exits.IoOut) and (exit_.port, exit_.size) == (0x3F8, 1), exit_
            assert len(exit_.data) == exit_.count
            out += exit_.data
        assert out == b"hello"


def test_vcpu_run_real_mode_rep_insb_ioin_count_gt_1_buffer_reaches_guest() -> None:
    # mov di,0x3000; mov cx,4; mov dx,0x60; rep insb; mov si,0x3000; mov dx,0x3f8; mov cx,4; rep outsb; hlt
    code = bytes.fromhex("bf0030" "b90400" "ba6000" "f36c" "be0030" "baf803" "b90400" "f36e" "f4")
    with guest([(0, 0x10000)]) as g:
        real_mode(g, code)
        supplied = b"wxyz"
        given = 0
        exit_ = run(g.vcpu)
        while isinstance(exit_, exits.IoIn):  # one exit for the whole string, or several
            assert exit_.port == 0x60 and exit_.size == 1 and len(exit_.buf) == exit_.count
            exit_.buf[:] = supplied[given : given + exit_.count]
            given += exit_.count
            exit_ = run(g.vcpu)
        assert given == 4
        assert bytes(g.memory.read(0x3000, 4)) == supplied
        echoed = b""
        while isinstance(exit_, exits.IoOut):
            echoed += exit_.data
            exit_ = run(g.vcpu)
        assert echoed == supplied and exit_ == exits.Hlt()


def test_vm_ioeventfd_pio_datamatch_signalled_without_exit_other_value_exits() -> None:
    # mov dx,0x520; mov ax,0x1234; out dx,ax; mov ax,0x5678; out dx,ax; hlt
    code = bytes.fromhex("ba2005" "b83412" "ef" "b87856" "ef" "f4")
    with guest([(0, 0x10000)]) as g:
        efd = EventFd()
        try:
            g.vm.register_ioeventfd(efd, 0x520, 2, datamatch=0x1234, pio=True)
            real_mode(g, code)
            assert run(g.vcpu) == exits.IoOut(0x520, 2, 1, b"\x78\x56")  # only the non-matching write
            assert efd.read() == 1
        finally:
            efd.close()


# --- real mode: MMIO to an address with no memory slot ---------------------------------------------
def test_vcpu_run_real_mode_unmapped_address_mmio_write_and_read() -> None:
    # mov ax,0x2000; mov ds,ax; mov word [0x10],0xbeef; mov ax,[0x20]; mov dx,0x3f8; out dx,ax;
    # mov eax,[0x24]; out dx,eax; hlt       (RAM is 64 KiB, so 0x20000 has no slot)
    code = bytes.fromhex("b80020" "8ed8" "c7061000efbe" "a12000" "baf803" "ef" "66a12400" "66ef" "f4")
    with guest([(0, 0x10000)]) as g:
        real_mode(g, code)
        assert run(g.vcpu) == exits.MmioWrite(addr=0x20010, data=b"\xef\xbe")
        exit_ = run(g.vcpu)
        assert isinstance(exit_, exits.MmioRead) and exit_.addr == 0x20020 and len(exit_.buf) == 2
        exit_.buf[:] = b"\x34\x12"
        assert run(g.vcpu) == exits.IoOut(0x3F8, 2, 1, b"\x34\x12")
        exit_ = run(g.vcpu)
        assert isinstance(exit_, exits.MmioRead) and exit_.addr == 0x20024 and len(exit_.buf) == 4
        exit_.buf[:] = b"\x01\x02\x03\x04"
        assert run(g.vcpu) == exits.IoOut(0x3F8, 4, 1, b"\x01\x02\x03\x04")
        assert run(g.vcpu) == exits.Hlt()


# --- long mode: the boot state regs/msr/cpuid/interrupts build -----------------------------------------
LONG_MODE_BLOB = bytes.fromhex(
    "66baf803"  # mov dx,0x3f8
    "4889f0"  # mov rax,rsi
    "ef"  # out dx,eax              -> RSI (boot_params) low 32 bits
    "48b88877665544332211"  # mov rax,0x1122334455667788 (imm64: only decodes so in 64-bit mode)
    "48c1e820"  # shr rax,32
    "ef"  # out dx,eax              -> 0x11223344
    "48c7c300000030"  # mov rbx,0x30000000 (below 1 GiB, no memory slot)
    "488903"  # mov [rbx],rax       -> 8-byte MMIO write
    "488b4b08"  # mov rcx,[rbx+8]   -> 8-byte MMIO read
    "4889c8"  # mov rax,rcx
    "48c1e820"  # shr rax,32
    "ef"  # out dx,eax              -> high half of what we supplied
    "66ba8000"  # mov dx,0x80
    "ef"  # out dx,eax              -> done (no hlt: with an in-kernel LAPIC hlt does not exit)
)


def test_long_mode_boot_state_guest_sees_rsi_64bit_mmio_and_lapic_lint() -> None:
    with guest(layout.ram_regions(128 * layout.MIB), irqchip=True) as g:
        g.memory.write(layout.HIMEM_START, LONG_MODE_BLOB)
        g.vcpu.set_cpuid2(cpuid.normalize(g.kvm.supported_cpuid(), 0, 1))
        regs.setup_regs(g.vcpu, layout.HIMEM_START)
        regs.setup_sregs(g.memory, g.vcpu)
        regs.setup_fpu(g.vcpu)
        g.vcpu.set_msrs(msr.boot_msr_entries())
        interrupts.set_lint(g.vcpu)

        lapic = bytes(g.vcpu.get_lapic())
        lvt0, lvt1 = (struct.unpack_from("<I", lapic, off)[0] for off in (0x350, 0x360))
        assert (lvt0 >> 8) & 7 == interrupts.APIC_MODE_EXTINT
        assert (lvt1 >> 8) & 7 == interrupts.APIC_MODE_NMI
        got = dict(g.vcpu.get_msrs([msr.MSR_IA32_MISC_ENABLE, msr.MSR_MTRR_DEF_TYPE]))
        assert got[msr.MSR_MTRR_DEF_TYPE] == 0x806
        assert got[msr.MSR_IA32_MISC_ENABLE] & msr.MISC_ENABLE_FAST_STRING

        assert run(g.vcpu) == exits.IoOut(0x3F8, 4, 1, struct.pack("<I", layout.ZERO_PAGE_START))
        assert run(g.vcpu) == exits.IoOut(0x3F8, 4, 1, struct.pack("<I", 0x11223344))
        assert run(g.vcpu) == exits.MmioWrite(0x3000_0000, struct.pack("<Q", 0x11223344))
        exit_ = run(g.vcpu)
        assert isinstance(exit_, exits.MmioRead) and exit_.addr == 0x3000_0008 and len(exit_.buf) == 8
        exit_.buf[:] = struct.pack("<Q", 0xCAFEF00D_00000000)
        assert run(g.vcpu) == exits.IoOut(0x3F8, 4, 1, struct.pack("<I", 0xCAFEF00D))
        assert run(g.vcpu) == exits.IoOut(0x80, 4, 1, struct.pack("<I", 0xCAFEF00D))

        sregs = g.vcpu.get_sregs()
        assert sregs.efer & regs.EFER_LMA and sregs.cs.l == 1 and sregs.cs.db == 0
        assert g.vcpu.get_regs().rip == layout.HIMEM_START + len(LONG_MODE_BLOB)


def test_vcpu_run_long_mode_int3_pvm_emulation_failure_with_insn_bytes() -> None:
    """INT3 at CPL0: kvm-pvm's emulator gives up (KVM_EXIT_INTERNAL_ERROR with the instruction bytes)."""
    with guest(layout.ram_regions(16 * layout.MIB)) as g:
        g.memory.write(layout.HIMEM_START, bytes.fromhex("90" "cc" "f4"))  # nop; int3; hlt
        regs.setup_regs(g.vcpu, layout.HIMEM_START)
        regs.setup_sregs(g.memory, g.vcpu)
        exit_ = run(g.vcpu)
        if system.host_kind() != "pvm":
            # hardware: #BP through an IDT with no gates -> #GP -> #DF -> triple fault
            assert isinstance(exit_, (exits.Shutdown, exits.InternalError)), exit_
            return
        assert isinstance(exit_, exits.InternalError), exit_
        assert exit_.suberror == uapi.KVM_INTERNAL_ERROR_EMULATION
        assert exit_.insn[:2] == b"\xcc\xf4" and exit_.data[0] & 1
        assert g.vcpu.get_regs().rip == layout.HIMEM_START + 1  # stopped at the int3


# --- kick -----------------------------------------------------------------------------------------------------
def test_vcpu_run_kicked_from_another_thread_returns_interrupted() -> None:
    with guest([(0, 0x10000)]) as g:
        real_mode(g, bytes.fromhex("ebfe"))  # jmp $
        result: list[object] = []
        started = threading.Event()

        def spin() -> None:
            started.set()
            try:
                result.append(g.vcpu.run())
            except BaseException as e:  # noqa: BLE001 - reported by the assertion below
                result.append(e)

        t = threading.Thread(target=spin, name="kick-test-vcpu", daemon=True)
        t.start()
        started.wait(5)
        time.sleep(0.2)  # let it enter KVM_RUN; immediate_exit covers the case where it has not
        assert t.is_alive(), f"jmp $ exited on its own: {result}"
        g.vcpu.set_immediate_exit(True)
        signal.pthread_kill(t.ident, KICK_SIGNAL)
        t.join(10)
        assert not t.is_alive(), "vCPU thread still in KVM_RUN 10 s after the kick"
        assert result == [exits.Interrupted()]
        g.vcpu.set_immediate_exit(False)
        assert bytes(g.vcpu._run[1:2]) == b"\0"  # kvm_run.immediate_exit cleared


def test_vcpu_run_immediate_exit_set_before_run_returns_interrupted_at_once() -> None:
    with guest([(0, 0x10000)]) as g:
        real_mode(g, bytes.fromhex("ebfe"))
        g.vcpu.set_immediate_exit(True)
        start = time.monotonic()
        assert g.vcpu.run() == exits.Interrupted()
        assert time.monotonic() - start < 5


# --- system fd / errors ------------------------------------------------------------------------------------------
def test_kvm_require_bogus_capability_kvmerror_names_it() -> None:
    kvm = Kvm()
    try:
        kvm.require(system.REQUIRED_CAPS)  # Firecracker's set: present on every supported host
        kvm.require(["KVM_CAP_USER_MEMORY", uapi.KVM_CAP_IRQCHIP])
        with pytest.raises(KvmError, match="^Missing KVM capability: capability 2147418113$"):
            kvm.require([uapi.KVM_CAP_USER_MEMORY, 0x7FFF_0001])
        with pytest.raises(KvmError) as info:
            kvm.require(["KVM_CAP_IRQFD", 0x7FFF_0001, 0x7FFF_0002])
        message = str(info.value)
        assert message.startswith("Missing KVM capabilities: ")
        assert str(0x7FFF_0001) in message and str(0x7FFF_0002) in message and "IRQFD" not in message
    finally:
        kvm.close()


def test_kvm_require_unknown_capability_name_kvmerror_names_it() -> None:
    kvm = Kvm()
    try:
        with pytest.raises(KvmError, match="KVM_CAP_NO_SUCH_THING"):
            kvm.require(["KVM_CAP_NO_SUCH_THING"])
    finally:
        kvm.close()


def test_kvm_check_extension_known_caps_positive() -> None:
    kvm = Kvm()
    try:
        assert kvm.api_version() == uapi.KVM_API_VERSION
        assert kvm.check_extension(uapi.KVM_CAP_USER_MEMORY) > 0
        assert kvm.check_extension(0x7FFF_0001) == 0
        assert kvm.vcpu_mmap_size() >= 4096
        leaves = {(e.function, e.index) for e in kvm.supported_cpuid()}
        assert (0, 0) in leaves and (1, 0) in leaves
    finally:
        kvm.close()


def test_kvm_open_missing_device_unsupported_host(tmp_path) -> None:
    with pytest.raises(UnsupportedHost, match="does not exist"):
        Kvm(str(tmp_path / "no-kvm"))


def test_kvm_open_non_kvm_device_unsupported_host_fd_closed() -> None:
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(UnsupportedHost, match="not a KVM device"):
        Kvm("/dev/null")
    assert set(os.listdir("/proc/self/fd")) <= before  # the fd opened for the probe is gone


def _ignore_msrs() -> bool:
    try:
        with open("/sys/module/kvm/parameters/ignore_msrs") as f:
            return f.read().strip() in ("Y", "1")
    except OSError:
        return False


def test_vcpu_set_msrs_invalid_index_kvmerror_names_msr() -> None:
    if _ignore_msrs():
        pytest.skip("host setting: kvm.ignore_msrs=Y makes KVM accept any MSR")
    bogus = 0xC0DE_0000
    with guest([(0, 0x10000)]) as g:
        with pytest.raises(KvmError, match="0xc0de0000"):
            g.vcpu.set_msrs([(msr.MSR_IA32_TSC, 0), (bogus, 1)])
        with pytest.raises(KvmError, match="0xc0de0000"):
            g.vcpu.set_msrs([(bogus, 1)])


def test_vcpu_get_msrs_invalid_index_kvmerror_not_silent_zero() -> None:
    if _ignore_msrs():
        pytest.skip("host setting: kvm.ignore_msrs=Y makes KVM accept any MSR")
    with guest([(0, 0x10000)]) as g:
        g.vcpu.set_msrs([(msr.MSR_IA32_MISC_ENABLE, msr.MISC_ENABLE_FAST_STRING)])
        assert g.vcpu.get_msrs([msr.MSR_IA32_MISC_ENABLE]) == [(msr.MSR_IA32_MISC_ENABLE, 1)]
        with pytest.raises(KvmError, match="0xc0de0000"):
            g.vcpu.get_msrs([msr.MSR_IA32_TSC, 0xC0DE_0000, msr.MSR_IA32_MISC_ENABLE])


def test_vm_ioctl_failure_kvmerror_names_ioctl() -> None:
    with guest([(0, 0x10000)]) as g:
        with pytest.raises(KvmError, match="KVM_SET_USER_MEMORY_REGION"):
            g.vm.set_user_memory_region(0, 0x1001, 0x1000, g.memory.regions[0].host_addr)  # unaligned gpa


# --- host kind ---------------------------------------------------------------------------------------------------
def test_host_kind_pvm_exactly_when_kvm_pvm_module_loaded() -> None:
    expected = "pvm" if os.path.exists("/sys/module/kvm_pvm") else "hardware"
    assert system.host_kind() == expected


def test_host_kind_follows_module_path(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(system, "PVM_MODULE", str(tmp_path / "kvm_pvm"))
    assert system.host_kind() == "hardware"
    (tmp_path / "kvm_pvm").mkdir()
    assert system.host_kind() == "pvm"
