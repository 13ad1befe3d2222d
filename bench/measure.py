"""Measurements for ``bench/run``: boots of the bench guest under Sparkler and QEMU, side by side.

Every function returns plain numbers (seconds, KiB, microseconds); nothing here prints or asserts.
Runs of the two VMMs alternate (A B B A A B ...) so that both see the same moment of a noisy host.

Timing method (host side, ``time.perf_counter``): ``t0`` just before ``Popen``; the guest's first act
is an ``out`` of ``'S'`` to COM1, so the arrival of that byte on the VMM's stdout is "first guest
instruction" (plus one serial exit); ``'E'`` follows the exit loop ("guest marker"); then the VMM
process exits ("guest exit"). The pipe is read unbuffered, one byte at a time, with a watchdog.
"""

from __future__ import annotations

import json
import os
import pathlib
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from qemu import QEMU_OK_CODES, qemu_cmd  # noqa: E402

MEM_MIB = 128
WATCHDOG_S = 60.0


@dataclass(frozen=True)
class Vmm:
    name: str
    argv: Callable[[str], list[str]]  # guest boot args (bench.*) -> command line
    ok_codes: tuple[int, ...]
    mem_mib: int = MEM_MIB


def sparkler_vmm(kernel: pathlib.Path, tmp: pathlib.Path, mem_mib: int = MEM_MIB) -> Vmm:
    """Sparkler with ``--no-api --config-file`` (as ``bench/boot_core.py``), Linux boot protocol entry."""
    configs: dict[str, pathlib.Path] = {}

    def argv(args: str) -> list[str]:
        if args not in configs:
            cfg = {
                "boot-source": {"kernel_image_path": str(kernel), "boot_args": f"console=ttyS0 {args}".strip()},
                "machine-config": {"vcpu_count": 1, "mem_size_mib": mem_mib},
            }
            path = tmp / f"vm-{len(configs)}.json"
            path.write_text(json.dumps(cfg))
            configs[args] = path
        # -I: isolated mode (no environment, no user site), as a packaged VMM would run.
        return [sys.executable, "-I", "-c", "import sys; from sparkler.cli import main; sys.exit(main())",
                "--no-api", "--config-file", str(configs[args]), "--level", "Error"]

    return Vmm("Sparkler", argv, (0,), mem_mib)


def qemu_vmm(kernel: pathlib.Path, mem_mib: int = MEM_MIB) -> Vmm:
    return Vmm("QEMU", lambda args: qemu_cmd(kernel, f"console=ttyS0 {args}".strip(), mem_mib), QEMU_OK_CODES, mem_mib)


class BenchError(RuntimeError):
    pass


def _read_until(fd: int, want: bytes, deadline: float, seen: bytearray) -> float:
    """Read one byte at a time until ``want`` arrives; returns the perf_counter time of its arrival."""
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise BenchError(f"timed out waiting for {want!r} (got {bytes(seen)!r})")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        b = os.read(fd, 1)
        now = time.perf_counter()
        if not b:
            raise BenchError(f"VMM closed its output before {want!r} (got {bytes(seen)!r})")
        seen += b
        if b == want:
            return now


def _spawn(vmm: Vmm, args: str) -> tuple[subprocess.Popen, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(vmm.argv(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, bufsize=0, cwd="/")
    return proc, t0


def boot_once(vmm: Vmm, args: str = "") -> dict[str, float]:
    """Seconds from Popen to the guest's first byte ('S'), to its marker ('E'), and to VMM exit."""
    proc, t0 = _spawn(vmm, args)
    assert proc.stdout is not None and proc.stderr is not None
    seen = bytearray()
    try:
        deadline = t0 + WATCHDOG_S
        t_first = _read_until(proc.stdout.fileno(), b"S", deadline, seen)
        t_marker = _read_until(proc.stdout.fileno(), b"E", deadline, seen)
        proc.stdout.read()
        code = proc.wait(timeout=max(0.1, deadline - time.perf_counter()))
        t_exit = time.perf_counter()
    except (BenchError, subprocess.TimeoutExpired) as exc:
        proc.kill()
        proc.wait()
        err = proc.stderr.read().decode("utf-8", "replace").strip()[-500:]
        raise BenchError(f"{vmm.name} ({args or 'no args'}): {exc}; stderr: {err}") from None
    proc.stderr.read()
    if code not in vmm.ok_codes:
        raise BenchError(f"{vmm.name} ({args or 'no args'}) exited {code}, expected {vmm.ok_codes}")
    return {"first": t_first - t0, "marker": t_marker - t0, "exit": t_exit - t0}


def _alternating(vmms: list[Vmm], rounds: int):
    """(round, vmm) pairs in ABBA order."""
    for i in range(rounds):
        for vmm in vmms if i % 2 == 0 else reversed(vmms):
            yield i, vmm


def boot_times(vmms: list[Vmm], runs: int) -> dict[str, dict[str, list[float]]]:
    """Per VMM: lists of ms to first guest instruction, to the guest marker, to VMM exit."""
    out = {v.name: {"first_ms": [], "marker_ms": [], "exit_ms": []} for v in vmms}
    for vmm in vmms:  # warm the page cache and __pycache__
        boot_once(vmm)
    for _, vmm in _alternating(vmms, runs):
        r = boot_once(vmm)
        out[vmm.name]["first_ms"].append(r["first"] * 1e3)
        out[vmm.name]["marker_ms"].append(r["marker"] * 1e3)
        out[vmm.name]["exit_ms"].append(r["exit"] * 1e3)
    return out


def exit_costs(vmms: list[Vmm], runs: int, exits: int) -> dict[str, dict[str, list[float]]]:
    """Per VMM and kind: microseconds per exit, one sample per run.

    Each sample is ``((E - S) with N exits - (E - S) with 0 exits) / N``, S and E being the arrival of
    the guest's bytes around the loop, so process start-up and teardown cancel out; a base run is
    paired with each loaded run. Includes the guest's loop around the exit (emulated at CPL0 on PVM).
    """
    out: dict[str, dict[str, list[float]]] = {v.name: {"pio_us": [], "mmio_us": []} for v in vmms}
    for kind in ("pio", "mmio"):
        for _, vmm in _alternating(vmms, runs):
            base = boot_once(vmm)
            loaded = boot_once(vmm, f"bench.{kind}={exits}")
            span = (loaded["marker"] - loaded["first"]) - (base["marker"] - base["first"])
            out[vmm.name][f"{kind}_us"].append(span / exits * 1e6)
    return out


def smaps_memory(pid: int, guest_mem_kib: int) -> dict[str, int]:
    """Firecracker's way (tests/host_tools/memory.py): RSS of every mapping except guest RAM (the
    mapping whose size is the guest memory size); plus USS (Private_Clean + Private_Dirty), KiB."""
    rss = guest_rss = uss = guest_uss = 0
    size = 0
    is_guest = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key == "Size":
                size = int(rest.split()[0])
                is_guest = size == guest_mem_kib
            elif key == "Rss":
                kib = int(rest.split()[0])
                rss += kib
                guest_rss += kib if is_guest else 0
            elif key in ("Private_Clean", "Private_Dirty"):
                kib = int(rest.split()[0])
                uss += kib
                guest_uss += kib if is_guest else 0
    return {"rss_kib": rss, "guest_rss_kib": guest_rss, "overhead_kib": rss - guest_rss, "uss_kib": uss,
            "uss_excl_guest_kib": uss - guest_uss}


def idle_memory_once(vmm: Vmm, settle_s: float = 0.3) -> dict[str, int]:
    """Boot with ``bench.idle=1`` (the guest halts after 'E'), wait, read /proc/<pid>/smaps, kill."""
    proc, t0 = _spawn(vmm, "bench.idle=1")
    assert proc.stdout is not None
    try:
        _read_until(proc.stdout.fileno(), b"\n", t0 + WATCHDOG_S, bytearray())
        time.sleep(settle_s)
        if proc.poll() is not None:
            raise BenchError(f"{vmm.name} exited {proc.returncode} while it should idle")
        return smaps_memory(proc.pid, vmm.mem_mib * 1024)
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def idle_memory(vmms: list[Vmm], runs: int) -> dict[str, dict[str, list[int]]]:
    out: dict[str, dict[str, list[int]]] = {}
    for _, vmm in _alternating(vmms, runs):
        sample = idle_memory_once(vmm)
        for key, value in sample.items():
            out.setdefault(vmm.name, {}).setdefault(key, []).append(value)
    return out


def vms_per_second(vmms: list[Vmm], window_s: float) -> dict[str, dict[str, float | list[float]]]:
    """Sequential create-boot-exit cycles of the tiny guest, alternating VMMs, for about ``window_s``
    seconds of each VMM's time: boots / (sum of their wall times)."""
    spent = {v.name: 0.0 for v in vmms}
    boots: dict[str, list[float]] = {v.name: [] for v in vmms}
    i = 0
    while min(spent.values()) < window_s:
        for vmm in vmms if i % 2 == 0 else reversed(vmms):
            if spent[vmm.name] >= window_s:
                continue
            r = boot_once(vmm)
            spent[vmm.name] += r["exit"]
            boots[vmm.name].append(r["exit"] * 1e3)
        i += 1
    return {name: {"boots": len(boots[name]), "seconds": spent[name], "per_s": len(boots[name]) / spent[name],
                   "boot_ms": boots[name]} for name in spent}
