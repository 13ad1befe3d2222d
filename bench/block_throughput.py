"""virtio-blk throughput, driven by the probe guest (``probe.blk_bench``). Prints numbers, asserts nothing.

Workloads (one VM per run, a fresh VMM process each time, ``--no-api --config-file``):

* ``seq read 128K`` / ``seq write 128K``: sequential 128 KiB requests (MiB/s);
* ``rand read 4K`` / ``rand write 4K``: 4 KiB requests at scattered 4 KiB-aligned sectors (IOPS).

The guest keeps ``depth`` requests in flight from CPL3 (native on PVM hosts; see
``sparkler/testing/guests/blkbench.c``): precomputed descriptor chains, EVENT_IDX so it kicks only
when the device went idle, no interrupts. The backing file is a regular file in the page cache, so
this measures the VMM's virtio path (ring handling in Python + ``preadv``/``pwritev`` into guest
RAM), not a disk.

Per run: guest time (LAPIC clock around the loop) and host time (arrival of the start and end
lines on the serial console); throughput uses the host window. CPU: ``/proc/<pid>/task/<pid>/stat``
of the VMM (main) thread, which does all device work, and of the whole process (which also counts
the vCPU thread: the guest polling the used ring), per GiB moved.

Usage: .venv/bin/python bench/block_throughput.py [--quick] [--runs N] [--json FILE] [--profile FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import select
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
GIB = 1 << 30
MIB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")

#                name             mode         bs      full n  quick n
WORKLOADS = [
    ("seq read 128K", "read", 131072, 8192, 1024),
    ("seq write 128K", "write", 131072, 8192, 1024),
    ("rand read 4K", "randread", 4096, 40000, 4000),
    ("rand write 4K", "randwrite", 4096, 40000, 4000),
]
DEPTH = 64
DISK_MIB = {"full": 256, "quick": 64}
_PASS = re.compile(r"(PASS|FAIL) blk_bench ([^\n]*)\n")


def _kernel() -> pathlib.Path:
    sys.path.insert(0, str(REPO))
    from sparkler.testing.probe import build_probe

    return build_probe("linux")


def make_disk(path: pathlib.Path, mib: int) -> None:
    chunk = os.urandom(MIB)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(chunk)


def _cpu_s(pid: int, tid: int | None = None) -> float:
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def run_once(kernel: pathlib.Path, disk: pathlib.Path, tmp: pathlib.Path, mode: str, bs: int, n: int,
             depth: int = DEPTH, extra: str = "", profile: str | None = None, timeout: float = 120.0,
             drive: dict | None = None) -> dict:
    """One VM: boot, run the workload, return host/guest times and CPU. ``drive`` adds keys to the
    drive's config (e.g. a ``rate_limiter``); ``extra`` adds guest command-line words."""
    args = (f"console=ttyS0 reboot=k panic=1 probe.blk_bench={mode} probe.blk_bs={bs} probe.blk_n={n} "
            f"probe.blk_depth={depth} {extra}").strip()
    cfg = {
        "boot-source": {"kernel_image_path": str(kernel), "boot_args": args},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "drives": [{"drive_id": "rootfs", "is_root_device": True, "path_on_host": str(disk), **(drive or {})}],
    }
    cfg_path = tmp / "bench-blk.json"
    cfg_path.write_text(json.dumps(cfg))
    prefix = [sys.executable, "-m", "cProfile", "-o", profile, "-m", "sparkler"] if profile else [
        sys.executable, "-m", "sparkler"]
    argv = [*prefix, "--no-api", "--config-file", str(cfg_path), "--level", "Error"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            cwd=tmp, env=env)
    out = b""
    marks: dict[str, tuple[float, float, float]] = {}
    result: dict | None = None
    deadline = time.monotonic() + timeout
    try:
        fd = proc.stdout.fileno()
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(fd, 65536)
            now = time.monotonic()
            if not chunk:
                break
            out += chunk
            if "start" not in marks and b"INFO blk_bench_start" in out:
                marks["start"] = (now, _cpu_s(proc.pid, proc.pid), _cpu_s(proc.pid))
            m = _PASS.search(out.decode("utf-8", "replace")) if "start" in marks else None
            if m:
                marks["end"] = (now, _cpu_s(proc.pid, proc.pid), _cpu_s(proc.pid))
                fields = dict(kv.split("=", 1) for kv in m.group(2).split() if "=" in kv)
                result = {"ok": m.group(1) == "PASS", **fields}
                break
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().decode("utf-8", "replace")
        proc.stdout.close()
        proc.stderr.close()
    if result is None or "start" not in marks or "end" not in marks:
        raise RuntimeError(f"no blk_bench result (exit {proc.returncode}): {out[-600:]!r} {err[-400:]!r}")
    if not result["ok"]:
        raise RuntimeError(f"blk_bench failed: {result}")
    (t0, vmm0, all0), (t1, vmm1, all1) = marks["start"], marks["end"]
    moved = int(result["bytes"])
    host_s = t1 - t0
    guest_s = int(result["us"]) / 1e6
    return {
        "requests": int(result["n"]), "bytes": moved, "host_s": host_s, "guest_s": guest_s,
        "mib_s": moved / MIB / host_s, "iops": int(result["n"]) / host_s,
        "vmm_cpu_s_per_gib": (vmm1 - vmm0) / (moved / GIB), "proc_cpu_s_per_gib": (all1 - all0) / (moved / GIB),
        "kicks": int(result["kicks"]),
    }


def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def run(quick: bool = False, runs: int | None = None, profile: str | None = None) -> dict:
    kernel = _kernel()
    runs = runs or (2 if quick else 5)
    out: dict = {"runs": runs, "depth": DEPTH, "workloads": []}
    with tempfile.TemporaryDirectory(prefix="sparkler-blkbench-") as d:
        tmp = pathlib.Path(d)
        disk = tmp / "disk.img"
        make_disk(disk, DISK_MIB["quick" if quick else "full"])
        for name, mode, bs, n_full, n_quick in WORKLOADS:
            n = n_quick if quick else n_full
            samples = [run_once(kernel, disk, tmp, mode, bs, n, profile=profile if i == 0 else None)
                       for i in range(runs)]
            out["workloads"].append({
                "name": name, "mode": mode, "bs": bs, "requests": n,
                "mib_s": stats([s["mib_s"] for s in samples]),
                "iops": stats([s["iops"] for s in samples]),
                "guest_mib_s": stats([s["bytes"] / MIB / s["guest_s"] for s in samples]),
                "vmm_cpu_s_per_gib": stats([s["vmm_cpu_s_per_gib"] for s in samples]),
                "proc_cpu_s_per_gib": stats([s["proc_cpu_s_per_gib"] for s in samples]),
                "kicks_per_request": stats([s["kicks"] / s["requests"] for s in samples]),
            })
            profile = None
    return out


def print_table(res: dict) -> None:
    print(f"virtio-blk, probe guest, queue depth {res['depth']}, {res['runs']} runs each: median (min-max)")
    print(f"{'workload':<16} {'MiB/s':>22} {'IOPS':>24} {'VMM-thread CPU s/GiB':>22} {'process CPU s/GiB':>19} "
          f"{'kicks/req':>9}")
    for w in res["workloads"]:
        def fmt(s: dict, p: int = 0) -> str:
            return f"{s['median']:.{p}f} ({s['min']:.{p}f}-{s['max']:.{p}f})"
        print(f"{w['name']:<16} {fmt(w['mib_s']):>22} {fmt(w['iops']):>24} {fmt(w['vmm_cpu_s_per_gib'], 2):>22} "
              f"{w['proc_cpu_s_per_gib']['median']:>19.2f} {w['kicks_per_request']['median']:>9.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer, smaller runs")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--profile", default=None, help="cProfile the VMM of each workload's first run into FILE")
    a = ap.parse_args()
    res = run(a.quick, a.runs, a.profile)
    print_table(res)
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
