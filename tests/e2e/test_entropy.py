"""virtio-rng end to end: the probe guest asks the entropy device for random bytes."""

from __future__ import annotations

BASE_ARGS = "console=ttyS0 reboot=k panic=1 probe.cpus=1 probe.mem_mib=128"


def _config(kernel, entropy: dict | None, extra: str) -> dict:
    config = {
        "boot-source": {"kernel_image_path": str(kernel), "boot_args": f"{BASE_ARGS} {extra}".strip()},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
    }
    if entropy is not None:
        config["entropy"] = entropy
    return config


def _assert_clean(run) -> None:
    assert not run.timed_out, run.describe()
    assert run.reports.finished, run.describe()
    assert not run.reports.fails, run.describe()
    assert run.returncode == 0, run.describe()


def test_probe_gets_random_bytes(kvm, probe_kernel, run_vmm, tmp_path):
    import json

    metrics = tmp_path / "metrics.json"
    run = run_vmm(_config(probe_kernel, {}, "probe.rng=4096 probe.rng_count=8"), args=("--metrics-path", str(metrics)))
    _assert_clean(run)
    assert run.reports.passed("rng_init"), run.describe()
    result = run.reports.named("rng", "PASS")[0].fields
    assert result["bytes"] == str(8 * 4096) and result["used"] == "4096", run.describe()
    assert "virtio_mmio.device=4K@0xc0001000:5" in run.reports.named("cmdline", "INFO")[0].fields["value"]
    totals: dict = {}
    for line in metrics.read_text().splitlines():
        for key, value in json.loads(line)["entropy"].items():
            totals[key] = totals.get(key, 0) + value
    assert totals["entropy_bytes"] == 8 * 4096 and totals["entropy_event_count"] >= 8, totals
    assert totals["entropy_event_fails"] == 0 and totals["host_rng_fails"] == 0, totals


def test_probe_request_is_capped_at_64_kib(kvm, probe_kernel, run_vmm):
    run = run_vmm(_config(probe_kernel, {}, f"probe.rng={64 * 1024 + 8192} probe.rng_count=2"))
    _assert_clean(run)
    assert run.reports.named("rng", "PASS")[0].fields["used"] == str(64 * 1024), run.describe()


def test_no_entropy_device_is_reported_by_the_probe(kvm, probe_kernel, run_vmm):
    run = run_vmm(_config(probe_kernel, None, "probe.rng=64"))
    assert any(r.name == "rng_probe" for r in run.reports.fails), run.describe()


def test_rate_limit_holds_within_ten_percent(kvm, probe_kernel, run_vmm):
    # 64 KiB per 500 ms = 131072 B/s, requests of 16 KiB. The bucket starts full and its first lazy
    # refill also counts the boot time, so the first requests come faster; the rate is measured in
    # the steady state, between the completions of request SKIP and of the last one (both right
    # after a refill-timer tick), from the guest's LAPIC clock.
    size, count, skip, bucket, refill_ms = 16 * 1024, 40, 8, 64 * 1024, 500
    limiter = {"bandwidth": {"size": bucket, "refill_time": refill_ms}}
    extra = f"probe.rng={size} probe.rng_count={count} probe.rng_marks=1"
    run = run_vmm(_config(probe_kernel, {"rate_limiter": limiter}, extra), timeout=90)
    _assert_clean(run)
    assert int(run.reports.named("rng", "PASS")[0].fields["bytes"]) == size * count
    marks = {int(r.fields["n"]): int(r.fields["us"]) for r in run.reports.named("rng_mark", "INFO")}
    assert len(marks) == count, run.describe()
    elapsed_s = (marks[count - 1] - marks[skip]) / 1e6
    rate = (count - 1 - skip) * size / elapsed_s
    configured = bucket / (refill_ms / 1000)
    unlimited_first = marks[3] / 1e6  # the first four requests come from the full bucket
    print(
        f"entropy rate limit: configured {configured:.0f} B/s, measured {rate:.0f} B/s "
        f"over {elapsed_s:.2f} s (first 64 KiB in {unlimited_first * 1000:.1f} ms)"
    )
    assert abs(rate - configured) <= 0.10 * configured, (rate, configured, run.describe())
