"""KVM mechanism, no policy: one wrapper class per kernel file descriptor.

* ``/dev/kvm`` (the system fd) -> :class:`sparkler.kvm.system.Kvm`: API version, capabilities,
  supported CPUID, ``KVM_CREATE_VM``.
* a VM fd -> :class:`sparkler.kvm.vm.VmFd`: guest memory slots, in-kernel irqchip and PIT, irqfd,
  ioeventfd, ``KVM_CREATE_VCPU``.
* a vCPU fd -> :class:`sparkler.kvm.vcpu.VcpuFd`: register state, MSRs, CPUID, LAPIC, events and
  ``KVM_RUN`` with its shared ``kvm_run`` page, decoded by :mod:`sparkler.kvm.exits`.

:mod:`sparkler.kvm.uapi` mirrors the kernel header; every ioctl goes through
:mod:`sparkler.kvm._ioctl` (ctypes: unsigned arguments, GIL released).
"""
