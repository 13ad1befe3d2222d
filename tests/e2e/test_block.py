"""virtio-blk end to end: the probe guest boots with drives attached from the config file."""

from __future__ import annotations

import os
import re

import pytest

from tests.conftest import without_pvm_compat

BASE_ARGS = "console=ttyS0 reboot=k panic=1 probe.cpus=1 probe.mem_mib=128"


def _config(kernel, drives: list[dict], extra: str = "") -> dict:
    return {
        "boot-source": {"kernel_image_path": str(kernel), "boot_args": f"{BASE_ARGS} {extra}".strip()},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "drives": drives,
    }


def _assert_clean(run) -> None:
    assert not run.timed_out, run.describe()
    assert run.reports.finished, run.describe()
    assert not run.reports.fails, run.describe()
    assert run.returncode == 0, run.describe()


def test_drives_appear_on_the_guest_command_line(kvm, probe_kernel, run_vmm, tmp_path):
    root, data = tmp_path / "root.img", tmp_path / "data.img"
    root.write_bytes(bytes(64 * 1024))
    data.write_bytes(bytes(64 * 1024))
    drives = [
        {"drive_id": "data", "is_root_device": False, "path_on_host": str(data)},
        {"drive_id": "rootfs", "is_root_device": True, "path_on_host": str(root), "is_read_only": True},
    ]
    run = run_vmm(_config(probe_kernel, drives))
    _assert_clean(run)
    line = without_pvm_compat(run.reports.named("cmdline", "INFO")[0].fields["value"])
    assert line == (
        f"{BASE_ARGS} pci=off root=/dev/vda ro virtio_mmio.device=4K@0xc0001000:5 virtio_mmio.device=4K@0xc0002000:6"
    ), run.describe()
    assert root.read_bytes() == bytes(64 * 1024)


def test_missing_backing_file_is_a_clear_startup_error(kvm, probe_kernel, run_vmm, tmp_path):
    drives = [{"drive_id": "rootfs", "is_root_device": True, "path_on_host": str(tmp_path / "missing.img")}]
    run = run_vmm(_config(probe_kernel, drives))
    assert not run.timed_out, run.describe()
    assert run.returncode != 0, run.describe()
    assert "missing.img" in run.stdout + run.stderr, run.describe()


def test_async_io_engine_is_refused(kvm, probe_kernel, run_vmm, tmp_path):
    img = tmp_path / "root.img"
    img.write_bytes(bytes(4096))
    drives = [{"drive_id": "rootfs", "is_root_device": True, "path_on_host": str(img), "io_engine": "Async"}]
    run = run_vmm(_config(probe_kernel, drives))
    assert run.returncode != 0, run.describe()
    assert "Async" in run.stdout + run.stderr, run.describe()


def test_put_drive_over_the_api_then_boot(kvm, probe_kernel, tmp_path):
    import json

    from sparkler.sdk import MicroVM
    from sparkler.sdk.client import ApiError
    from tests.e2e.test_api_boot import Vmm

    img = tmp_path / "root.img"
    img.write_bytes(bytes(64 * 1024))
    vmm = Vmm(tmp_path)
    try:
        with MicroVM(vmm.sock) as vm:
            vmm.start()
            body = {"drive_id": "rootfs", "is_root_device": True, "path_on_host": str(img), "is_read_only": True}
            vm.api.request("PUT", "/drives/rootfs", body)
            second_root = {"drive_id": "other", "is_root_device": True, "path_on_host": str(img)}
            try:
                vm.api.request("PUT", "/drives/other", second_root)
                raise AssertionError("a second root device was accepted")
            except ApiError as e:
                assert "A root block device already exists!" in str(e)
            config = json.loads(vm.api.request("GET", "/vm/config"))
            assert [d["drive_id"] for d in config["drives"]] == ["rootfs"]
            assert config["drives"][0]["is_read_only"] is True
            vm.configure(str(probe_kernel), boot_args=BASE_ARGS, vcpus=1, mem_mib=128)
            vm.start()
            assert vmm.wait() == 0, vmm.describe()
        out = vmm.stdout
        assert f"{BASE_ARGS} pci=off root=/dev/vda ro virtio_mmio.device=4K@0xc0001000:5" in out, vmm.describe()
        assert "INFO probe done" in out, vmm.describe()
    finally:
        vmm.stop()


def _pattern() -> bytes:
    return bytes((i * 7 + 0x5A) & 0xFF for i in range(512))


def test_probe_writes_reads_flushes_and_gets_id(kvm, probe_kernel, run_vmm, tmp_path):
    img = tmp_path / "data.img"
    original = bytes((i * 13) & 0xFF for i in range(64 * 1024))
    img.write_bytes(original)
    drives = [{"drive_id": "rootfs", "is_root_device": True, "path_on_host": str(img), "cache_type": "Writeback"}]
    run = run_vmm(_config(probe_kernel, drives, "probe.blk=rw probe.blk_sector=3"))
    _assert_clean(run)
    for name in ("blk_init", "blk_write", "blk_read", "blk_flush", "blk_id", "blk_range"):
        assert run.reports.passed(name), f"no PASS {name}\n" + run.describe()
    assert run.reports.named("blk_init", "PASS")[0].fields["capacity"] == "128"
    after = img.read_bytes()
    assert after[3 * 512 : 4 * 512] == _pattern()
    assert after[: 3 * 512] == original[: 3 * 512] and after[4 * 512 :] == original[4 * 512 :]
    st = os.stat(img)
    expected_id = f"{st.st_dev}{st.st_rdev}{st.st_ino}"[:20]
    assert run.reports.named("blk_id", "PASS")[0].fields["id"] == expected_id


def test_probe_read_only_drive_refuses_writes(kvm, probe_kernel, run_vmm, tmp_path):
    img = tmp_path / "ro.img"
    original = bytes((i * 13) & 0xFF for i in range(64 * 1024))
    img.write_bytes(original)
    drives = [{"drive_id": "rootfs", "is_root_device": True, "path_on_host": str(img), "is_read_only": True}]
    run = run_vmm(_config(probe_kernel, drives, "probe.blk=ro"))
    _assert_clean(run)
    for name in ("blk_init", "blk_ro_write", "blk_read", "blk_id", "blk_range"):
        assert run.reports.passed(name), f"no PASS {name}\n" + run.describe()
    assert run.reports.named("blk_init", "PASS")[0].fields["ro"] == "1"
    assert img.read_bytes() == original


def test_rate_limited_drive_throttles_and_resumes_on_its_timer(kvm, probe_kernel, run_vmm, tmp_path):
    img = tmp_path / "data.img"
    img.write_bytes(bytes(64 * 1024))
    drive = {"drive_id": "rootfs", "is_root_device": True, "path_on_host": str(img), "cache_type": "Writeback"}
    names = ("blk_init", "blk_write", "blk_read", "blk_flush", "blk_id", "blk_range")
    # One op per 100 ms: the write takes the initial token, read, flush and get-id each wait for the
    # limiter's timerfd (catalog 6: 100 ms refill timer), so the run cannot take less than 300 ms.
    limited_drive = dict(drive, rate_limiter={"ops": {"size": 1, "refill_time": 100}})
    limited = run_vmm(_config(probe_kernel, [limited_drive], "probe.blk=rw"))
    _assert_clean(limited)
    for name in names:
        assert limited.reports.passed(name), f"no PASS {name}\n" + limited.describe()
    assert limited.duration_s >= 0.3, limited.duration_s
    assert img.read_bytes()[1024:1536] == _pattern()


def test_patch_drive_after_boot_resizes_what_the_guest_sees(kvm, probe_kernel, tmp_path):
    import time

    from sparkler.sdk import MicroVM
    from tests.e2e.test_api_boot import Vmm

    small, big = tmp_path / "small.img", tmp_path / "big.img"
    small.write_bytes(bytes(64 * 1024))
    big.write_bytes(bytes(256 * 1024))
    vmm = Vmm(tmp_path)
    try:
        with MicroVM(vmm.sock) as vm:
            vmm.start()
            body = {"drive_id": "rootfs", "is_root_device": True, "path_on_host": str(small)}
            vm.api.request("PUT", "/drives/rootfs", body)
            vm.configure(str(probe_kernel), boot_args=f"{BASE_ARGS} probe.blk=rw probe.blk_resize=1", vcpus=1, mem_mib=128)
            vm.start()
            deadline = time.monotonic() + 30
            while "INFO blk_waiting" not in vmm.stdout:
                assert time.monotonic() < deadline and vmm.proc.poll() is None, vmm.describe()
                time.sleep(0.02)
            vm.api.request("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": str(big)})
            assert vmm.wait() == 0, vmm.describe()
        out = vmm.stdout
        assert "PASS blk_init capacity=128 " in out, vmm.describe()
        # isr: bit 1 is the config change; bit 0 (vring) stays set since the polling driver never acks it.
        assert re.search(r"PASS blk_resize capacity=512 isr=[23]\b", out), vmm.describe()
        assert "FAIL" not in out, vmm.describe()
    finally:
        vmm.stop()


def _metric_totals(path) -> dict[str, dict[str, int]]:
    """Sum the per-flush deltas of every counter group in a metrics file (one JSON object a line)."""
    import json

    totals: dict[str, dict[str, int]] = {}
    for line in path.read_text().splitlines():
        for group, values in json.loads(line).items():
            if isinstance(values, dict):
                dst = totals.setdefault(group, {})
                for key, value in values.items():
                    if isinstance(value, int):
                        dst[key] = dst.get(key, 0) + value
    return totals


def test_per_drive_metrics_in_firecracker_shape(kvm, probe_kernel, run_vmm, tmp_path):
    root, data = tmp_path / "root.img", tmp_path / "data.img"
    root.write_bytes(bytes(64 * 1024))
    data.write_bytes(bytes(64 * 1024))
    metrics = tmp_path / "metrics.json"
    drives = [
        {"drive_id": "rootfs", "is_root_device": True, "path_on_host": str(root), "cache_type": "Writeback"},
        {"drive_id": "data_2", "is_root_device": False, "path_on_host": str(data)},
    ]
    run = run_vmm(_config(probe_kernel, drives, "probe.blk=rw"), args=("--metrics-path", str(metrics)))
    _assert_clean(run)
    import json

    first = json.loads(metrics.read_text().splitlines()[0])
    keys = list(first)
    # Firecracker's order: block_<id> groups in attach order, then the aggregate, then deprecated_api.
    assert keys[keys.index("balloon") + 1 : keys.index("deprecated_api")] == ["block_rootfs", "block_data_2", "block"]
    assert list(first["block_rootfs"]) == list(first["block"])
    totals = _metric_totals(metrics)
    rootfs, other, agg = totals["block_rootfs"], totals["block_data_2"], totals["block"]
    # probe.blk=rw: one 512-byte write, one read, a flush, a get-id and an out-of-range read.
    assert rootfs["write_count"] == 1 and rootfs["write_bytes"] == 512, rootfs
    assert rootfs["read_count"] == 1 and rootfs["read_bytes"] == 512, rootfs
    assert rootfs["flush_count"] == 1 and rootfs["invalid_reqs_count"] == 1, rootfs
    assert rootfs["queue_event_count"] >= 5 and rootfs["event_fails"] == 0, rootfs
    assert all(v == 0 for v in other.values()), other  # the guest never touched the second drive
    for key in ("write_count", "write_bytes", "read_count", "read_bytes", "flush_count", "queue_event_count"):
        assert agg[key] == rootfs[key] + other[key], key


def _bench():
    import sys

    bench = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    import block_throughput

    return block_throughput


def test_probe_keeps_a_full_queue_busy_across_ring_wraps(kvm, probe_kernel, tmp_path):
    # 3000 requests through a 256-entry ring, 64 in flight, EVENT_IDX kicks: the ring indexes wrap
    # many times (a torn 16-bit used.idx store once showed the guest 0x01ff instead of 0x0100 here).
    bench = _bench()
    disk = tmp_path / "disk.img"
    bench.make_disk(disk, 16)
    for mode in ("randread", "write"):
        res = bench.run_once(probe_kernel, disk, tmp_path, mode, 4096, 3000, depth=64, timeout=60)
        assert res["requests"] == 3000 and res["bytes"] == 3000 * 4096, res
        assert res["kicks"] < 3000, res  # EVENT_IDX: far fewer kicks than requests


def _limited(bench, probe_kernel, tmp_path, mode, bs, n, rate_limiter) -> dict:
    disk = tmp_path / "disk.img"
    if not disk.exists():
        bench.make_disk(disk, 32)
    return bench.run_once(probe_kernel, disk, tmp_path, mode, bs, n, depth=32, timeout=60,
                          drive={"rate_limiter": rate_limiter})


def _steady_rate(probe_kernel, tmp_path, mode, bs, n, mark, rate_limiter, counter) -> tuple[float, float]:
    """(host rate, guest rate) of ``counter`` (block read_count or read_bytes) per second, after the
    bucket's initial burst. Host side: two FlushMetrics a known time apart, while the guest runs;
    guest side: the LAPIC-timed completion of request ``mark`` and of the last one."""
    import json
    import time

    from sparkler.sdk.client import Client
    from tests.e2e.test_api_boot import Vmm

    bench = _bench()
    disk = tmp_path / "disk.img"
    bench.make_disk(disk, 32)
    args = (f"{BASE_ARGS} probe.blk_bench={mode} probe.blk_bs={bs} probe.blk_n={n} probe.blk_depth=32 "
            f"probe.blk_mark={mark}")
    drive = {"drive_id": "rootfs", "is_root_device": True, "path_on_host": str(disk), "rate_limiter": rate_limiter}
    cfg = tmp_path / "vm.json"
    cfg.write_text(json.dumps({"boot-source": {"kernel_image_path": str(probe_kernel), "boot_args": args},
                               "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}, "drives": [drive]}))
    vmm = Vmm(tmp_path, "--config-file", str(cfg), "--metrics-path", str(tmp_path / "metrics.json"))
    try:
        vmm.start()
        api = Client(vmm.sock)
        deadline = time.monotonic() + 30
        while "INFO blk_bench_start" not in vmm.stdout:
            assert time.monotonic() < deadline and vmm.proc.poll() is None, vmm.describe()
            time.sleep(0.01)
        time.sleep(0.5)  # past the initial burst
        samples = []
        for i in range(2):
            if i:
                time.sleep(2.0)
            api.request("PUT", "/actions", {"action_type": "FlushMetrics"})
            totals = _metric_totals(vmm.metrics_path)["block_rootfs"][counter]
            stamp = json.loads(vmm.metrics_path.read_text().splitlines()[-1])["utc_timestamp_ms"]
            samples.append((stamp / 1000, totals))
        # both samples inside the throttled run (the guest has not finished yet)
        assert "PASS blk_bench" not in vmm.stdout, "the guest finished before the second sample: " + vmm.describe()
        assert vmm.wait() == 0, vmm.describe()
        (t1, c1), (t2, c2) = samples
        line = next(ln for ln in vmm.stdout.splitlines() if "PASS blk_bench " in ln)
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        unit = 1 if counter == "read_count" else bs
        guest = (n - mark) * unit / ((int(fields["us"]) - int(fields["mark_us"])) / 1e6)
        return (c2 - c1) / (t2 - t1), guest
    finally:
        vmm.stop()


def test_rate_limiter_holds_ops_per_second_within_10_percent(kvm, probe_kernel, tmp_path):
    # 200 ops/s: a 200-op bucket refilled over 1 s (longer than the 100 ms retry timer, so a late
    # timer loses no tokens). The unthrottled guest does 10k+ ops/s here, far above the limit.
    # 1200 requests: ~5 s in all, the last 600 (3 s) timed by the guest, 2 s of it by the host.
    host, guest = _steady_rate(probe_kernel, tmp_path, "randread", 4096, 1200, 600,
                               {"ops": {"size": 200, "refill_time": 1000}}, "read_count")
    print(f"ops/s host={host:.1f} guest={guest:.1f}")
    assert abs(host - 200) <= 20, (host, guest)
    assert abs(guest - 200) <= 20, (host, guest)


def test_rate_limiter_holds_bytes_per_second_within_10_percent(kvm, probe_kernel, tmp_path):
    # 10 MiB/s of 64 KiB reads: a 10 MiB bandwidth bucket refilled over 1 s.
    mib = 1 << 20
    host, guest = _steady_rate(probe_kernel, tmp_path, "read", 64 << 10, 960, 480,
                               {"bandwidth": {"size": 10 * mib, "refill_time": 1000}}, "read_bytes")
    print(f"MiB/s host={host / mib:.2f} guest={guest / mib:.2f}")
    assert abs(host / mib - 10) <= 1, (host / mib, guest / mib)
    assert abs(guest / mib - 10) <= 1, (host / mib, guest / mib)


def test_rate_limiter_one_time_burst_passes_first(kvm, probe_kernel, tmp_path):
    # ops: 100/s (100-op bucket over 1 s) plus a one-time burst of 300 ops: 600 requests = 300 burst +
    # 100 bucket + 200 at 100/s = 2 s.
    bench = _bench()
    n = 600
    limiter = {"ops": {"size": 100, "one_time_burst": 300, "refill_time": 1000}}
    res = _limited(bench, probe_kernel, tmp_path, "randread", 4096, n, limiter)
    rate = (n - 300 - 100) / res["host_s"]
    assert abs(rate - 100) <= 10, (rate, res)


@pytest.mark.parametrize("kind", ["oob", "loop", "avail"])
def test_malformed_chain_breaks_the_device_and_the_vmm_keeps_serving(kvm, probe_kernel, tmp_path, kind):
    # The guest offers one malformed chain (a buffer outside guest RAM, a descriptor loop, avail.idx
    # 1000 entries ahead) and then hangs. The device must answer DEVICE_NEEDS_RESET, the log and the
    # metrics must say so, and the API must keep working.
    import json
    import signal
    import time

    from sparkler.sdk.client import Client
    from tests.e2e.test_api_boot import Vmm

    img = tmp_path / "disk.img"
    original = bytes((i * 11) & 0xFF for i in range(64 * 1024))
    img.write_bytes(original)
    cfg = tmp_path / "vm.json"
    cfg.write_text(json.dumps(_config(probe_kernel, [
        {"drive_id": "rootfs", "is_root_device": True, "path_on_host": str(img)}], f"probe.blk_bad={kind} probe.hang=1")))
    vmm = Vmm(tmp_path, "--config-file", str(cfg), "--metrics-path", str(tmp_path / "metrics.json"))
    try:
        vmm.start()
        deadline = time.monotonic() + 30
        while "INFO hang" not in vmm.stdout:
            assert time.monotonic() < deadline and vmm.proc.poll() is None, vmm.describe()
            time.sleep(0.02)
        assert re.search(rf"PASS blk_bad kind={kind} status=0x4f ", vmm.stdout), vmm.describe()
        api = Client(vmm.sock)
        info = json.loads(api.request("GET", "/"))
        assert info["state"] == "Running"
        api.request("PUT", "/actions", {"action_type": "FlushMetrics"})
        totals = _metric_totals(vmm.metrics_path)
        assert totals["block_rootfs"]["event_fails"] == 1, totals["block_rootfs"]
        assert totals["block"]["event_fails"] == 1
        assert totals["block_rootfs"]["read_count"] == 0 and totals["block_rootfs"]["write_count"] == 0
        assert any("virtio device (type 2) needs reset" in line for line in vmm.log_lines()), vmm.describe()
        json.loads(api.request("GET", "/vm/config"))  # still serving
        os.killpg(vmm.proc.pid, signal.SIGHUP)
        assert vmm.wait() == 156, vmm.describe()
        assert img.read_bytes() == original
    finally:
        vmm.stop()


def test_patch_rate_limiter_while_the_guest_is_throttled(kvm, probe_kernel, tmp_path):
    # The guest starts 2000 requests against a 100 ops/s drive (20 s at that rate). One second in, a
    # PATCH replaces the ops bucket with 2000 ops/s: the rest is done within a few seconds, and the
    # metrics show the throttling before the update.
    import json
    import time

    from sparkler.sdk.client import Client
    from tests.e2e.test_api_boot import Vmm

    disk = tmp_path / "disk.img"
    _bench().make_disk(disk, 16)
    n = 2000
    args = f"{BASE_ARGS} probe.blk_bench=randread probe.blk_bs=4096 probe.blk_n={n} probe.blk_depth=32"
    slow = {"ops": {"size": 10, "refill_time": 100}}
    drive = {"drive_id": "rootfs", "is_root_device": True, "path_on_host": str(disk), "rate_limiter": slow}
    cfg = tmp_path / "vm.json"
    cfg.write_text(json.dumps({"boot-source": {"kernel_image_path": str(probe_kernel), "boot_args": args},
                               "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}, "drives": [drive]}))
    vmm = Vmm(tmp_path, "--config-file", str(cfg), "--metrics-path", str(tmp_path / "metrics.json"))
    try:
        vmm.start()
        api = Client(vmm.sock)
        deadline = time.monotonic() + 30
        while "INFO blk_bench_start" not in vmm.stdout:
            assert time.monotonic() < deadline and vmm.proc.poll() is None, vmm.describe()
            time.sleep(0.01)
        time.sleep(1.0)
        api.request("PUT", "/actions", {"action_type": "FlushMetrics"})
        before = _metric_totals(vmm.metrics_path)["block_rootfs"]
        assert before["read_count"] < 400, before  # ~100 ops/s so far (plus the first bucket)
        assert before["rate_limiter_throttled_events"] > 0 and before["rate_limiter_event_count"] > 0, before
        patched = time.monotonic()
        fast = {"ops": {"size": 200, "refill_time": 100}}
        api.request("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "rate_limiter": fast})
        config = json.loads(api.request("GET", "/vm/config"))
        assert config["drives"][0]["rate_limiter"]["ops"]["size"] == 200
        assert vmm.wait() == 0, vmm.describe()
        rest = time.monotonic() - patched
        # ~1700 requests at 2000 ops/s: about 1 s; at the old rate it would have been 17 s.
        assert rest < 8, (rest, vmm.describe())
        assert "PASS blk_bench mode=randread n=2000 " in vmm.stdout, vmm.describe()
    finally:
        vmm.stop()
