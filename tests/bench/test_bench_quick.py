"""bench/run still runs: the report generator on synthetic numbers, and each figure's measurement
on real VMs with tiny sizes (Sparkler, and QEMU microvm where installed). No timed assertions."""

from __future__ import annotations

import os
import pathlib
import random
import shutil
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402


def _synthetic() -> dict:
    rng = random.Random(8)

    def vals(center: float, n: int = 7) -> list[float]:
        return [center * rng.uniform(0.9, 1.3) for _ in range(n)]

    boot = {name: {"first_ms": vals(c), "marker_ms": vals(c + 1), "exit_ms": vals(c + 20)}
            for name, c in (("Sparkler", 85.0), ("QEMU", 50.0))}
    mem = {name: {"overhead_kib": vals(c), "uss_kib": vals(c * 0.7), "uss_excl_guest_kib": vals(c * 0.6),
                  "rss_kib": vals(c + 100), "guest_rss_kib": vals(100)}
           for name, c in (("Sparkler", 17000.0), ("QEMU", 34000.0))}
    return {
        "meta": {"date": "2026-11-27 02:00 UTC", "mode": "quick", "duration_s": 42.0, "sparkler": "0.1.0",
                 "python": "3.11.7", "host": {"kvm": "PVM (kvm_pvm)", "cpu": "AMD EPYC", "cpus": 2, "mem_gib": 23.5,
                                              "kernel": "6.18", "load_start": "1.0", "load_end": "1.1"}},
        "qemu": {"available": True, "reason": "", "version": "QEMU emulator version 7.2.22", "command": "qemu -M microvm"},
        "boot": boot,
        "api_startup": {"runs": 3, "bare_ms": 11.0, "rows": [
            {"command": "python -m sparkler", "wall_ms": 130.0, "cpu_ms": 120.0, "min_wall_ms": 120.0, "min_cpu_ms": 110.0}]},
        "memory": mem,
        "exits": {"exits_per_run": 5000, "Sparkler": {"pio_us": vals(17.5), "mmio_us": vals(18.0)},
                  "QEMU": {"pio_us": vals(10.0), "mmio_us": vals(10.0)}},
        "vms_per_s": {"window_s": 2.5, "Sparkler": {"boots": 20, "seconds": 2.5, "per_s": 8.0, "boot_ms": vals(125.0)},
                      "QEMU": {"boots": 44, "seconds": 2.5, "per_s": 17.6, "boot_ms": vals(55.0)}},
        "jailer_startup": {"runs": 3, "rows": [
            {"variant": "jailer -> VMM (seccomp filters, default)", "median_ms": 180.0, "min_ms": 170.0,
             "max_ms": 220.0, "cpu_ms": 150.0},
            {"variant": "jailer -> VMM -- --no-seccomp", "median_ms": 170.0, "min_ms": 160.0, "max_ms": 200.0,
             "cpu_ms": 140.0}]},
        "api_latency": {"requests": 100, "rows": [
            {"endpoint": "GET /", "median_us": 105.0, "p99_us": 190.0, "mean_us": 111.0, "min_us": 95.0},
            {"endpoint": "PUT /machine-config", "median_us": 112.0, "p99_us": 187.0, "mean_us": 119.0, "min_us": 105.0}]},
        "block": {"runs": 2, "depth": 64, "workloads": [
            {"name": name, "mode": mode, "bs": bs, "requests": 1024,
             **{k: report.stats(vals(c)) for k, c in (("mib_s", mib), ("iops", mib * 1048576 / bs),
                                                      ("guest_mib_s", mib), ("vmm_cpu_s_per_gib", 0.25),
                                                      ("proc_cpu_s_per_gib", 0.6), ("kicks_per_request", 0.01))}}
            for name, mode, bs, mib in (("seq read 128K", "read", 131072, 1200.0),
                                        ("rand read 4K", "randread", 4096, 110.0))]},
        "density": {"vms": 10, "mem_mib": 128, "stop_reason": "cap of 10 VMs", "mem_total_mib": 24000,
                    "mem_available_before_mib": 22000, "mem_available_after_mib": 21840, "reserve_mib": 6000,
                    "drop_per_vm_kib": 16000.0, "rss_kib": vals(19000.0, 10), "pss_kib": vals(12000.0, 10),
                    "uss_kib": vals(11500.0, 10), "boot_s": vals(0.6, 10), "cpu_ms_per_vm_s": 0.01,
                    "fit_all_available": 1400, "fit_above_reserve": 1020, "seconds": 9.0},
        "vsock": {"runs": 2, "mib": 16, "connects": 20,
                  **{k: report.stats(vals(c, 2)) for k, c in (("host_to_guest_mib_s", 120.0),
                                                             ("guest_to_host_mib_s", 140.0), ("echo_mib_s", 60.0),
                                                             ("connect_us", 340.0))}},
    }


def test_markdown_tables_from_synthetic_numbers():
    res = _synthetic()
    md = report.render_markdown(res)
    assert md.startswith("# Sparkler benchmark report")
    assert "| Metric | Sparkler | QEMU microvm | Sparkler ÷ QEMU |" in md
    s = report.stats(res["boot"]["Sparkler"]["first_ms"])
    q = report.stats(res["boot"]["QEMU"]["first_ms"])
    row = next(line for line in md.splitlines() if line.startswith("| Start → first guest instruction |"))
    assert f"{s['median'] / q['median']:.2f}×" in row
    assert f"n={s['n']}" in row
    assert "| Jailer start → API socket ready in the jail | **180.0** ms |" in md
    for heading in ("## Host", "## Summary", "## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6.", "## 7.", "## 8.",
                    "## 9.", "## Pending",
                    "## Caveats"):
        assert heading in md
    assert "QEMU emulator version 7.2.22" in md
    assert "Firecracker" in md and "not available" in md
    assert "PVM" in md and "virtio-block is not wired" not in md
    seq = res["block"]["workloads"][0]["mib_s"]
    row = next(line for line in md.splitlines() if line.startswith("| seq read 128K |"))
    assert f"**{seq['median']:.0f}**" in row
    assert "**1020 VMs**" in md
    assert next(line for line in md.splitlines() if line.startswith("| MemAvailable drop per VM |")).endswith(
        "**15.6** MiB |")
    # every table row has as many cells as its header
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            width = lines[i - 1].count("|")
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                assert lines[j].count("|") == width, lines[j]
                j += 1


def test_markdown_vsock_section():
    res = _synthetic()
    md = report.render_markdown(res)
    row = next(line for line in md.splitlines() if line.startswith("| Host → guest MiB/s |"))
    assert f"**{res['vsock']['host_to_guest_mib_s']['median']:.1f}**" in row
    assert "| Connection set-up µs (host-initiated) |" in md
    res["vsock"] = {"error": "RuntimeError: no vsock"}
    assert "Not measured: RuntimeError: no vsock" in report.render_markdown(res)


def test_vsock_benchmark_still_runs(live):
    import vsock_throughput

    res = vsock_throughput.run(quick=True, runs=1, mib=2)
    for key in ("host_to_guest_mib_s", "guest_to_host_mib_s", "echo_mib_s"):
        assert res[key]["median"] > 0
    assert res["connect_us"]["n"] == 20
    vsock_throughput.print_table(res)


def test_markdown_without_qemu_and_with_failed_sections():
    res = _synthetic()
    res["qemu"] = {"available": False, "reason": "qemu-system-x86_64 is not installed", "version": None}
    for section in ("boot", "memory", "exits", "vms_per_s"):
        res[section].pop("QEMU")
    res["api_latency"] = {"error": "RuntimeError: boom"}
    res["block"] = {"error": "RuntimeError: no disk"}
    del res["density"]
    md = report.render_markdown(res)
    assert "QEMU could not run here:** qemu-system-x86_64 is not installed" in md
    assert "Not measured: RuntimeError: boom" in md
    assert "Not measured: RuntimeError: no disk" in md and "Not measured: not run" in md
    assert "| PIO exits per second |" in md


def test_write_report_writes_markdown_json_and_plots(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (bench extra: pip install -e '.[bench]')")
    path = report.write_report(_synthetic(), tmp_path)
    md = path.read_text()
    names = ["boot", "memory", "exits", "vms_per_s", "api_latency", "api_startup", "block", "density"]
    for name in names:
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name}.png)" in md
    assert (tmp_path / "results.json").is_file()


# ---- the measurements themselves, tiny sizes -------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    if not os.path.exists("/dev/kvm") or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("host limitation: /dev/kvm is absent or not accessible")
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed: the bench guest is compiled at run time")
    import measure
    import qemu
    from guest.build import build

    kernel = build()
    vmms = [measure.sparkler_vmm(kernel, tmp_path_factory.mktemp("bench"))]
    ok, _ = qemu.qemu_usable(kernel, measure.MEM_MIB)
    if ok:
        vmms.append(measure.qemu_vmm(kernel))
    return measure, vmms


@pytest.mark.parametrize("peer", ["Sparkler", "QEMU"])
def test_each_figure_still_runs(live, peer):
    measure, vmms = live
    vmm = [v for v in vmms if v.name == peer]
    if not vmm:
        pytest.skip("qemu-system-x86_64 is not installed or cannot run here (optional side-by-side peer)")
    boot = measure.boot_times(vmm, 1)[peer]
    assert 0 < boot["first_ms"][0] <= boot["marker_ms"][0] <= boot["exit_ms"][0]
    mem = measure.idle_memory(vmm, 1)[peer]
    assert mem["overhead_kib"][0] > 0 and mem["uss_kib"][0] > 0
    exits = measure.exit_costs(vmm, 1, 200)[peer]
    assert len(exits["pio_us"]) == len(exits["mmio_us"]) == 1
    vps = measure.vms_per_second(vmm, 0.2)[peer]
    assert vps["boots"] >= 1 and vps["per_s"] > 0


@pytest.mark.parametrize("script", ["api_startup", "api_latency"])
def test_api_benchmarks_still_run(live, script):
    if not (BENCH / f"{script}.py").is_file():
        pytest.skip(f"bench/{script}.py is not in this tree")
    import suite

    res = suite.api_startup(1) if script == "api_startup" else suite.api_latency(5)
    assert res["rows"]


def test_jailer_startup_benchmark_still_runs(live):
    if os.geteuid() != 0:
        pytest.skip("the jailer needs root (mknod, pivot_root, setuid)")
    import suite

    res = suite.jailer_startup(1)
    assert [r["variant"] for r in res["rows"]] == ["jailer -> VMM (seccomp filters, default)",
                                                   "jailer -> VMM -- --no-seccomp"]  # fmt: skip
    for row in res["rows"]:
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"] and row["cpu_ms"] > 0


def test_block_benchmark_still_runs(live):
    import block_throughput

    res = block_throughput.run(quick=True, runs=1)
    assert [w["mode"] for w in res["workloads"]] == ["read", "write", "randread", "randwrite"]
    for w in res["workloads"]:
        assert w["mib_s"]["median"] > 0 and w["iops"]["median"] > 0 and w["vmm_cpu_s_per_gib"]["n"] == 1


def test_density_benchmark_still_runs(live):
    import density

    res = density.run(max_vms=2, budget_s=60)
    assert res["vms"] == 2 and res["stop_reason"] == "cap of 2 VMs"
    assert len(res["rss_kib"]) == 2 and min(res["uss_kib"]) > 0


def test_write_report_without_matplotlib(tmp_path, monkeypatch):
    def no_matplotlib(results, out_dir):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(report, "write_plots", no_matplotlib)
    md = report.write_report(_synthetic(), tmp_path).read_text()
    assert "matplotlib is not installed" in md
    assert "| Start → first guest instruction |" in md
    assert not list(tmp_path.glob("*.png"))


def test_bench_mmds_stack_runs_and_prints_rates():
    import subprocess
    import sys

    script = pathlib.Path(__file__).resolve().parents[2] / "bench" / "mmds_stack.py"
    out = subprocess.run(
        [sys.executable, str(script), "--requests", "20", "--answer-bytes", "3000"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    assert out.count("requests/s") == 2, out
