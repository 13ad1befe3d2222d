"""Report generation for ``bench/run``: results dict -> Markdown report + PNG plots. Pure: no VMs.

``write_report(results, out_dir)`` writes ``report.md``, ``results.json`` and one PNG per figure and
returns the path of the report. The results layout (every section may instead be ``{"error": str}``;
VMM keys are ``"Sparkler"`` and ``"QEMU"``, QEMU's may be absent)::

    meta        {"date", "mode", "duration_s", "host": {...}, "sparkler": str, "python": str}
    qemu        {"available": bool, "reason": str, "version": str, "command": str}
    boot        {VMM: {"first_ms": [..], "marker_ms": [..], "exit_ms": [..]}}
    api_startup {"runs": n, "rows": [{"command", "wall_ms", "cpu_ms", "min_wall_ms", "min_cpu_ms"}],
                 "bare_ms": float | None}
    memory      {VMM: {"overhead_kib": [..], "uss_kib": [..], "uss_excl_guest_kib": [..], "rss_kib": [..],
                       "guest_rss_kib": [..]}}
    exits       {"exits_per_run": N, VMM: {"pio_us": [..], "mmio_us": [..]}}
    vms_per_s   {"window_s": s, VMM: {"boots": n, "seconds": s, "per_s": x, "boot_ms": [..]}}
    api_latency {"requests": n, "rows": [{"endpoint", "median_us", "p99_us", "mean_us", "min_us"}]}
    jailer_startup {"runs": n, "rows": [{"variant", "median_ms", "min_ms", "max_ms", "cpu_ms"}]}
    block       bench/block_throughput.py's run(): {"runs", "depth", "workloads": [{"name", "mode", "bs",
                "requests", "mib_s", "iops", "guest_mib_s", "vmm_cpu_s_per_gib", "proc_cpu_s_per_gib",
                "kicks_per_request"}]} (each figure {"median", "min", "max", "n"})
    density     bench/density.py's run(): {"vms", "stop_reason", "rss_kib": [..], "pss_kib": [..],
                "uss_kib": [..], "drop_per_vm_kib", "fit_all_available", "fit_above_reserve", ...}
    vsock       {"runs", "mib", "connects", "host_to_guest_mib_s" | "guest_to_host_mib_s" | "echo_mib_s" |
                 "connect_us": {"median", "min", "max", "n"}}   (bench/vsock_throughput.py)
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
from typing import Any

VMMS = ("Sparkler", "QEMU")
PENDING = [
    ("Network throughput and latency in a guest (iperf3, ping)", "needs a Linux guest (PVM host: probe guest only)"),
]


# ---- statistics and formatting -----------------------------------------------------------------


def stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _num(x: float) -> str:
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt(values: list[float] | None, unit: str = "", scale: float = 1.0) -> str:
    """``median (min–max, n=N)`` or an em dash."""
    s = stats([v * scale for v in values or []])
    if s is None:
        return "—"
    u = f" {unit}" if unit else ""
    return f"**{_num(s['median'])}**{u} ({_num(s['min'])}–{_num(s['max'])}, n={s['n']})"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def _median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def _err(section: Any) -> str | None:
    if section is None:
        return "not run"
    if isinstance(section, dict) and "error" in section:
        return str(section["error"])
    return None


def _table(header: list[str], rows: list[list[str]], numeric: bool = True) -> list[str]:
    """Markdown table; with ``numeric`` every column but the first is right-aligned."""
    align = ["---" if i == 0 or not numeric else "---:" for i in range(len(header))]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _rate_from_us(values: list[float] | None) -> list[float]:
    return [1e6 / v for v in values or [] if v > 0]


# ---- Markdown -----------------------------------------------------------------------------------


def _vmm_rows(section: dict, metrics: list[tuple[str, str, str, float]], higher_is_better: bool = False) -> list[list[str]]:
    rows = []
    for label, key, unit, scale in metrics:
        sp = section.get("Sparkler", {}).get(key)
        qe = section.get("QEMU", {}).get(key) if section.get("QEMU") else None
        ms, mq = _median(sp), _median(qe)
        rows.append([label, fmt(sp, unit, scale), fmt(qe, unit, scale),
                     ratio(ms * scale if ms is not None else None, mq * scale if mq is not None else None)])
    return rows


def render_markdown(results: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    plots = plots or {}
    meta = results.get("meta", {})
    host = meta.get("host", {})
    q = results.get("qemu", {}) or {}
    qemu_ok = bool(q.get("available"))
    L: list[str] = []
    L += ["# Sparkler benchmark report", ""]
    L += [f"Generated by `bench/run{' --quick' if meta.get('mode') == 'quick' else ''}` on {meta.get('date', '?')}"
          f" ({meta.get('mode', '?')} mode, {meta.get('duration_s', 0):.0f} s). Every figure is "
          "**median (min–max, n=runs)**; ratios are Sparkler ÷ QEMU of the medians, measured in the same run "
          "with the two VMMs alternating (A B B A …) in the same time window.", ""]

    if meta.get("plots"):
        L += [f"Plots {meta['plots']}.", ""]
    L += ["## Host", ""]
    L += _table(["", ""], [
        ["KVM", host.get("kvm", "?")],
        ["CPU", host.get("cpu", "?")],
        ["Cores / memory", f"{host.get('cpus', '?')} / {host.get('mem_gib', '?')} GiB"],
        ["Host kernel", host.get("kernel", "?")],
        ["Load average (start → end)", f"{host.get('load_start', '?')} → {host.get('load_end', '?')}"],
        ["Sparkler", meta.get("sparkler", "?")],
        ["Python", meta.get("python", "?")],
        ["QEMU", q.get("version") or "not available"],
        ["Firecracker", "not available on this host (no binary; the registries reachable here do not ship it)"],
    ], numeric=False)
    L.append("")
    if qemu_ok:
        L += ["QEMU command line (the bench guest enters through its PVH note):", "", "```", q.get("command", ""), "```", ""]
    else:
        L += [f"**QEMU could not run here:** {q.get('reason') or 'unknown reason'}. QEMU columns are empty.", ""]

    # summary
    L += ["## Summary", ""]
    rows: list[list[str]] = []
    boot, mem, ex, vps = (results.get(k) for k in ("boot", "memory", "exits", "vms_per_s"))
    if not _err(boot):
        rows += _vmm_rows(boot, [("Start → first guest instruction", "first_ms", "ms", 1.0),
                                 ("Start → guest exit", "exit_ms", "ms", 1.0)])
    if not _err(mem):
        rows += _vmm_rows(mem, [("VMM memory overhead (RSS excl. guest RAM)", "overhead_kib", "MiB", 1 / 1024)])
    if not _err(ex):
        for kind in ("pio", "mmio"):
            sp = _rate_from_us(ex.get("Sparkler", {}).get(f"{kind}_us"))
            qe = _rate_from_us((ex.get("QEMU") or {}).get(f"{kind}_us"))
            rows.append([f"{kind.upper()} exits per second", fmt(sp, "k/s", 1e-3), fmt(qe, "k/s", 1e-3),
                         ratio(_median(sp), _median(qe))])
    if not _err(vps):
        sp_r = (vps.get("Sparkler") or {}).get("per_s")
        qe_r = (vps.get("QEMU") or {}).get("per_s")
        rows.append(["VMs created per second (sequential)", f"**{sp_r:.1f}**/s" if sp_r else "—",
                     f"**{qe_r:.1f}**/s" if qe_r else "—", ratio(sp_r, qe_r)])
    st = results.get("api_startup")
    if not _err(st) and st.get("rows"):
        r0 = st["rows"][-1]
        rows.append([f"Start → API socket ready (`{r0['command']}`)", f"**{r0['wall_ms']:.1f}** ms", "n/a (no API)", "—"])
    lat = results.get("api_latency")
    if not _err(lat) and lat.get("rows"):
        meds = [r["median_us"] for r in lat["rows"]]
        rows.append(["API request round trip (median over endpoints)", f"**{statistics.median(meds):.0f}** µs",
                     "n/a (no API)", "—"])
    js = results.get("jailer_startup")
    if not _err(js) and js.get("rows"):
        j0 = js["rows"][0]
        rows.append(["Jailer start → API socket ready in the jail", f"**{j0['median_ms']:.1f}** ms", "n/a (no jailer)",
                     "—"])
    L += _table(["Metric", "Sparkler", "QEMU microvm", "Sparkler ÷ QEMU"], rows)
    L += ["", "Times and memory: a ratio above 1 means Sparkler is slower or larger. Rates: above 1 means "
          "Sparkler is faster.", ""]

    # 1. boot
    L += ["## 1. VMM process start → first guest instruction → guest exit", ""]
    if (e := _err(boot)) is not None:
        L += [f"Not measured: {e}", ""]
    else:
        L += ["Same bench guest ELF for both (`bench/guest`, 1 vCPU, 128 MiB): Sparkler enters it through the "
              "Linux 64-bit boot protocol, QEMU through its PVH note. Host-side clock from just before "
              "`Popen` to the arrival on the VMM's stdout of the guest's first COM1 byte `S` (its first "
              "action), of `E` (after the empty exit loop), and to process exit (guest reset: i8042 for "
              "Sparkler, isa-debug-exit for QEMU).", ""]
        L += _table(["Metric", "Sparkler", "QEMU microvm", "Sparkler ÷ QEMU"],
                    _vmm_rows(boot, [("Start → first guest instruction", "first_ms", "ms", 1.0),
                                     ("Start → guest marker `E`", "marker_ms", "ms", 1.0),
                                     ("Start → VMM exit", "exit_ms", "ms", 1.0)]))
        L.append("")
        if "boot" in plots:
            L += [f"![boot times]({plots['boot']})", ""]

    # 2. api startup
    L += ["## 2. VMM process start → API socket ready (Sparkler only)", ""]
    if (e := _err(st)) is not None:
        L += [f"Not measured: {e}", ""]
    else:
        L += [f"From `bench/api_startup.py` (median of {st.get('runs', '?')} runs): wall time from `Popen` to a "
              "successful `connect()`, and the VMM's CPU time at that moment (schedstat, all threads). "
              "Firecracker's target is ≤ 8 CPU ms (typically ~12 ms wall) on its reference hosts. Firecracker "
              "is not available on this host, so there is no measured peer; QEMU has no comparable API "
              "socket in this configuration.", ""]
        L += _table(["Command", "Wall ms (median)", "CPU ms (median)", "Min wall ms", "Min CPU ms"],
                    [[f"`{r['command']}`", f"**{r['wall_ms']:.1f}**", f"{r['cpu_ms']:.1f}", f"{r['min_wall_ms']:.1f}",
                      f"{r['min_cpu_ms']:.1f}"] for r in st.get("rows", [])])
        if st.get("bare_ms") is not None:
            L += ["", f"Bare interpreter start (`python -S -c pass`): {st['bare_ms']:.1f} ms wall."]
        L.append("")
        if "api_startup" in plots:
            L += [f"![API start-up]({plots['api_startup']})", ""]

    # 3. memory
    L += ["## 3. VMM memory overhead (idle guest)", ""]
    if (e := _err(mem)) is not None:
        L += [f"Not measured: {e}", ""]
    else:
        L += ["Measured the way Firecracker's `MemoryMonitor` does: the sum of `Rss` over every mapping in "
              "`/proc/<pid>/smaps` except guest RAM (the mapping whose size equals the 128 MiB guest), taken "
              "0.3 s after the guest halted (`bench.idle=1`). USS is `Private_Clean + Private_Dirty` of the "
              "whole process (which includes the guest pages touched) and without guest RAM. Firecracker's "
              "target is ≤ 5 MiB overhead.", ""]
        L += _table(["Metric", "Sparkler", "QEMU microvm", "Sparkler ÷ QEMU"],
                    _vmm_rows(mem, [("Overhead: RSS excl. guest RAM", "overhead_kib", "MiB", 1 / 1024),
                                    ("USS, whole process", "uss_kib", "MiB", 1 / 1024),
                                    ("USS excl. guest RAM", "uss_excl_guest_kib", "MiB", 1 / 1024),
                                    ("RSS, whole process", "rss_kib", "MiB", 1 / 1024),
                                    ("Guest RAM resident", "guest_rss_kib", "MiB", 1 / 1024)]))
        L.append("")
        if "memory" in plots:
            L += [f"![memory]({plots['memory']})", ""]

    # 4. exits
    L += ["## 4. Exits per second (PIO and MMIO)", ""]
    if (e := _err(ex)) is not None:
        L += [f"Not measured: {e}", ""]
    else:
        n = ex.get("exits_per_run", "?")
        L += [f"The guest does {n} `out` to the unclaimed port 0x80 (PIO) or {n} 32-bit writes to the unclaimed "
              "address 0x30000000 (MMIO), each one exit to the VMM's user space. Per sample: ((E − S) with "
              f"{n} exits − (E − S) with none) ÷ {n}, where S and E are the host arrival times of the guest's "
              "bytes around the loop, so process start-up cancels out. The figure includes the guest's loop "
              "around each exit, which a PVM host emulates at CPL0 (about 3 µs per iteration), for both VMMs.", ""]
        rows = []
        for kind in ("pio", "mmio"):
            sp_us = ex.get("Sparkler", {}).get(f"{kind}_us")
            qe_us = (ex.get("QEMU") or {}).get(f"{kind}_us")
            sp, qe = _rate_from_us(sp_us), _rate_from_us(qe_us)
            rows.append([f"{kind.upper()} exits per second", fmt(sp, "k/s", 1e-3), fmt(qe, "k/s", 1e-3),
                         ratio(_median(sp), _median(qe))])
            rows.append([f"{kind.upper()} exit round trip", fmt(sp_us, "µs"), fmt(qe_us, "µs"),
                         ratio(_median(sp_us), _median(qe_us))])
        L += _table(["Metric", "Sparkler", "QEMU microvm", "Sparkler ÷ QEMU"], rows)
        L.append("")
        if "exits" in plots:
            L += [f"![exits]({plots['exits']})", ""]

    # 5. vms per second
    L += ["## 5. VMs created per second", ""]
    if (e := _err(vps)) is not None:
        L += [f"Not measured: {e}", ""]
    else:
        L += [f"Sequential create → boot → guest exit cycles of the bench guest (128 MiB), one VMM process each, "
              f"for about {vps.get('window_s', '?')} s of each VMM's wall time, the two VMMs alternating. "
              "Rate = boots ÷ the sum of their wall times.", ""]
        rows = []
        for name in VMMS:
            v = vps.get(name)
            if v:
                rows.append([name, f"**{v['per_s']:.2f}**/s", str(v["boots"]), f"{v['seconds']:.1f}",
                             fmt(v.get("boot_ms"), "ms")])
        L += _table(["VMM", "VMs per second", "Boots", "Seconds", "Per boot"], rows)
        sp_r = (vps.get("Sparkler") or {}).get("per_s")
        qe_r = (vps.get("QEMU") or {}).get("per_s")
        L += ["", f"Sparkler ÷ QEMU: {ratio(sp_r, qe_r)}", ""]
        if "vms_per_s" in plots:
            L += [f"![VMs per second]({plots['vms_per_s']})", ""]

    # 6. api latency
    L += ["## 6. API latency (Sparkler only)", ""]
    if (e := _err(lat)) is not None:
        L += [f"Not measured: {e}", ""]
    else:
        L += [f"From `bench/api_latency.py`: {lat.get('requests', '?')} requests per endpoint over one keep-alive "
              "connection to the Unix socket, before boot, VMM log level Error; microseconds. Firecracker "
              "states no API-latency target; it is not available here to measure.", ""]
        L += _table(["Endpoint", "Median µs", "p99 µs", "Mean µs", "Min µs"],
                    [[r["endpoint"], f"**{r['median_us']:.1f}**", f"{r['p99_us']:.1f}", f"{r['mean_us']:.1f}",
                      f"{r['min_us']:.1f}"] for r in lat.get("rows", [])])
        L.append("")
        if "api_latency" in plots:
            L += [f"![API latency]({plots['api_latency']})", ""]

    # 7. jailer start-up
    L += ["## 7. Jailer start → API socket ready in the jail (Sparkler only)", ""]
    if (e := _err(js)) is not None:
        L += [f"Not measured: {e}", ""]
    else:
        L += [f"From `bench/jailer_startup.py` ({js.get('runs', '?')} runs, as root): wall time from the jailer's "
              "`Popen` to a successful `connect()` to `<root>/run/firecracker.socket`, and the VMM's CPU time then "
              "(the jailer execs into the VMM, so its own work is included). The exec file is a Python script, so "
              "the jailer binds the interpreter, the venv, the package and `/usr` into the jail. The second row "
              "forwards `--no-seccomp`: the difference is what compiling and installing the filters costs.", ""]
        L += _table(["Variant", "Median ms", "Min ms", "Max ms", "CPU ms (median)"],
                    [[f"`{r['variant']}`", f"**{r['median_ms']:.1f}**", f"{r['min_ms']:.1f}", f"{r['max_ms']:.1f}",
                      f"{r['cpu_ms']:.1f}"] for r in js.get("rows", [])])
        L.append("")
    L += _block_section(results.get("block"), plots)
    L += _density_section(results.get("density"), plots)
    L += vsock_section(results.get("vsock"))
    net = results.get("net")
    if net is not None:
        L += ["## Network throughput (virtio-net device path, real tap)", ""]
        if (e := _err(net)) is not None:
            L += [f"Not measured: {e}", ""]
        else:
            L += ["From `bench/net_throughput.py`: the VMM's NetDevice on a real tap in a fresh network namespace, "
                  "the guest played by the mock driver (its work not timed); TX = guest → tap (`writev`), RX = tap → "
                  "guest buffers (`readv`); 64K TX is TSO (GSO TCPv4 vnet header), 64K RX uses merged 4 KiB buffers. "
                  "CPU = the VMM thread's user+system time per Gbit moved.", ""]
            L += _table(["Workload", "Packets/s", "Gbit/s", "CPU s per Gbit"],
                        [[name, f"**{r['pps']['median']:,.0f}**", f"{r['gbps']['median']:.2f}",
                          f"{r['cpu_s_per_gbit']['median']:.3f}"] for name, r in net.items() if isinstance(r, dict)])
            L.append("")

    L += ["## Pending", ""]
    L += _table(["Benchmark", "Status"], [[a, b] for a, b in PENDING], numeric=False)
    L.append("")

    L += ["## Caveats", ""]
    caveats = [
        "This host is a **PVM** host (`kvm_pvm`: KVM without hardware virtualisation): guest CPL0 code is "
        "emulated instruction by instruction (~0.75 µs each) and every exit is a PVM world switch. Absolute "
        "numbers are not comparable with Firecracker's published figures (bare-metal VMX hosts); the ratios "
        "against QEMU on the same host are the meaningful part."
        if "pvm" in str(host.get("kvm", "")).lower() else
        "Hardware-assisted KVM host.",
        "The host is shared with other tenants: medians are robust, but max values and means swing (up to 2× "
        "seen). Compare medians; rerun when the load average above is high.",
        "Sparkler is a Python process: roughly 40–45 ms of every start is interpreter start-up and imports, "
        "which is not VMM work in a compiled VMM.",
        "QEMU microvm is not Firecracker: it is a larger, general VMM with a different device model; it is the "
        "only peer that runs here. Its guest memory mapping is found by size like Sparkler's.",
        "Boot times include one serial exit for `S` and the pipe to the benchmark process; the guest is a "
        "few KiB, not a Linux kernel (a Linux guest cannot run its user space on PVM).",
    ]
    if meta.get("mode") == "quick":
        caveats.append("Quick mode: few runs per figure, so the spread is under-sampled.")
    L += [f"* {c}" for c in caveats]
    L.append("")
    return "\n".join(L)


def _s(figure: dict, digits: int = 0) -> str:
    """A run_stats dict as ``**median** (min–max)``."""
    return f"**{figure['median']:.{digits}f}** ({figure['min']:.{digits}f}–{figure['max']:.{digits}f})"


def _block_section(blk: Any, plots: dict[str, str]) -> list[str]:
    L = ["## 8. Block throughput (virtio-blk, Sparkler only)", ""]
    if (e := _err(blk)) is not None:
        return L + [f"Not measured: {e}", ""]
    L += [f"From `bench/block_throughput.py`: the probe guest (`probe.blk_bench`) keeps {blk.get('depth', '?')} "
          "requests in flight from CPL3 (native on PVM), reusing precomputed descriptor chains, kicking only when "
          "the device asks for it (EVENT_IDX) and without interrupts; the backing file is a 64–256 MiB regular "
          "file in the host page cache, so this measures the VMM's virtio path, not a disk. Throughput uses the "
          "host-side window (arrival of the guest's start and end lines); CPU is per GiB moved: the VMM thread "
          f"(all device work) and the whole process (which includes the vCPU polling). {blk.get('runs', '?')} "
          "runs per workload, a fresh VM each. QEMU is not measured here (its probe guest would need its own "
          "virtio-blk attachment).", ""]
    rows = []
    for w in blk.get("workloads", []):
        rows.append([w["name"], _s(w["mib_s"]), _s(w["iops"]), _s(w["vmm_cpu_s_per_gib"], 2),
                     f"{w['proc_cpu_s_per_gib']['median']:.2f}", f"{w['kicks_per_request']['median']:.3f}"])
    L += _table(["Workload", "MiB/s", "IOPS", "VMM-thread CPU s/GiB", "Process CPU s/GiB", "Kicks/request"], rows)
    L.append("")
    if "block" in plots:
        L += [f"![block throughput]({plots['block']})", ""]
    return L


def _density_section(dn: Any, plots: dict[str, str]) -> list[str]:
    L = ["## 9. Idle 128 MiB microVMs on this machine at once (Sparkler only)", ""]
    if (e := _err(dn)) is not None:
        return L + [f"Not measured: {e}", ""]
    fit = dn.get("fit_above_reserve")
    L += [f"From `bench/density.py`: {dn['vms']} idle probe VMs (1 vCPU, {dn.get('mem_mib', 128)} MiB, guest halted "
          f"after boot) started one after another and kept running together; stopped by the {dn['stop_reason']}. "
          "The host's `MemAvailable` drop per VM also counts kernel memory (page tables, KVM state) that no "
          "per-process figure shows. Extrapolated to the whole machine: "
          f"**{fit} VMs** above a {dn.get('reserve_mib', '?')} MiB reserve "
          f"({dn.get('fit_all_available')} in all of MemAvailable), assuming each guest keeps touching little of "
          "its RAM (demand paging; a guest that touches all of it costs up to 128 MiB more).", ""]
    rows = [
        ["RSS per VMM process", fmt(dn.get("rss_kib"), "MiB", 1 / 1024)],
        ["PSS per VMM process", fmt(dn.get("pss_kib"), "MiB", 1 / 1024)],
        ["USS per VMM process", fmt(dn.get("uss_kib"), "MiB", 1 / 1024)],
        ["MemAvailable drop per VM", f"**{dn['drop_per_vm_kib'] / 1024:.1f}** MiB"],
        ["CPU per idle VM", f"**{dn.get('cpu_ms_per_vm_s', 0):.2f}** ms/s"],
        ["Start → guest idle, while the others run", fmt(dn.get("boot_s"), "ms", 1000)],
        ["MemAvailable before → with all VMs", f"{dn['mem_available_before_mib']} → {dn['mem_available_after_mib']} MiB"],
    ]
    L += _table(["Cost", "Value"], rows)
    L.append("")
    if "density" in plots:
        L += [f"![density]({plots['density']})", ""]
    return L


def _extra_plots(results: dict[str, Any], plt: Any, save: Any) -> None:
    blk = results.get("block")
    if not _err(blk) and blk.get("workloads"):
        ws = blk["workloads"]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        names = [w["name"] for w in ws]
        for ax, key, label in ((a1, "mib_s", "MiB/s"), (a2, "iops", "IOPS")):
            meds = [w[key]["median"] for w in ws]
            err = [[m - w[key]["min"] for m, w in zip(meds, ws, strict=True)],
                   [w[key]["max"] - m for m, w in zip(meds, ws, strict=True)]]
            ax.bar(names, meds, yerr=err, capsize=4, color="#d9822b")
            ax.set_ylabel(label)
            ax.tick_params(axis="x", rotation=20)
        fig.suptitle("virtio-blk, probe guest (median, min–max)")
        save(fig, "block")
    dn = results.get("density")
    if not _err(dn) and dn.get("boot_s"):
        fig, ax = plt.subplots(figsize=(8, 4))
        xs = range(1, len(dn["boot_s"]) + 1)
        ax.plot(xs, [b * 1000 for b in dn["boot_s"]], color="#d9822b", label="start → idle (ms)")
        ax.set_xlabel("VMs running")
        ax.set_ylabel("ms")
        ax.set_title(f"{dn['vms']} idle microVMs: start time as the machine fills")
        ax.legend(loc="upper left")
        save(fig, "density")
def vsock_section(vs: Any) -> list[str]:
    """Markdown for bench/vsock_throughput.py's results (Sparkler only)."""
    L = ["## 10. Vsock throughput and connection set-up (Sparkler only)", ""]
    if (e := _err(vs)) is not None:
        return L + [f"Not measured: {e}", ""]
    L += [f"From `bench/vsock_throughput.py`: the probe guest's polling vsock driver (CPL3), "
          f"{vs.get('mib', '?')} MiB per stream, {vs.get('runs', '?')} runs (a fresh VM each); set-up latency is "
          f"`connect()` + `CONNECT 52` until `OK <port>` over {vs.get('connects', '?')} sequential host-initiated "
          "connections. Firecracker measures vsock with iperf3-vsock in a Linux guest, which cannot run here.", ""]

    def cell(s: dict, digits: int) -> list[str]:
        return [f"**{s['median']:.{digits}f}**", f"{s['min']:.{digits}f}", f"{s['max']:.{digits}f}"]

    rows = [[label, *cell(vs[key], 1)] for key, label in (
        ("host_to_guest_mib_s", "Host → guest MiB/s"), ("guest_to_host_mib_s", "Guest → host MiB/s"),
        ("echo_mib_s", "Echo (both ways at once) MiB/s"))]
    rows.append(["Connection set-up µs (host-initiated)", *cell(vs["connect_us"], 0)])
    L += _table(["Metric", "Median", "Min", "Max"], rows)
    return L + [""]


# ---- plots --------------------------------------------------------------------------------------


def write_plots(results: dict[str, Any], out_dir: pathlib.Path) -> dict[str, str]:
    """One PNG per figure that has data; returns {figure: file name}."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"Sparkler": "#d9822b", "QEMU": "#4a6fa5"}
    written: dict[str, str] = {}

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}.png", dpi=100)
        plt.close(fig)
        written[name] = f"{name}.png"

    def present(section: dict) -> list[str]:
        return [n for n in VMMS if section.get(n)]

    boot = results.get("boot")
    if not _err(boot) and present(boot):
        names = present(boot)
        fig, ax = plt.subplots(figsize=(8, 4))
        keys = [("first_ms", "first instruction"), ("marker_ms", "marker E"), ("exit_ms", "VMM exit")]
        width = 0.8 / len(names)
        for j, name in enumerate(names):
            data = [boot[name].get(k) or [0] for k, _ in keys]
            pos = [i + (j - (len(names) - 1) / 2) * width for i in range(len(keys))]
            bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=True,
                            medianprops={"color": "black"})
            for patch in bp["boxes"]:
                patch.set_facecolor(colors[name])
            ax.plot([], [], color=colors[name], linewidth=8, label=name)
        ax.set_xticks(range(len(keys)), [label for _, label in keys])
        ax.set_ylabel("ms from process start")
        ax.set_title("Boot of the bench guest (median, quartiles, min–max)")
        ax.legend()
        save(fig, "boot")

    def bars(section_name: str, metrics: list[tuple[str, str, float]], ylabel: str, title: str,
             rate: bool = False) -> None:
        section = results.get(section_name)
        if _err(section) or not present(section):
            return
        names = present(section)
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / len(names)
        for j, name in enumerate(names):
            meds, lo, hi = [], [], []
            for key, _, scale in metrics:
                vals = section[name].get(key) or []
                if rate:
                    vals = _rate_from_us(vals)
                vals = [v * scale for v in vals] or [0.0]
                m = statistics.median(vals)
                meds.append(m)
                lo.append(m - min(vals))
                hi.append(max(vals) - m)
            pos = [i + (j - (len(names) - 1) / 2) * width for i in range(len(metrics))]
            ax.bar(pos, meds, width * 0.9, yerr=[lo, hi], capsize=4, color=colors[name], label=name)
        ax.set_xticks(range(len(metrics)), [label for _, label, _ in metrics])
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend()
        save(fig, section_name)

    bars("memory", [("overhead_kib", "RSS excl. guest RAM", 1 / 1024), ("uss_excl_guest_kib", "USS excl. guest", 1 / 1024),
                    ("uss_kib", "USS whole process", 1 / 1024)], "MiB", "VMM memory overhead, idle guest (median, min–max)")
    bars("exits", [("pio_us", "PIO", 1e-3), ("mmio_us", "MMIO", 1e-3)], "thousand exits per second",
         "Exits per second (median, min–max)", rate=True)

    vps = results.get("vms_per_s")
    if not _err(vps) and present(vps):
        names = present(vps)
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.bar(names, [vps[n]["per_s"] for n in names], color=[colors[n] for n in names])
        ax.set_ylabel("VMs per second")
        ax.set_title("Sequential boots of the bench guest")
        save(fig, "vms_per_s")

    lat = results.get("api_latency")
    if not _err(lat) and lat.get("rows"):
        rows = lat["rows"]
        fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
        y = range(len(rows))
        ax.barh(y, [r["median_us"] for r in rows], color=colors["Sparkler"], label="median")
        ax.scatter([r["p99_us"] for r in rows], y, color="black", marker="|", s=200, label="p99")
        ax.set_yticks(y, [r["endpoint"] for r in rows])
        ax.invert_yaxis()
        ax.set_xlabel("µs per request")
        ax.set_title("Sparkler API latency")
        ax.legend()
        save(fig, "api_latency")

    st = results.get("api_startup")
    if not _err(st) and st.get("rows"):
        rows = st["rows"]
        fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.5))
        y = list(range(len(rows)))
        ax.barh([i - 0.2 for i in y], [r["wall_ms"] for r in rows], 0.4, color=colors["Sparkler"], label="wall")
        ax.barh([i + 0.2 for i in y], [r["cpu_ms"] for r in rows], 0.4, color="#888888", label="CPU")
        ax.set_yticks(y, [r["command"] for r in rows])
        ax.invert_yaxis()
        ax.set_xlabel("ms from process start to API socket ready (median)")
        ax.set_title("Sparkler start → API ready")
        ax.legend()
        save(fig, "api_startup")
    _extra_plots(results, plt, save)
    return written


def write_report(results: dict[str, Any], out_dir: str | os.PathLike[str]) -> pathlib.Path:
    """Write report.md, results.json and the PNG plots into ``out_dir``; returns the report path."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        plots = write_plots(results, out)
    except ImportError:  # matplotlib is the optional `bench` extra; the numbers still stand without it
        plots = {}
        results.setdefault("meta", {})["plots"] = "not written: matplotlib is not installed (pip install -e '.[bench]')"
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    path = out / "report.md"
    path.write_text(render_markdown(results, plots))
    return path
