"""PVM compatibility mode: what lets a stock Linux kernel boot on a kvm-pvm host.

On a PVM host (``/dev/kvm`` from ``kvm_pvm``, no VMX/SVM) guest CPL0 code runs in KVM's instruction
emulator. A stock kernel gets through its whole boot there only with a few measures
(python-kvm-notes §2, items 10-14a), which this mode applies. It is a Sparkler extension
(Firecracker has no such flag): ``--pvm-compat on|off|auto``, default ``auto`` = on exactly when
the host's KVM is PVM. Nothing here is used on hardware-KVM hosts unless forced ``on``.

1. Guest command line (:func:`cmdline_additions`): ``clearcpuid=`` for every feature the host CPU
   has but KVM does not offer (the guest executes CPUID natively and would use them; ERMS/FSRM stay
   visible, see cpuid.KEEP_VISIBLE), ``noxsave``, ``no-kvmclock`` and, with several vCPUs, ``nopv``
   (PV send-IPI spins forever on this host).
2. Soft-interrupt reflection (:func:`reflect_soft_interrupt`): the emulator cannot execute ``INT3``
   (0xCC) or ``INT n`` (0xCD n) and stops with KVM_EXIT_INTERNAL_ERROR (suberror emulation). The
   VMM reads the instruction at RIP through the guest's page tables, moves RIP past it and injects
   the event with KVM_SET_VCPU_EVENTS, so the guest's IDT handler runs as it would on hardware.
3. ``FWAIT`` (0x9B) at CPL0 is likewise beyond the emulator; Linux runs it in ``fpu__drop`` (every
   exec and exit) under an exception-table entry that skips it on any fault, so the VMM steps over
   it (RIP + 1): x87 exceptions are never unmasked in kernel code, where FWAIT is then a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparkler.arch.x86_64 import cpuid
from sparkler.arch.x86_64.paging import PagingContext, TranslationFault, read_virtual
from sparkler.memory import GuestMemory

MODES = ("on", "off", "auto")
DEFAULT_MODE = "auto"

OPCODE_INT3 = 0xCC
OPCODE_INT_N = 0xCD
OPCODE_FWAIT = 0x9B
VECTOR_BP = 3
VECTOR_NMI = 2
#: Vectors 0-31 are exceptions; KVM_SET_VCPU_EVENTS refuses exception.nr > 31 (and NMI).
FIRST_EXTERNAL_VECTOR = 32
EFER_LMA = 1 << 10


def resolve_mode(setting: str, host_kind: str) -> bool:
    """Whether the mode is active: ``on``/``off`` as given, ``auto`` when ``host_kind == "pvm"``."""
    if setting not in MODES:
        raise ValueError(f"PVM compatibility mode must be one of {', '.join(MODES)}, not {setting!r}")
    if setting == "auto":
        return host_kind == "pvm"
    return setting == "on"


def cmdline_additions(supported: list, vcpu_count: int, raw: cpuid.RawCpuid | None = None) -> list[str]:
    """The guest command-line words the mode appends (see the module docstring, item 1)."""
    words = cpuid.pvm_cmdline_additions(supported, raw).split()
    if vcpu_count <= 1:
        words = [w for w in words if w != "nopv"]
    return words


@dataclass(frozen=True)
class SoftInterrupt:
    """A decoded ``INT3`` / ``INT n``: the vector it raises and the instruction's length."""

    vector: int
    length: int

    @property
    def as_exception(self) -> bool:
        """Injected through ``exception`` (vectors 0-31 but NMI), else as a soft ``interrupt``."""
        return self.vector < FIRST_EXTERNAL_VECTOR and self.vector != VECTOR_NMI

    def describe(self) -> str:
        return ("int3" if self.length == 1 else f"int {self.vector:#x}") + " reflected into the guest"


@dataclass(frozen=True)
class SteppedOver:
    """An instruction that is a no-op in guest kernel context and is skipped (``fwait``)."""

    name: str
    length: int

    def describe(self) -> str:
        return f"{self.name} (stepped over)"


def decode_skip(insn: bytes) -> SteppedOver | None:
    """The instruction at the start of ``insn`` that is stepped over, or None."""
    if insn[:1] == bytes([OPCODE_FWAIT]):
        return SteppedOver("fwait", 1)
    return None


def decode(insn: bytes) -> SoftInterrupt | None:
    """The soft interrupt ``insn`` starts with, or None (prefixes are not accepted)."""
    if insn[:1] == bytes([OPCODE_INT3]):
        return SoftInterrupt(VECTOR_BP, 1)
    if len(insn) >= 2 and insn[0] == OPCODE_INT_N:
        return SoftInterrupt(insn[1], 2)
    return None


def fill_events(events: object, soft: SoftInterrupt) -> None:
    """Set ``kvm_vcpu_events`` to deliver ``soft`` on the next KVM_RUN.

    Software interrupts never push an error code and never carry a payload (an ``int 14`` does
    not set CR2), whatever vector they name. Vectors KVM accepts as exceptions go through
    ``exception`` (``int3`` is #BP); the rest (``int 0x80``, ``int 2``) through ``interrupt`` with
    ``soft=1``. ``flags`` is cleared so the other state in the structure is not re-applied.
    """
    ev = events
    ev.flags = 0  # type: ignore[attr-defined]
    if soft.as_exception:
        ev.exception.injected = 1  # type: ignore[attr-defined]
        ev.exception.pending = 0  # type: ignore[attr-defined]
        ev.exception.nr = soft.vector  # type: ignore[attr-defined]
        ev.exception.has_error_code = 0  # type: ignore[attr-defined]
        ev.exception.error_code = 0  # type: ignore[attr-defined]
        ev.exception_has_payload = 0  # type: ignore[attr-defined]
        ev.exception_payload = 0  # type: ignore[attr-defined]
    else:
        ev.interrupt.injected = 1  # type: ignore[attr-defined]
        ev.interrupt.nr = soft.vector  # type: ignore[attr-defined]
        ev.interrupt.soft = 1  # type: ignore[attr-defined]


class ReflectRefused(Exception):
    """The emulation failure is not a soft interrupt we may reflect; the message says why."""


def _busy(events: object) -> str | None:
    ev = events
    if ev.exception.injected or ev.exception.pending:  # type: ignore[attr-defined]
        return f"exception {ev.exception.nr} already queued"  # type: ignore[attr-defined]
    if ev.interrupt.injected:  # type: ignore[attr-defined]
        return f"interrupt {ev.interrupt.nr} already queued"  # type: ignore[attr-defined]
    if ev.nmi.injected:  # type: ignore[attr-defined]
        return "NMI already queued"
    return None


def reflect_soft_interrupt(fd: object, memory: GuestMemory) -> SoftInterrupt | SteppedOver:
    """Reflect the ``INT3``/``INT n`` at the vCPU's RIP into the guest, or step over an ``FWAIT``;
    raises ReflectRefused (with the vCPU untouched) for anything else.

    ``fd`` is a :class:`sparkler.kvm.vcpu.VcpuFd` (get/set regs, sregs, vcpu events). Only CPL0
    code is handled (CPL3 runs natively and never gets here; a privilege check on the gate would
    otherwise be skipped).
    """
    regs = fd.get_regs()  # type: ignore[attr-defined]
    sregs = fd.get_sregs()  # type: ignore[attr-defined]
    if sregs.cs.selector & 3 or sregs.ss.dpl:
        raise ReflectRefused(f"CPL {sregs.cs.selector & 3} is not 0")
    long64 = bool(sregs.efer & EFER_LMA) and bool(sregs.cs.l)
    wrap = (1 << 64) - 1 if long64 else 0xFFFF_FFFF
    linear = regs.rip if long64 else (sregs.cs.base + regs.rip) & 0xFFFF_FFFF
    ctx = PagingContext.from_sregs(sregs)
    try:
        first = read_virtual(memory, ctx, linear, 1)
        insn = first + (read_virtual(memory, ctx, (linear + 1) & wrap, 1) if first[0] == OPCODE_INT_N else b"")
    except TranslationFault as e:
        raise ReflectRefused(f"cannot read the instruction at rip {regs.rip:#x}: {e}") from None
    skip = decode_skip(insn)
    if skip is not None:
        regs.rip = (regs.rip + skip.length) & wrap
        fd.set_regs(regs)  # type: ignore[attr-defined]
        return skip
    soft = decode(insn)
    if soft is None:
        raise ReflectRefused(f"instruction at rip {regs.rip:#x} is {insn.hex(' ')}, not int3/int n/fwait")
    events = fd.get_vcpu_events()  # type: ignore[attr-defined]
    busy = _busy(events)
    if busy:
        raise ReflectRefused(f"soft interrupt {soft.vector} at rip {regs.rip:#x}: {busy}")
    regs.rip = (regs.rip + soft.length) & wrap
    fd.set_regs(regs)  # type: ignore[attr-defined]
    fill_events(events, soft)
    fd.set_vcpu_events(events)  # type: ignore[attr-defined]
    return soft


__all__ = [
    "DEFAULT_MODE",
    "MODES",
    "ReflectRefused",
    "SoftInterrupt",
    "SteppedOver",
    "cmdline_additions",
    "decode",
    "decode_skip",
    "fill_events",
    "reflect_soft_interrupt",
    "resolve_mode",
]
