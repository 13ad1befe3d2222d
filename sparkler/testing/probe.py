"""Probe guests: build the freestanding x86_64 test guest and read what it reports.

The probe guest is a tiny ELF64 program (sources in ``sparkler/testing/guests/``, shipped as package
data) that a VMM boots exactly like a Linux kernel: entry at the ELF entry point in 64-bit long mode,
RSI = boot_params (Linux 64-bit boot protocol).  From the inside it checks what the VMM gave it
(boot_params, command line, e820, initrd, MP table, SMP bring-up, RAM) and reports on COM1 with one
line per result::

    INFO probe start
    PASS boot_params
    FAIL e820 what=ram_total total=... expected=...
    INFO probe done fails=1

Two variants are built from the same sources:

``linux``
    no PVH note; a Firecracker-compatible VMM enters through the Linux 64-bit boot protocol.
``pvh``
    adds the ``XEN_ELFNOTE_PHYS32_ENTRY`` note (pvh_note.S); QEMU ``-M microvm`` and VMMs that
    honour the note (Firecracker >= 1.12) enter in 32-bit mode with EBX = hvm_start_info.

Command-line keys understood by the guest (``probe.<key>=<value>``; numbers are decimal or 0x hex):

=================  ========================================================================
``mem_mib``        expected memory size; e820 RAM total must be ``mem - (1 MiB - 0x9fc00)``
``cpus``           expected vCPU count (MP table processor entries, SMP bring-up target)
``smp=1``          bring the APs up with INIT/SIPI and expect ``cpus`` CPUs online
``smp_timeout_ms`` AP bring-up timeout (default 10000)
``initrd_sum``     expected FNV-1a-32 of the initrd bytes (see :func:`fnv1a32`)
``touch_mib``      write + read back one byte per 4 KiB page over N MiB above the image
``layout=none``    skip the Firecracker-specific e820/MP-table layout checks (e.g. under QEMU)
``user=0``         do not use the CPL3 trampoline (bulk loops then run emulated at CPL0)
``fault=K``        deliberately raise ud|pf|gp|de|user_ud after the checks
``hang=1``         never exit (tests the harness watchdog)
``rng=N``          virtio-rng driver: ``rng_count`` requests of N bytes (rng.c)
``balloon=M``      virtio-balloon driver: touch M MiB, follow num_pages, post stats; ``balloon_bad=1``
                   sends malformed requests instead (balloon.c)
``kbd=irq|noirq``  wait for SendCtrlAltDel on the i8042, with or without IRQ 1 enabled (kbd.c)
=================  ========================================================================

Builds are cached by a hash of the sources, the compiler identity and the flags under
``$SPARKLER_CACHE`` or ``~/.cache/sparkler/probes``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PROBE_SOURCE_DIR",
    "ProbeBuildError",
    "Report",
    "Reports",
    "build_probe",
    "fnv1a32",
    "parse_reports",
    "probe_cache_dir",
]

PROBE_SOURCE_DIR = Path(__file__).resolve().parent / "guests"

#: Compiler flags: freestanding, baseline x86-64 ISA only (no popcnt/crc32/movbe/cmpxchg16b/rdtscp,
#: which this host's CPL0 emulator cannot execute), no SSE, no red zone (interrupts use the stack).
CFLAGS = (
    "-O2",
    "-ffreestanding",
    "-nostdlib",
    "-nostartfiles",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fno-pic",
    "-no-pie",
    "-march=x86-64",
    "-mtune=generic",
    "-fno-builtin",
    "-Wall",
    "-Werror=format",
    "-Werror=implicit-function-declaration",
)
LDFLAGS = ("-static", "-Wl,--build-id=none", "-Wl,-z,max-page-size=4096", "-Wl,-z,noexecstack")

# Every *.c file of the source directory is compiled (one file per device driver, registered with
# PROBE_TEST); these are the variant-specific assembly files around them.
_VARIANT_SOURCES = {
    "linux": ("entry.S",),
    "pvh": ("entry.S", "pvh_note.S"),
}
_LINKER_SCRIPTS = {"linux": "probe.ld", "pvh": "probe-pvh.ld"}


class ProbeBuildError(RuntimeError):
    """The probe guest could not be built (no compiler, or the compiler failed)."""


def probe_cache_dir() -> Path:
    """``$SPARKLER_CACHE`` (probes are stored directly in it) or ``~/.cache/sparkler/probes``."""
    env = os.environ.get("SPARKLER_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "sparkler" / "probes"


def _compiler_identity(cc: str) -> str:
    try:
        out = subprocess.run(
            [cc, "-dumpfullversion", "-dumpmachine"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as exc:
        raise ProbeBuildError(f"cannot run C compiler {cc!r}: {exc}") from exc
    return out.stdout.strip().replace("\n", " ")


def build_probe(
    variant: str = "linux",
    *,
    source_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cc: str | None = None,
    extra_sources: tuple[str | os.PathLike[str], ...] = (),
) -> Path:
    """Compile the probe guest (if not cached) and return the path of the ELF.

    ``variant`` is ``"linux"`` (Linux 64-bit boot protocol only) or ``"pvh"`` (also carries the PVH
    entry note).  ``source_dir`` defaults to the package data directory; ``extra_sources`` are
    additional C/assembly files (e.g. test-specific ones from ``tests/guests``) linked in as well.
    Raises :class:`ProbeBuildError` when gcc is missing or the build fails.
    """
    if variant not in _VARIANT_SOURCES:
        raise ValueError(f"unknown probe variant {variant!r}; expected one of {sorted(_VARIANT_SOURCES)}")
    src_dir = Path(source_dir) if source_dir is not None else PROBE_SOURCE_DIR
    compiler = cc or os.environ.get("SPARKLER_PROBE_CC") or "gcc"
    compiler_path = shutil.which(compiler)
    if compiler_path is None:
        raise ProbeBuildError(
            f"C compiler {compiler!r} not found on PATH: the probe guest is compiled at test time "
            "(install gcc, e.g. `apt-get install gcc`, or set SPARKLER_PROBE_CC)"
        )
    sources = [src_dir / name for name in _VARIANT_SOURCES[variant]]
    sources += sorted(src_dir.glob("*.c")) + [Path(s) for s in extra_sources]
    headers = sorted(src_dir.glob("*.h"))
    linker_script = src_dir / _LINKER_SCRIPTS[variant]
    for path in [*sources, linker_script]:
        if not path.is_file():
            raise ProbeBuildError(f"probe source missing: {path}")

    h = hashlib.sha256()
    h.update(f"variant={variant}\0cc={_compiler_identity(compiler_path)}\0".encode())
    h.update(("\0".join(CFLAGS + LDFLAGS)).encode())
    for path in [*sources, *headers, linker_script]:
        h.update(f"\0{path.name}\0".encode())
        h.update(path.read_bytes())
    key = h.hexdigest()[:20]

    out_dir = Path(cache_dir) if cache_dir is not None else probe_cache_dir()
    target = out_dir / f"probe-{variant}-{key}.elf"
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="probe-build-", dir=out_dir) as tmp:
        tmp_elf = Path(tmp) / target.name
        cmd = [
            compiler_path,
            *CFLAGS,
            *LDFLAGS,
            f"-Wl,-T,{linker_script}",
            "-o",
            str(tmp_elf),
            *(str(s) for s in sources),
        ]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ProbeBuildError(f"probe build failed to run: {exc}") from exc
        if res.returncode != 0:
            raise ProbeBuildError(
                f"probe build failed (exit {res.returncode}): {' '.join(cmd)}\n{res.stderr.strip()}"
            )
        os.replace(tmp_elf, target)  # atomic: concurrent builders of the same key are harmless
    return target


def fnv1a32(data: bytes) -> int:
    """FNV-1a 32-bit hash, as computed by the probe over the initrd (``probe.initrd_sum``)."""
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


# ------------------------------------------------------------------------------------------------
# Report parsing

_LINE = re.compile(r"^(PASS|FAIL|INFO) (\S+)(.*)$")
_KV = re.compile(r'(\w+)=("(?:[^"]*)"|\S*)')


@dataclass(frozen=True)
class Report:
    """One ``PASS|FAIL|INFO name k=v ...`` line."""

    kind: str
    name: str
    fields: dict[str, str] = field(default_factory=dict)
    line: str = ""


class Reports(list[Report]):
    """The reports of one run, in order, with small lookup helpers."""

    def named(self, name: str, kind: str | None = None) -> list[Report]:
        return [r for r in self if r.name == name and (kind is None or r.kind == kind)]

    @property
    def passes(self) -> list[Report]:
        return [r for r in self if r.kind == "PASS"]

    @property
    def fails(self) -> list[Report]:
        return [r for r in self if r.kind == "FAIL"]

    @property
    def finished(self) -> bool:
        """True when the probe printed its final ``INFO probe done`` line."""
        return any(r.kind == "INFO" and r.name == "probe" and "fails" in r.fields for r in self)

    def passed(self, name: str) -> bool:
        return any(r.kind == "PASS" and r.name == name for r in self)


def parse_reports(text: str) -> Reports:
    """Parse probe output (other lines, e.g. VMM log lines, are ignored).

    ``k="quoted value"`` keeps everything between the quotes (the ``cmdline value`` may contain
    spaces); other values run to the next space.  Keys that repeat keep their last value.
    """
    out = Reports()
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        m = _LINE.match(line)
        if not m:
            continue
        kind, name, rest = m.groups()
        fields: dict[str, str] = {}
        if name == "cmdline" and rest.startswith(' value="') and rest.endswith('"'):
            fields["value"] = rest[len(' value="') : -1]
        else:
            for k, v in _KV.findall(rest):
                fields[k] = v[1:-1] if len(v) >= 2 and v[0] == v[-1] == '"' else v
        out.append(Report(kind, name, fields, line))
    return out
