"""virtio-balloon end to end: the probe guest touches RAM, the host inflates the balloon over the API,
the VMM's RSS drops by the inflated amount, statistics round-trip, and malformed requests leave the
VMM running."""

from __future__ import annotations

import json
import re
import time

BASE_ARGS = "console=ttyS0 reboot=k panic=1 probe.cpus=1"
MEM_MIB = 256
TOUCH_MIB = 96
INFLATE_MIB = 64


# A log line (one write, ending in a newline) can land in the middle of a guest console line: the
# guest's bytes and the logger share stdout. Cutting the log lines out gives the console back whole.
_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+ \[[^\]\n]*\][^\n]*\n")


def _console(vmm) -> str:
    return _LOG_LINE.sub("", vmm.stdout)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                return int(line.split()[1])
    raise AssertionError("no Rss line")


def _wait_for(vmm, pattern: str, deadline_s: float = 60) -> re.Match:
    deadline = time.monotonic() + deadline_s
    while True:
        m = re.search(pattern, _console(vmm))
        if m:
            return m
        assert time.monotonic() < deadline and vmm.proc.poll() is None, f"waiting for {pattern}\n" + vmm.describe()
        time.sleep(0.02)


def _wait_actual(vm, vmm, mib: int, deadline_s: float = 60) -> dict:
    deadline = time.monotonic() + deadline_s
    while True:
        stats = json.loads(vm.api.request("GET", "/balloon/statistics"))
        if stats["actual_mib"] == mib:
            return stats
        assert time.monotonic() < deadline and vmm.proc.poll() is None, f"actual {stats}\n" + vmm.describe()
        time.sleep(0.05)


def test_balloon_inflate_drops_rss_stats_round_trip_and_deflate(kvm, probe_kernel, tmp_path):
    from sparkler.sdk import MicroVM
    from tests.e2e.test_api_boot import Vmm

    vmm = Vmm(tmp_path)
    try:
        with MicroVM(vmm.sock) as vm:
            vmm.start()
            balloon = {"amount_mib": 0, "deflate_on_oom": True, "stats_polling_interval_s": 1}
            vm.api.request("PUT", "/balloon", balloon)
            boot_args = f"{BASE_ARGS} probe.mem_mib={MEM_MIB} probe.balloon={TOUCH_MIB}"
            vm.configure(str(probe_kernel), boot_args=boot_args, vcpus=1, mem_mib=MEM_MIB)
            vm.start()
            _wait_for(vmm, r"INFO balloon_touched")
            _wait_for(vmm, r"INFO balloon_actual pages=0")
            time.sleep(0.3)
            before = _rss_kib(vmm.proc.pid)

            vm.api.request("PATCH", "/balloon", {"amount_mib": INFLATE_MIB})
            stats = _wait_actual(vm, vmm, INFLATE_MIB)
            assert stats["target_mib"] == INFLATE_MIB and stats["target_pages"] == INFLATE_MIB * 256
            after = _rss_kib(vmm.proc.pid)
            drop_mib = (before - after) / 1024
            print(f"balloon: VMM RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB, "
                  f"drop {drop_mib:.1f} MiB for {INFLATE_MIB} MiB inflated")
            assert abs(drop_mib - INFLATE_MIB) <= 0.10 * INFLATE_MIB, (before, after, vmm.describe())
            assert json.loads(vm.api.request("GET", "/balloon"))["amount_mib"] == INFLATE_MIB

            # Statistics: the probe re-posts its buffer each time the device asks (every 1 s);
            # what it reported last shows in GET /balloon/statistics.
            # Wait for a report sent after the inflation (so available_memory is the balloon's size).
            stats_pattern = r"INFO balloon_stats n=(\d+) total=(\d+) available=(\d+)"
            posted_before = len(re.findall(stats_pattern, _console(vmm)))
            vm.api.request("PATCH", "/balloon/statistics", {"stats_polling_interval_s": 1})
            deadline = time.monotonic() + 30
            while True:
                stats = json.loads(vm.api.request("GET", "/balloon/statistics"))
                reports = re.findall(stats_pattern, _console(vmm))
                n, total, available = (int(x) for x in reports[-1])
                fresh = len(reports) > posted_before
                if fresh and stats.get("minor_faults") == n and stats.get("available_memory") == available:
                    break
                assert time.monotonic() < deadline, (stats, reports, vmm.describe())
                time.sleep(0.1)
            assert stats["total_memory"] == total
            assert available == INFLATE_MIB << 20

            # Deflate: the probe follows the new target, reports actual 0 and ends the run.
            vm.api.request("PATCH", "/balloon", {"amount_mib": 0})
            assert vmm.wait() == 0, vmm.describe()
        out = _console(vmm)
        targets = re.findall(r"INFO balloon_target pages=(\d+)", out)
        actuals = re.findall(r"INFO balloon_actual pages=(\d+)", out)
        assert targets == ["0", str(INFLATE_MIB * 256), "0"] and actuals == targets, vmm.describe()
        assert "PASS balloon held=0" in out, vmm.describe()
        assert "FAIL" not in out, vmm.describe()
    finally:
        vmm.stop()


def test_free_page_reporting_drops_rss(kvm, probe_kernel, tmp_path):
    from sparkler.sdk import MicroVM
    from tests.e2e.test_api_boot import Vmm

    vmm = Vmm(tmp_path, "--metrics-path", str(tmp_path / "metrics.json"))
    try:
        with MicroVM(vmm.sock) as vm:
            vmm.start()
            vm.api.request("PUT", "/balloon", {"amount_mib": 0, "deflate_on_oom": False, "free_page_reporting": True})
            boot_args = f"{BASE_ARGS} probe.mem_mib={MEM_MIB} probe.balloon={TOUCH_MIB} probe.balloon_report=1"
            vm.configure(str(probe_kernel), boot_args=boot_args, vcpus=1, mem_mib=MEM_MIB)
            vm.start()
            _wait_for(vmm, r"INFO balloon_touched")
            time.sleep(0.3)
            before = _rss_kib(vmm.proc.pid)
            vm.api.request("PATCH", "/balloon", {"amount_mib": 1})  # the probe's go signal
            reported = int(_wait_for(vmm, r"INFO balloon_reported mib=(\d+)").group(1))
            after = _rss_kib(vmm.proc.pid)
            vm.api.request("PUT", "/actions", {"action_type": "FlushMetrics"})
            drop_mib = (before - after) / 1024
            print(f"free page reporting: VMM RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB, "
                  f"drop {drop_mib:.1f} MiB for {reported} MiB reported")
            assert reported == TOUCH_MIB // 2
            assert abs(drop_mib - reported) <= 0.10 * reported, (before, after, vmm.describe())
            vm.api.request("PATCH", "/balloon", {"amount_mib": 0})
            assert vmm.wait() == 0, vmm.describe()
        assert "PASS balloon_report" in _console(vmm) and "FAIL" not in vmm.stdout, vmm.describe()
        totals = _balloon_totals(tmp_path / "metrics.json")
        assert totals["free_page_report_count"] == 1, totals
        assert totals["free_page_report_freed"] == reported << 20, totals
    finally:
        vmm.stop()


def _balloon_totals(path) -> dict:
    totals: dict = {}
    for line in path.read_text().splitlines():
        for key, value in json.loads(line)["balloon"].items():
            totals[key] = totals.get(key, 0) + value
    return totals


def test_balloon_malformed_requests_never_crash_the_vmm(kvm, probe_kernel, run_vmm, tmp_path):
    config = {
        "boot-source": {
            "kernel_image_path": str(probe_kernel),
            "boot_args": f"{BASE_ARGS} probe.mem_mib=128 probe.balloon=0 probe.balloon_bad=1",
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "balloon": {"amount_mib": 0, "deflate_on_oom": False},
    }
    run = run_vmm(config, args=("--metrics-path", str(tmp_path / "metrics.json")))
    assert not run.timed_out and run.returncode == 0, run.describe()
    assert not run.reports.fails, run.describe()
    for name in ("balloon_init", "balloon_bad_pfns", "balloon_bad_len", "balloon_bad_count", "balloon_bad_buffer"):
        assert run.reports.passed(name), f"no PASS {name}\n" + run.describe()
    totals = _balloon_totals(tmp_path / "metrics.json")
    # bad length + too many PFNs are refused (2), the buffer outside RAM breaks the device (1)
    assert totals["event_fails"] == 3 and totals["inflate_count"] == 1, totals
    # the balloon is the first virtio device (catalog 4.5)
    assert "virtio_mmio.device=4K@0xc0001000:5" in run.reports.named("cmdline", "INFO")[0].fields["value"]
