"""QEMU ``-M microvm`` as the side-by-side peer: command line, version, and whether it runs here.

The command line is the one validated on this host (pvm-probe-guests.md section 7): ``-cpu host`` needs
``-arch-capabilities`` (otherwise QEMU aborts setting MSR 0x10a), ``-M microvm`` with everything
optional off, the guest enters through its PVH note, ``isa-debug-exit`` on port 0xf4 ends the run
(QEMU exits ``(code << 1) | 1``, i.e. 1 for the bench guest), and the console is COM1 on stdout.
"""

from __future__ import annotations

import os
import shutil
import subprocess

QEMU = "qemu-system-x86_64"
#: Exit status of QEMU when the bench guest writes 0 to isa-debug-exit.
QEMU_OK_CODES = (1,)


def qemu_binary() -> str | None:
    return shutil.which(QEMU)


def qemu_version(binary: str | None = None) -> str | None:
    binary = binary or qemu_binary()
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return None
    return out.stdout.splitlines()[0].strip() if out.stdout else None


def qemu_cmd(kernel: str | os.PathLike[str], append: str, mem_mib: int, binary: str | None = None) -> list[str]:
    return [
        binary or qemu_binary() or QEMU, "-enable-kvm", "-cpu", "host,-arch-capabilities",
        "-M", "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=on",
        "-m", f"{mem_mib}M", "-smp", "1", "-nodefaults", "-no-user-config", "-nographic",
        "-serial", "stdio", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
        "-kernel", str(kernel), "-append", append,
    ]  # fmt: skip


def qemu_usable(kernel: str | os.PathLike[str], mem_mib: int) -> tuple[bool, str]:
    """(True, "") when QEMU boots the bench guest here; else (False, why)."""
    binary = qemu_binary()
    if binary is None:
        return False, f"{QEMU} is not installed (Debian package qemu-system-x86)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not accessible"
    try:
        res = subprocess.run(qemu_cmd(kernel, "console=ttyS0", mem_mib, binary), capture_output=True,
                             stdin=subprocess.DEVNULL, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        return False, "QEMU did not finish booting the bench guest within 60 s"
    if res.returncode not in QEMU_OK_CODES or not res.stdout.startswith(b"SE"):
        err = res.stderr.decode("utf-8", "replace").strip().splitlines()
        return False, f"QEMU exited {res.returncode} with output {res.stdout[:40]!r}: {' '.join(err[-3:])}"
    return True, ""
