"""Kvm: the /dev/kvm system fd (API version, capabilities, supported CPUID, VM creation).

Also :func:`host_kind`: whether this host's KVM is hardware-assisted or PVM (``kvm_pvm``, KVM
without VMX/SVM, where non-PVM guest kernel code runs in KVM's instruction emulator).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from sparkler.errors import KvmError, UnsupportedHost
from sparkler.kvm import uapi
from sparkler.kvm._ioctl import ioctl
from sparkler.kvm.vm import VmFd

KVM_DEVICE = "/dev/kvm"
PVM_MODULE = "/sys/module/kvm_pvm"
# Firecracker's required capability set (checked before any VM is created).
REQUIRED_CAPS = (
    "KVM_CAP_IRQCHIP", "KVM_CAP_IOEVENTFD", "KVM_CAP_IRQFD", "KVM_CAP_USER_MEMORY", "KVM_CAP_SET_TSS_ADDR",
    "KVM_CAP_PIT2", "KVM_CAP_PIT_STATE2", "KVM_CAP_ADJUST_CLOCK", "KVM_CAP_DEBUGREGS", "KVM_CAP_MP_STATE",
    "KVM_CAP_VCPU_EVENTS", "KVM_CAP_XCRS", "KVM_CAP_XSAVE", "KVM_CAP_EXT_CPUID",
)
CPUID_MAX_ENTRIES = 256  # KVM_GET_SUPPORTED_CPUID fails with E2BIG below what the host has (84 here)


def host_kind() -> str:
    """``"pvm"`` when the host's KVM is kvm_pvm, else ``"hardware"``."""
    return "pvm" if os.path.exists(PVM_MODULE) else "hardware"


class Kvm:
    def __init__(self, path: str = KVM_DEVICE) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UnsupportedHost(
                f"{path} does not exist: this host has no KVM (load kvm_intel/kvm_amd, or run on a host with "
                "virtualisation enabled)"
            ) from None
        except PermissionError:
            raise UnsupportedHost(f"{path} is not accessible: permission denied (add the user to group kvm)") from None
        except OSError as e:
            raise UnsupportedHost(f"Cannot open {path}: {e.strerror}") from None
        try:
            version = self.api_version()
        except KvmError as e:  # not a KVM device (ENOTTY): do not leak the fd
            self.close()
            raise UnsupportedHost(f"{path} is not a KVM device: {e}") from None
        if version != uapi.KVM_API_VERSION:
            self.close()
            raise UnsupportedHost(f"KVM API version {version} is not supported (need {uapi.KVM_API_VERSION})")

    def api_version(self) -> int:
        return ioctl(self.fd, uapi.KVM_GET_API_VERSION)

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, uapi.KVM_CHECK_EXTENSION, cap)

    def require(self, caps: Iterable[str | int] = REQUIRED_CAPS) -> None:
        """Raise KvmError naming every capability in ``caps`` the host lacks."""
        missing = []
        for cap in caps:
            number = getattr(uapi, cap, None) if isinstance(cap, str) and cap.startswith("KVM_CAP_") else cap
            if not isinstance(number, int) or self.check_extension(number) <= 0:
                missing.append(cap if isinstance(cap, str) else uapi.CAPABILITY_NAMES.get(cap, f"capability {cap}"))
        if missing:
            noun = "capability" if len(missing) == 1 else "capabilities"
            raise KvmError(f"Missing KVM {noun}: " + ", ".join(str(m) for m in missing))

    def vcpu_mmap_size(self) -> int:
        return ioctl(self.fd, uapi.KVM_GET_VCPU_MMAP_SIZE)

    def supported_cpuid(self) -> list[uapi.kvm_cpuid_entry2]:
        buf = uapi.cpuid_buffer(CPUID_MAX_ENTRIES)
        ioctl(self.fd, uapi.KVM_GET_SUPPORTED_CPUID, buf)
        return uapi.cpuid_entries(buf)

    def create_vm(self) -> VmFd:
        while True:
            try:
                fd = ioctl(self.fd, uapi.KVM_CREATE_VM, 0)
                break
            except KvmError as e:
                if isinstance(e.__cause__, InterruptedError):
                    continue  # Firecracker retries KVM_CREATE_VM on EINTR too
                raise
        return VmFd(fd, self.vcpu_mmap_size())

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
