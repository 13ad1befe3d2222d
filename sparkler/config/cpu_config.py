"""PUT /cpu-config body: a custom CPU template (Firecracker's x86_64 ``CustomCpuTemplate``).

* ``kvm_capabilities``: ``"N"`` adds KVM capability N to the required set, ``"!N"`` drops it.
* ``cpuid_modifiers``: ``{leaf, subleaf, flags, modifiers: [{register, bitmap}]}``; ``leaf`` and
  ``subleaf`` are u32 strings in hex (``0x``), binary (``0b``) or decimal.
* ``msr_modifiers``: ``{addr, bitmap}``.

A bitmap is ``0b`` followed by up to 32 (CPUID) or 64 (MSR) characters of ``0``, ``1`` or ``x``
(keep the host's bit); ``_`` separators are allowed; a shorter bitmap is left-padded with ``x``.
aarch64 fields (``reg_modifiers``, ``vcpu_features``) are unknown fields on x86_64.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

U32_MAX = 2**32 - 1
U32 = Annotated[int, msgspec.Meta(ge=0, le=U32_MAX)]


def parse_u32(text: str, what: str) -> int:
    """A u32 written in hex (0x), binary (0b) or decimal; ValueError otherwise."""
    lowered = text.strip().lower()
    base = 10
    digits = lowered
    if lowered.startswith("0x"):
        base, digits = 16, lowered[2:]
    elif lowered.startswith("0b"):
        base, digits = 2, lowered[2:]
    try:
        value = int(digits, base) if digits and digits.isalnum() else -1
    except ValueError:
        value = -1
    if not 0 <= value <= U32_MAX:
        raise ValueError(f"Invalid {what} {text!r}: expected a u32 in hex (0x), binary (0b) or decimal")
    return value


def parse_bitmap(text: str, width: int) -> tuple[int, int]:
    """(filter, value): bits to set from ``value`` where ``filter`` is 1 (``x`` keeps the host bit)."""
    if not text.startswith("0b"):
        raise ValueError(f"Invalid bitmap {text!r}: must start with 0b")
    bits = text[2:].replace("_", "")
    if not bits or len(bits) > width or any(c not in "01x" for c in bits):
        raise ValueError(f"Invalid bitmap {text!r}: expected up to {width} characters of 0, 1 or x after 0b")
    bits = bits.rjust(width, "x")
    mask = int("".join("0" if c == "x" else "1" for c in bits), 2)
    value = int(bits.replace("x", "0"), 2)
    return mask, value


class CpuidRegisterModifier(msgspec.Struct, forbid_unknown_fields=True):
    register: Literal["eax", "ebx", "ecx", "edx"]
    bitmap: str

    def __post_init__(self) -> None:
        parse_bitmap(self.bitmap, 32)


class CpuidLeafModifier(msgspec.Struct, forbid_unknown_fields=True):
    leaf: str
    subleaf: str
    flags: U32
    modifiers: list[CpuidRegisterModifier]

    def __post_init__(self) -> None:
        parse_u32(self.leaf, "CPUID leaf")
        parse_u32(self.subleaf, "CPUID subleaf")


class MsrModifier(msgspec.Struct, forbid_unknown_fields=True):
    addr: str
    bitmap: str

    def __post_init__(self) -> None:
        parse_u32(self.addr, "MSR address")
        parse_bitmap(self.bitmap, 64)


class CpuConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    kvm_capabilities: list[str] = msgspec.field(default_factory=list)
    cpuid_modifiers: list[CpuidLeafModifier] = msgspec.field(default_factory=list)
    msr_modifiers: list[MsrModifier] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        for cap in self.kvm_capabilities:
            number = cap[1:] if cap.startswith("!") else cap
            if not number.isdigit() or not number.isascii() or int(number) > U32_MAX:
                raise ValueError(
                    f"Invalid KVM capability {cap!r}: expected a decimal number, optionally prefixed by '!'"
                )
