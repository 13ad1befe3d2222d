"""The microVM kernel: Debian's ``linux-source-6.1`` built with our config fragment.

Recipe (all steps with ``ARCH=x86_64``: plain ``tinyconfig`` on x86 asks for a 32-bit kernel):

1. extract ``/usr/src/linux-source-6.1.tar.xz`` into a work directory;
2. ``make tinyconfig``, then ``scripts/kconfig/merge_config.sh -m .config microvm.config``
   and ``make olddefconfig`` (Kconfig silently drops an option whose dependencies are unmet);
3. check that every option of the fragment survived (:func:`dropped_options`) and fail naming
   each one that did not;
4. ``make -jN vmlinux``; the product is the uncompressed ELF ``vmlinux`` that the VMM's ELF
   loader places at its physical load addresses.

The fragment is package data (``sparkler/guest/microvm.config``). Its parser and the dropped-option
check are pure functions so they are unit-tested without building anything.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
FRAGMENT_NAME = "microvm.config"
#: Kernel profiles: name -> config fragment (package data). ``microvm`` is the general-purpose guest;
#: ``pvm-test`` is trimmed for the slow test tier that boots a stock kernel emulated on PVM hosts.
DEFAULT_PROFILE = "microvm"
PROFILES: dict[str, str] = {"microvm": FRAGMENT_NAME, "pvm-test": "pvm-test.config"}
#: Debian packages the kernel build needs besides the source.
BUILD_PACKAGES = (
    "linux-source-6.1",
    "build-essential",
    "bc",
    "flex",
    "bison",
    "libelf-dev",
    "libssl-dev",
    "xz-utils",
)

_SET_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")

Progress = Callable[[str], None]


class KernelBuildError(Exception):
    """A kernel build step failed; the message names the step (and the log to read)."""


def fragment_text(profile: str = DEFAULT_PROFILE) -> str:
    """The text of the config fragment of kernel ``profile`` shipped with the package."""
    if profile not in PROFILES:
        raise KeyError(f"unknown kernel profile {profile!r} (known: {', '.join(sorted(PROFILES))})")
    return resources.files("sparkler.guest").joinpath(PROFILES[profile]).read_text(encoding="utf-8")


def parse_config(text: str) -> dict[str, str]:
    """Parse Kconfig ``.config`` syntax into ``{"CONFIG_X": value}``.

    ``# CONFIG_X is not set`` maps to ``"n"``; other comments and blank lines are ignored.
    Quoted string values keep their quotes, as Kconfig writes them.
    """
    options: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        unset = _UNSET_RE.match(line)
        if unset:
            options[unset.group(1)] = "n"
            continue
        if line.startswith("#"):
            continue
        match = _SET_RE.match(line)
        if match is None:
            raise ValueError(f"not a Kconfig line: {raw!r}")
        options[match.group(1)] = match.group(2)
    return options


@dataclass(frozen=True)
class DroppedOption:
    """One fragment option whose final value differs from what the fragment asked for."""

    name: str
    wanted: str
    got: str  # "n" when absent from the final .config

    def __str__(self) -> str:
        return f"{self.name}: fragment wants {self.wanted}, final .config has {self.got}"


def dropped_options(fragment: dict[str, str], final: dict[str, str]) -> list[DroppedOption]:
    """Fragment options that did not survive into the final ``.config``.

    An option absent from the final config counts as ``n`` (that is how Kconfig writes
    options whose dependencies are unmet: not at all).
    """
    dropped = []
    for name, wanted in fragment.items():
        got = final.get(name, "n")
        if got != wanted:
            dropped.append(DroppedOption(name, wanted, got))
    return dropped


def _run(cmd: list[str], cwd: Path, log: Path, step: str, progress: Progress) -> None:
    progress(f"kernel: {step}: {' '.join(cmd)}")
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        result = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise KernelBuildError(
            f"kernel {step} failed (exit {result.returncode}); full log: {log}\n" + "\n".join(tail)
        )


def extract_source(tarball: Path, work: Path, progress: Progress) -> Path:
    """Extract the kernel tarball into ``work``; returns the source tree directory."""
    progress(f"kernel: extracting {tarball} (about 1 minute)")
    result = subprocess.run(
        ["tar", "-xf", str(tarball), "-C", str(work)], check=False, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise KernelBuildError(f"extracting {tarball} failed: {result.stderr.strip()}")
    trees = [p for p in work.iterdir() if p.is_dir() and (p / "Makefile").exists()]
    if len(trees) != 1:
        raise KernelBuildError(f"{tarball} did not unpack to one kernel tree: {trees}")
    return trees[0]


def configure(tree: Path, fragment: str, log: Path, progress: Progress) -> dict[str, str]:
    """tinyconfig + fragment + olddefconfig; returns the final config after the drop check."""
    frag_path = tree / FRAGMENT_NAME
    frag_path.write_text(fragment, encoding="utf-8")
    make = ["make", "ARCH=x86_64"]
    _run([*make, "tinyconfig"], tree, log, "tinyconfig", progress)
    _run(
        ["scripts/kconfig/merge_config.sh", "-m", ".config", FRAGMENT_NAME],
        tree,
        log,
        "merge_config",
        progress,
    )
    _run([*make, "olddefconfig"], tree, log, "olddefconfig", progress)
    final = parse_config((tree / ".config").read_text(encoding="utf-8"))
    dropped = dropped_options(parse_config(fragment), final)
    if dropped:
        lines = "\n".join(f"  {d}" for d in dropped)
        raise KernelBuildError(
            f"{len(dropped)} option(s) of {FRAGMENT_NAME} were dropped by Kconfig "
            f"(unmet dependencies?):\n{lines}"
        )
    progress(f"kernel: all {len(parse_config(fragment))} fragment options survived olddefconfig")
    return final


def build_vmlinux(tree: Path, jobs: int, log: Path, progress: Progress) -> Path:
    """``make -jN vmlinux``; returns the path of the ELF image."""
    progress(f"kernel: make -j{jobs} vmlinux (about 4 minutes on 2 cores); log: {log}")
    _run(["make", "ARCH=x86_64", f"-j{jobs}", "vmlinux"], tree, log, "make vmlinux", progress)
    vmlinux = tree / "vmlinux"
    with vmlinux.open("rb") as f:
        if f.read(4) != b"\x7fELF":
            raise KernelBuildError(f"{vmlinux} is not an ELF file")
    return vmlinux


def build_kernel(
    out_dir: Path,
    work: Path,
    jobs: int,
    log: Path,
    progress: Progress,
    tarball: Path = SOURCE_TARBALL,
    profile: str = DEFAULT_PROFILE,
) -> Path:
    """Build ``vmlinux`` of ``profile`` into ``out_dir`` (also saving ``config``, ``System.map``
    and ``build.log`` there).

    ``work`` is scratch space that the caller deletes; ``out_dir`` is the staging directory
    that the caller publishes atomically; ``log`` (outside both, so it survives a failure)
    receives the output of every step.
    """
    log.write_bytes(b"")
    tree = extract_source(tarball, work, progress)
    configure(tree, fragment_text(profile), log, progress)
    vmlinux = build_vmlinux(tree, jobs, log, progress)
    shutil.copyfile(tree / ".config", out_dir / "config")
    if (tree / "System.map").exists():  # symbols for RIP-sampling boot profiles
        shutil.copyfile(tree / "System.map", out_dir / "System.map")
    shutil.copyfile(vmlinux, out_dir / "vmlinux")
    shutil.copyfile(log, out_dir / "build.log")
    return out_dir / "vmlinux"
