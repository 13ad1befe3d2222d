"""Per-thread seccomp filters (catalog section 10; ARCHITECTURE.md R14).

Policies are data: ``filters/{vmm,api,vcpu}.json`` in Firecracker's ``seccompiler`` JSON format.
``install.py`` compiles them with libseccomp (through ctypes) into classic BPF and loads one per
thread role. It imports nothing from ``sparkler.vmm``.
"""
