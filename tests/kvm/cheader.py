"""Check ctypes mirrors of kernel UAPI headers against the real headers, with a C compiler.

The C program is generated from the Python definitions: for every struct it prints ``sizeof`` and,
walking ``_fields_`` (recursing into private ``_name`` helper types, which stand for anonymous or
inline C structs and unions), ``offsetof`` and member ``sizeof``; for every constant it prints the
value of the C macro. A field or constant added to the mirror later is checked automatically.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

_COMPOSITE = (ctypes.Structure, ctypes.Union)


@dataclass(frozen=True)
class Check:
    """One value known on both sides: ``label`` (the Python path), ours, and a C expression."""

    label: str
    ours: int
    c_expr: str


def is_mirrored_struct(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, _COMPOSITE) and not obj.__name__.startswith("_")


def struct_checks(
    struct: type,
    *,
    renames: dict[str, str] | None = None,
    check_sizeof: bool = True,
) -> list[Check]:
    """sizeof(struct) plus offset and size of every member, recursively.

    ``renames`` maps a Python path (``kvm_run.u``) to the C member path (``""`` for an anonymous
    member, or ``triple_fault.pending`` for a flattened inline struct).
    """
    renames = renames or {}
    top = struct.__name__
    ctype_name = f"struct {top}"
    checks: list[Check] = []
    if check_sizeof:
        checks.append(Check(f"sizeof({top})", ctypes.sizeof(struct), f"sizeof({ctype_name})"))

    def walk(ctype: type, py_base: int, py_path: str, c_path: str) -> None:
        for name, ftype, *_ in ctype._fields_:
            desc = getattr(ctype, name)
            label = f"{py_path}.{name}"
            c_name = renames.get(label, name)
            member = f"{c_path}.{c_name}" if c_path and c_name else (c_path or c_name)
            offset = py_base + desc.offset
            if isinstance(ftype, type) and issubclass(ftype, _COMPOSITE) and ftype.__name__.startswith("_"):
                walk(ftype, offset, label, member)
                if not c_name:
                    continue  # anonymous C member: its offset is checked through its first member
            checks.append(Check(f"offsetof({label})", offset, f"offsetof({ctype_name}, {member})"))
            checks.append(Check(f"sizeof({label})", desc.size, f"sizeof((({ctype_name} *)0)->{member})"))

    walk(struct, 0, top, "")
    return checks


def constant_checks(values: dict[str, int]) -> list[Check]:
    return [Check(name, value, name) for name, value in values.items()]


def c_program(includes: list[str], checks: list[Check], optional: set[str] = frozenset()) -> str:
    """A C program printing ``label value`` per check; ``optional`` macros print ``label undefined``."""
    lines = ["#include <stdio.h>", "#include <stddef.h>"]
    lines += [f"#include <{h}>" for h in includes]
    lines.append("int main(void) {")
    for c in checks:
        out = f'    printf("%s %llu\\n", "{c.label}", (unsigned long long)({c.c_expr}));'
        if c.c_expr in optional:
            lines += [f"#ifdef {c.c_expr}", out, "#else", f'    printf("%s undefined\\n", "{c.label}");', "#endif"]
        else:
            lines.append(out)
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines)


def compile_and_run(source: str, workdir: Path) -> dict[str, int | None]:
    """Compile ``source`` with gcc in ``workdir``, run it, and parse ``label value`` lines."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("host limitation: no C compiler (gcc/cc) to check the UAPI mirrors against the headers")
    c_file = workdir / "uapi_check.c"
    exe = workdir / "uapi_check"
    c_file.write_text(source)
    build = subprocess.run([gcc, "-std=gnu11", "-Wall", "-o", str(exe), str(c_file)], capture_output=True, text=True)
    assert build.returncode == 0, f"generated C does not compile against the headers:\n{build.stderr[-4000:]}"
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=True, timeout=30)
    values: dict[str, int | None] = {}
    for line in run.stdout.splitlines():
        label, _, value = line.rpartition(" ")
        values[label] = None if value == "undefined" else int(value)
    return values


def mismatches(checks: list[Check], values: dict[str, int | None]) -> list[str]:
    out = []
    for c in checks:
        theirs = values.get(c.label)
        if theirs is not None and theirs != c.ours:
            out.append(f"{c.label}: ours {c.ours:#x}, header {theirs:#x}")
    return out
