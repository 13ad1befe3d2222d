"""How many idle 128 MiB microVMs fit on this machine at once, and what each one costs.

Starts idle probe VMs one after another (each its own ``sparkler --no-api --config-file`` process,
1 vCPU, 128 MiB, ``probe.hang=1``: the guest boots, runs its checks and halts with interrupts off)
and keeps them all running, until a cap (``--max``), a time budget, or a memory floor: it stops
before the host's ``MemAvailable`` would fall under ``--reserve-mib`` (default: a quarter of RAM,
the machine is shared). Then it measures, with every VM alive:

* per VM (``/proc/<pid>/smaps_rollup``): RSS, PSS, USS (``Private_Clean + Private_Dirty``);
* the host's ``MemAvailable`` drop per VM (total drop / VMs), which also counts kernel memory
  (page tables, KVM's shadow pages, the VM's fds) that no per-process figure shows;
* CPU per idle VM: the VMM processes' CPU time over a quiet window, per VM and second;
* start cost: wall time of each boot to its ``INFO hang`` line, as more VMs run.

Extrapolation: ``fit = MemAvailable(before) / drop per VM`` (every last byte) and the same above
the reserve. Memory is the binding limit for idle VMs (they use almost no CPU); a guest that
touches its 128 MiB costs up to 128 MiB more each (demand paging).

Usage: .venv/bin/python bench/density.py [--max N] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import select
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
MEM_MIB = 128
CLK_TCK = os.sysconf("SC_CLK_TCK")


def meminfo_kib(key: str = "MemAvailable") -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def rollup_kib(pid: int) -> dict[str, int]:
    """Rss, Pss and USS (Private_Clean + Private_Dirty) of one process, in KiB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                values[parts[0][:-1]] = int(parts[1])
    return {"rss": values.get("Rss", 0), "pss": values.get("Pss", 0),
            "uss": values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)}


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _kernel() -> pathlib.Path:
    sys.path.insert(0, str(REPO))
    from sparkler.testing.probe import build_probe

    return build_probe("linux")


def start_idle_vm(kernel: pathlib.Path, cfg: pathlib.Path, timeout: float = 60.0) -> tuple[subprocess.Popen, float]:
    """Start one VM and wait until its guest is idle; (process, seconds to idle)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "sparkler", "--no-api", "--config-file", str(cfg), "--level", "Error"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env)
    out = b""
    fd = proc.stdout.fileno()
    while time.monotonic() - t0 < timeout:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out += chunk
            if b"INFO hang" in out:
                # keep the pipe open but stop reading: the idle guest prints nothing more
                return proc, time.monotonic() - t0
        elif proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    raise RuntimeError(f"VM did not reach idle (exit {proc.returncode}): {out[-400:]!r}")


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()
        if p.stdout:
            p.stdout.close()


def run(max_vms: int = 200, reserve_mib: int | None = None, budget_s: float = 180.0, cpu_window_s: float = 2.0) -> dict:
    kernel = _kernel()
    total_kib = meminfo_kib("MemTotal")
    reserve_kib = (reserve_mib << 10) if reserve_mib is not None else total_kib // 4
    procs: list[subprocess.Popen] = []
    boot_s: list[float] = []
    avail_before = meminfo_kib()
    stop_reason = f"cap of {max_vms} VMs"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sparkler-density-") as d:
        cfg = pathlib.Path(d) / "idle.json"
        cfg.write_text(json.dumps({
            "boot-source": {"kernel_image_path": str(kernel),
                            "boot_args": f"console=ttyS0 reboot=k panic=1 probe.mem_mib={MEM_MIB} probe.hang=1"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": MEM_MIB},
        }))
        try:
            while len(procs) < max_vms:
                if time.monotonic() - started > budget_s:
                    stop_reason = f"time budget of {budget_s:.0f} s"
                    break
                avail = meminfo_kib()
                per_vm = (avail_before - avail) / len(procs) if procs else 64 << 10
                if avail - 2 * max(per_vm, 1) < reserve_kib:
                    stop_reason = f"memory floor (MemAvailable {avail >> 10} MiB, reserve {reserve_kib >> 10} MiB)"
                    break
                proc, secs = start_idle_vm(kernel, cfg)
                procs.append(proc)
                boot_s.append(secs)
            time.sleep(0.5)  # let the last guests settle
            avail_after = meminfo_kib()
            rollups = [rollup_kib(p.pid) for p in procs]
            cpu0 = sum(cpu_s(p.pid) for p in procs)
            time.sleep(cpu_window_s)
            cpu1 = sum(cpu_s(p.pid) for p in procs)
        finally:
            stop_all(procs)
    n = len(procs)
    if n == 0:
        raise RuntimeError(f"no VM started ({stop_reason})")
    drop_kib = (avail_before - avail_after) / n
    return {
        "vms": n,
        "mem_mib": MEM_MIB,
        "stop_reason": stop_reason,
        "mem_total_mib": total_kib >> 10,
        "mem_available_before_mib": avail_before >> 10,
        "mem_available_after_mib": avail_after >> 10,
        "reserve_mib": reserve_kib >> 10,
        "drop_per_vm_kib": drop_kib,
        "rss_kib": [r["rss"] for r in rollups],
        "pss_kib": [r["pss"] for r in rollups],
        "uss_kib": [r["uss"] for r in rollups],
        "boot_s": boot_s,
        "cpu_ms_per_vm_s": (cpu1 - cpu0) * 1000 / cpu_window_s / n,
        "fit_all_available": int(avail_before / drop_kib) if drop_kib > 0 else None,
        "fit_above_reserve": int((avail_before - reserve_kib) / drop_kib) if drop_kib > 0 else None,
        "seconds": time.monotonic() - started,
    }


def print_summary(res: dict) -> None:
    def med(key: str) -> float:
        return statistics.median(res[key])

    print(f"idle {res['mem_mib']} MiB probe VMs running at once: {res['vms']} (stopped by {res['stop_reason']})")
    print(f"per VM: RSS {med('rss_kib') / 1024:.1f} MiB, PSS {med('pss_kib') / 1024:.1f} MiB, "
          f"USS {med('uss_kib') / 1024:.1f} MiB (medians); MemAvailable drop {res['drop_per_vm_kib'] / 1024:.1f} MiB/VM")
    print(f"MemAvailable {res['mem_available_before_mib']} -> {res['mem_available_after_mib']} MiB "
          f"(total {res['mem_total_mib']} MiB)")
    print(f"CPU while idle: {res['cpu_ms_per_vm_s']:.2f} ms per VM per second")
    b = res["boot_s"]
    print(f"start to idle: first {b[0] * 1000:.0f} ms, median {statistics.median(b) * 1000:.0f} ms, "
          f"last {b[-1] * 1000:.0f} ms")
    print(f"extrapolated fit: {res['fit_all_available']} VMs in all of MemAvailable, "
          f"{res['fit_above_reserve']} above the {res['reserve_mib']} MiB reserve")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max", type=int, default=200, help="at most this many VMs (default 200)")
    ap.add_argument("--quick", action="store_true", help="at most 10 VMs")
    ap.add_argument("--reserve-mib", type=int, default=None, help="keep this much MemAvailable (default: RAM/4)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    res = run(10 if a.quick else a.max, a.reserve_mib)
    print_summary(res)
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
