"""Run every benchmark, Sparkler side by side with QEMU microvm, and write the report (``bench/run``).

Usage: .venv/bin/python bench/suite.py [--quick] [--out DIR]   (default DIR: build/bench)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import measure  # noqa: E402
import qemu  # noqa: E402
from guest.build import build  # noqa: E402
from report import write_report  # noqa: E402

PROFILES = {
    #          boot runs, exit runs, exits/run, memory runs, VMs/s window s, api start-up runs, api requests,
    #          jailer start-up runs
    "full": dict(boot_runs=31, exit_runs=11, exits=20000, mem_runs=7, vms_window_s=10.0, startup_runs=20, requests=1000,
                 jailer_runs=10),
    "quick": dict(boot_runs=7, exit_runs=5, exits=10000, mem_runs=2, vms_window_s=2.5, startup_runs=3, requests=100,
                  jailer_runs=3),
}
# block throughput (runs per workload) and idle-VM density (cap on VMs, time budget s)
PROFILES["full"].update(blk_runs=5, density_max=200, density_budget_s=150.0)
PROFILES["quick"].update(blk_runs=2, density_max=10, density_budget_s=30.0)

_ROW = re.compile(r"^(?P<label>\S.*?)\s+(?P<a>[\d.]+)\s+(?P<b>[\d.]+)\s+(?P<c>[\d.]+)\s+(?P<d>[\d.]+)(?:\s+.*)?$")


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _run_script(name: str, args: list[str], timeout: float = 300) -> str:
    res = subprocess.run([sys.executable, str(HERE / name), *args], capture_output=True, text=True,
                         timeout=timeout, check=False, cwd=REPO)
    if res.returncode != 0:
        raise RuntimeError(f"bench/{name} exited {res.returncode}: {(res.stderr or res.stdout).strip()[-400:]}")
    return res.stdout


def parse_table(text: str) -> list[tuple[str, list[float]]]:
    """Rows ``label  n1 n2 n3 n4 [text]`` of the tables that bench/api_*.py print."""
    rows = []
    for line in text.splitlines():
        m = _ROW.match(line.rstrip())
        if m:
            rows.append((m["label"].strip(), [float(m[k]) for k in "abcd"]))
    return rows


def api_startup(runs: int) -> dict[str, Any]:
    out = _run_script("api_startup.py", ["--runs", str(runs)])
    rows = [{"command": label, "wall_ms": v[0], "cpu_ms": v[1], "min_wall_ms": v[2], "min_cpu_ms": v[3]}
            for label, v in parse_table(out)]
    if not rows:
        raise RuntimeError(f"could not parse bench/api_startup.py output: {out[-400:]!r}")
    bare = re.search(r"python -S -c pass`: ([\d.]+) ms", out)
    return {"runs": runs, "rows": rows, "bare_ms": float(bare[1]) if bare else None}


def api_latency(requests: int) -> dict[str, Any]:
    out = _run_script("api_latency.py", ["--requests", str(requests)])
    rows = [{"endpoint": label, "median_us": v[0], "p99_us": v[1], "mean_us": v[2], "min_us": v[3]}
            for label, v in parse_table(out)]
    if not rows:
        raise RuntimeError(f"could not parse bench/api_latency.py output: {out[-400:]!r}")
    return {"requests": requests, "rows": rows}


def jailer_startup(runs: int) -> dict[str, Any]:
    """bench/jailer_startup.py (needs root): jailer start -> API socket ready in the jail."""
    out = _run_script("jailer_startup.py", ["--runs", str(runs)])
    rows = [{"variant": label, "median_ms": v[0], "min_ms": v[1], "max_ms": v[2], "cpu_ms": v[3]}
            for label, v in parse_table(out)]
    if not rows:
        raise RuntimeError(f"could not parse bench/jailer_startup.py output: {out[-400:]!r}")
    return {"runs": runs, "rows": rows}
def block_throughput(quick: bool, runs: int) -> dict[str, Any]:
    import block_throughput as bt

    return bt.run(quick=quick, runs=runs)


def density(max_vms: int, budget_s: float) -> dict[str, Any]:
    import density as dn

    return dn.run(max_vms=max_vms, budget_s=budget_s)


def vsock(quick: bool) -> dict[str, Any]:
    import vsock_throughput

    return vsock_throughput.run(quick=quick)


def net_throughput(quick: bool) -> dict[str, Any]:
    """bench/net_throughput.py (needs root): the virtio-net device path on a real tap."""
    with tempfile.TemporaryDirectory(prefix="sparkler-net-") as tmp:
        out = pathlib.Path(tmp) / "net.json"
        _run_script("net_throughput.py", [*(["--quick"] if quick else []), "--json", str(out)], timeout=600)
        if not out.exists():
            raise RuntimeError("skipped: needs root, iproute2 and /dev/net/tun")
        return json.loads(out.read_text())


def host_info() -> dict[str, Any]:
    info: dict[str, Any] = {"kernel": platform.release(), "cpus": os.cpu_count()}
    try:
        from sparkler.kvm.system import host_kind

        kind = host_kind()
    except Exception:  # noqa: BLE001 - informational only
        kind = "pvm" if os.path.exists("/sys/module/kvm_pvm") else "hardware"
    info["kvm"] = ("PVM (kvm_pvm: no hardware virtualisation; guest CPL0 emulated, CPL3 native)"
                   if kind == "pvm" else "hardware-assisted (VMX/SVM)")
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            info["mem_gib"] = round(kib / 2**20, 1)
    except OSError:
        pass
    info["load_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return info


def sparkler_version() -> str:
    try:
        import sparkler

        version = getattr(sparkler, "__version__", "?")
    except ImportError:
        version = "?"
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=False).stdout.strip()
    except OSError:
        commit = ""
    return f"{version} (git {commit})" if commit else version


def _section(results: dict, name: str, label: str, fn) -> None:
    t = time.perf_counter()
    _log(f"{label} ...")
    try:
        results[name] = fn()
    except Exception as exc:  # noqa: BLE001 - a failed benchmark is reported, the others still run
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        _log(f"{label}: FAILED: {exc}")
    _log(f"{label}: {time.perf_counter() - t:.1f} s")


def run(mode: str, out_dir: pathlib.Path) -> pathlib.Path:
    p = PROFILES[mode]
    started = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "mode": mode,
                 "host": host_info(), "sparkler": sparkler_version(), "python": platform.python_version()},
    }
    kernel = build()
    ok, reason = qemu.qemu_usable(kernel, measure.MEM_MIB)
    results["qemu"] = {"available": ok, "reason": reason, "version": qemu.qemu_version(),
                       "command": shlex.join(qemu.qemu_cmd(kernel, "console=ttyS0 bench.…", measure.MEM_MIB))}
    _log(f"QEMU: {'usable' if ok else 'not usable: ' + reason}")
    with tempfile.TemporaryDirectory(prefix="sparkler-bench-") as d:
        vmms = [measure.sparkler_vmm(kernel, pathlib.Path(d))]
        if ok:
            vmms.append(measure.qemu_vmm(kernel))
        _section(results, "boot", "boot times", lambda: measure.boot_times(vmms, p["boot_runs"]))
        _section(results, "api_startup", "start -> API ready", lambda: api_startup(p["startup_runs"]))
        _section(results, "memory", "memory overhead", lambda: measure.idle_memory(vmms, p["mem_runs"]))
        _section(results, "exits", "exits per second",
                 lambda: {"exits_per_run": p["exits"], **measure.exit_costs(vmms, p["exit_runs"], p["exits"])})
        _section(results, "vms_per_s", "VMs per second",
                 lambda: {"window_s": p["vms_window_s"], **measure.vms_per_second(vmms, p["vms_window_s"])})
        _section(results, "api_latency", "API latency", lambda: api_latency(p["requests"]))
        _section(results, "jailer_startup", "jailer start -> API ready", lambda: jailer_startup(p["jailer_runs"]))
    _section(results, "block", "block throughput", lambda: block_throughput(mode == "quick", p["blk_runs"]))
    _section(results, "density", "idle VM density", lambda: density(p["density_max"], p["density_budget_s"]))
    _section(results, "vsock", "vsock throughput", lambda: vsock(mode == "quick"))
    _section(results, "net", "virtio-net throughput", lambda: net_throughput(mode == "quick"))
    results["meta"]["host"]["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results["meta"]["duration_s"] = time.perf_counter() - started
    return write_report(results, out_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few runs per figure (under a minute)")
    ap.add_argument("--out", default=str(REPO / "build" / "bench"), help="output directory (default build/bench)")
    a = ap.parse_args()
    path = run("quick" if a.quick else "full", pathlib.Path(a.out))
    print(path.read_text())
    _log(f"report: {path} (plots and results.json beside it)")


if __name__ == "__main__":
    main()
