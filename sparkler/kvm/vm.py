"""VmFd: one KVM virtual machine (memory slots, in-kernel irqchip and PIT, irqfd, ioeventfd, vCPUs)."""

from __future__ import annotations

import ctypes
import os

from sparkler.kvm import uapi
from sparkler.kvm._ioctl import ioctl
from sparkler.kvm.vcpu import VcpuFd


def _fd_of(obj: object) -> int:
    return obj if isinstance(obj, int) else obj.fd  # type: ignore[attr-defined]


class VmFd:
    def __init__(self, fd: int, vcpu_mmap_size: int) -> None:
        self.fd = fd
        self._vcpu_mmap_size = vcpu_mmap_size

    def set_tss_address(self, addr: int) -> None:
        ioctl(self.fd, uapi.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_address(self, addr: int) -> None:
        value = ctypes.c_uint64(addr)
        ioctl(self.fd, uapi.KVM_SET_IDENTITY_MAP_ADDR, value)

    def create_irqchip(self) -> None:
        ioctl(self.fd, uapi.KVM_CREATE_IRQCHIP)

    def create_pit2(self) -> None:
        # The speaker port (0x61) is handled in the kernel as a dummy, as in Firecracker.
        config = uapi.kvm_pit_config(flags=uapi.KVM_PIT_SPEAKER_DUMMY)
        ioctl(self.fd, uapi.KVM_CREATE_PIT2, config)

    def set_user_memory_region(self, slot: int, gpa: int, size: int, host_addr: int, flags: int = 0) -> None:
        region = uapi.kvm_userspace_memory_region(slot, flags, gpa, size, host_addr)
        ioctl(self.fd, uapi.KVM_SET_USER_MEMORY_REGION, region)

    def register_irqfd(self, eventfd: object, gsi: int) -> None:
        ioctl(self.fd, uapi.KVM_IRQFD, uapi.kvm_irqfd(fd=_fd_of(eventfd), gsi=gsi))

    def register_ioeventfd(
        self, eventfd: object, addr: int, length: int, datamatch: int | None = None, pio: bool = False
    ) -> None:
        flags = (uapi.KVM_IOEVENTFD_FLAG_PIO if pio else 0) | (
            uapi.KVM_IOEVENTFD_FLAG_DATAMATCH if datamatch is not None else 0
        )
        req = uapi.kvm_ioeventfd(datamatch=datamatch or 0, addr=addr, len=length, fd=_fd_of(eventfd), flags=flags)
        ioctl(self.fd, uapi.KVM_IOEVENTFD, req)

    def irq_line(self, irq: int, level: int) -> None:
        ioctl(self.fd, uapi.KVM_IRQ_LINE, uapi.kvm_irq_level(irq, level))

    def create_vcpu(self, index: int) -> VcpuFd:
        fd = ioctl(self.fd, uapi.KVM_CREATE_VCPU, index)
        return VcpuFd(fd, index, self._vcpu_mmap_size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
