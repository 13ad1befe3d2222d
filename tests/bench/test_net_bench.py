"""bench/net_throughput.py still runs (quick mode) and its section renders in the report."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from sparkler.testing.netns import netns_available

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402


@pytest.mark.skipif(not netns_available(), reason="needs root, iproute2 and /dev/net/tun")
def test_net_throughput_quick_runs_and_reports_every_workload(tmp_path):
    out = tmp_path / "net.json"
    res = subprocess.run([sys.executable, str(BENCH / "net_throughput.py"), "--quick", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert set(data) == {"tx 1500", "rx 1500", "tx 64K", "rx 64K"}
    for row in data.values():
        assert row["pps"]["median"] > 0 and row["gbps"]["median"] > 0 and row["cpu_s_per_gbit"]["median"] > 0
    assert "packets/s" in res.stdout and "Gbit/s" in res.stdout


def test_report_renders_the_net_section():
    row = {k: {"median": v, "min": v, "max": v} for k, v in (("pps", 70000.0), ("gbps", 0.85), ("cpu_s_per_gbit", 0.5))}
    md = report.render_markdown({"meta": {}, "net": {"tx 1500": row}})
    assert "## Network throughput" in md and "| tx 1500 | **70,000** | 0.85 | 0.500 |" in md
    md = report.render_markdown({"meta": {}, "net": {"error": "RuntimeError: skipped"}})
    assert "Not measured: RuntimeError: skipped" in md
