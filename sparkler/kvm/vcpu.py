"""VcpuFd: one virtual CPU (registers, MSRs, CPUID, LAPIC, events) and its ``kvm_run`` page.

``run()`` enters the guest and returns the decoded exit. A KVM_RUN interrupted by a signal (the
vCPU was kicked) returns :class:`exits.Interrupted`; an application processor woken by INIT/SIPI
returns EAGAIN once, surfaced as BlockingIOError for the caller to retry.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os

from sparkler.errors import KvmError
from sparkler.kvm import exits, uapi
from sparkler.kvm._ioctl import ioctl, ioctl_raw

_IMMEDIATE_EXIT_OFFSET = uapi.kvm_run.immediate_exit.offset


class VcpuFd:
    def __init__(self, fd: int, index: int, mmap_size: int) -> None:
        self.fd = fd
        self.index = index
        try:
            self._run_map = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            os.close(fd)
            raise KvmError(f"Cannot map kvm_run of vCPU {index}: {e.strerror}") from e
        self._run = memoryview(self._run_map)

    # --- running -----------------------------------------------------------------------------
    def run(self) -> exits.Exit:
        try:
            ioctl_raw(self.fd, uapi.KVM_RUN, 0)
        except OSError as e:
            if e.errno == errno.EINTR:
                return exits.INTERRUPTED
            if e.errno == errno.EAGAIN:
                raise BlockingIOError(e.errno, e.strerror) from None
            raise KvmError(f"KVM_RUN failed: {e.strerror}") from None
        return exits.decode(self._run)

    def set_immediate_exit(self, value: bool) -> None:
        self._run[_IMMEDIATE_EXIT_OFFSET] = 1 if value else 0

    # --- state ---------------------------------------------------------------------------------
    def _get(self, request: int, struct_type: type[ctypes.Structure]) -> ctypes.Structure:
        value = struct_type()
        ioctl(self.fd, request, value)
        return value

    def get_regs(self) -> uapi.kvm_regs:
        return self._get(uapi.KVM_GET_REGS, uapi.kvm_regs)  # type: ignore[return-value]

    def set_regs(self, regs: uapi.kvm_regs) -> None:
        ioctl(self.fd, uapi.KVM_SET_REGS, regs)

    def get_sregs(self) -> uapi.kvm_sregs:
        return self._get(uapi.KVM_GET_SREGS, uapi.kvm_sregs)  # type: ignore[return-value]

    def set_sregs(self, sregs: uapi.kvm_sregs) -> None:
        ioctl(self.fd, uapi.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> uapi.kvm_fpu:
        return self._get(uapi.KVM_GET_FPU, uapi.kvm_fpu)  # type: ignore[return-value]

    def set_fpu(self, fpu: uapi.kvm_fpu) -> None:
        ioctl(self.fd, uapi.KVM_SET_FPU, fpu)

    def get_lapic(self) -> uapi.kvm_lapic_state:
        return self._get(uapi.KVM_GET_LAPIC, uapi.kvm_lapic_state)  # type: ignore[return-value]

    def set_lapic(self, lapic: uapi.kvm_lapic_state) -> None:
        ioctl(self.fd, uapi.KVM_SET_LAPIC, lapic)

    def get_vcpu_events(self) -> uapi.kvm_vcpu_events:
        return self._get(uapi.KVM_GET_VCPU_EVENTS, uapi.kvm_vcpu_events)  # type: ignore[return-value]

    def set_vcpu_events(self, events: uapi.kvm_vcpu_events) -> None:
        ioctl(self.fd, uapi.KVM_SET_VCPU_EVENTS, events)

    def get_mp_state(self) -> int:
        return int(self._get(uapi.KVM_GET_MP_STATE, uapi.kvm_mp_state).mp_state)  # type: ignore[attr-defined]

    def set_cpuid2(self, entries: list[uapi.kvm_cpuid_entry2]) -> None:
        ioctl(self.fd, uapi.KVM_SET_CPUID2, uapi.cpuid_buffer(entries))

    def set_msrs(self, entries: list[tuple[int, int]]) -> None:
        written = ioctl(self.fd, uapi.KVM_SET_MSRS, uapi.msrs_buffer(entries))
        if written != len(entries):
            index = entries[written][0]
            raise KvmError(f"KVM_SET_MSRS failed: MSR {index:#x} was not accepted")

    def get_msrs(self, indices: list[int]) -> list[tuple[int, int]]:
        buf = uapi.msrs_buffer([(i, 0) for i in indices])
        read = ioctl(self.fd, uapi.KVM_GET_MSRS, buf)
        if read != len(indices):
            # KVM stops at the first MSR it cannot read and leaves the rest untouched (zero)
            raise KvmError(f"KVM_GET_MSRS failed: MSR {indices[read]:#x} could not be read")
        return uapi.msrs_values(buf)

    def close(self) -> None:
        if self.fd < 0:
            return
        self._run.release()
        try:
            self._run_map.close()
        except BufferError:
            pass  # an exit value still holds a view of kvm_run; the mapping goes with the fd
        os.close(self.fd)
        self.fd = -1
