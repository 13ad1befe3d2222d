"""Boot-core benchmark: prints numbers, asserts nothing.

* process start -> first guest instruction (the guest's first act is a COM1 write we timestamp)
* process start -> process exit (guest resets at once)
* one PIO exit and one MMIO exit round trip: (run with N exits - run with 0 exits) / N
* VMM memory overhead at idle: RSS of every mapping except guest RAM, from /proc/<pid>/smaps

Usage: .venv/bin/python bench/boot_core.py [--runs 7] [--exits 20000]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from guest.build import build  # noqa: E402

MEM_MIB = 128


def _config(kernel: pathlib.Path, args: str, tmp: pathlib.Path) -> pathlib.Path:
    cfg = {
        "boot-source": {"kernel_image_path": str(kernel), "boot_args": f"console=ttyS0 {args}"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": MEM_MIB},
    }
    path = tmp / "vm.json"
    path.write_text(json.dumps(cfg))
    return path


def _cmd(cfg: pathlib.Path) -> list[str]:
    # -I: isolated mode (no environment, no user site), as a packaged VMM would run.
    return [sys.executable, "-I", "-c", "import sys; from sparkler.cli import main; sys.exit(main())",
            "--no-api", "--config-file", str(cfg), "--level", "Error"]


def one_run(cfg: pathlib.Path) -> tuple[float, float]:
    """(seconds to the first guest byte, seconds to process exit)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(_cmd(cfg), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/")
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    t_first = time.perf_counter() - t0
    proc.stdout.read()
    code = proc.wait(timeout=300)
    t_exit = time.perf_counter() - t0
    if first != b"S" or code != 0:
        raise SystemExit(f"benchmark guest failed: first byte {first!r}, exit code {code}")
    return t_first, t_exit


def idle_overhead(cfg: pathlib.Path) -> dict[str, int]:
    proc = subprocess.Popen(_cmd(cfg), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/")
    try:
        assert proc.stdout is not None
        proc.stdout.read(3)  # "SE\n": the guest is now halted
        time.sleep(0.3)
        guest_kib = total_kib = 0
        size_kib = 0
        rss_kib = 0
        with open(f"/proc/{proc.pid}/smaps") as f:
            for line in f:
                if line.startswith("Size:"):
                    size_kib = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss_kib = int(line.split()[1])
                    total_kib += rss_kib
                    if size_kib == MEM_MIB * 1024:
                        guest_kib += rss_kib
        return {"rss_total_kib": total_kib, "guest_rss_kib": guest_kib, "vmm_overhead_kib": total_kib - guest_kib}
    finally:
        proc.kill()
        proc.wait()


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:8.1f} ms (min {min(values) * 1e3:.1f}, max {max(values) * 1e3:.1f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--exits", type=int, default=20000)
    a = ap.parse_args()
    kernel = build()
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        base = [one_run(_config(kernel, "", tmp)) for _ in range(a.runs)]
        print(f"start -> first guest instruction: {median_ms([b[0] for b in base])}")
        print(f"start -> guest exit (reset):      {median_ms([b[1] for b in base])}")
        base_exit = statistics.median(b[1] for b in base)
        for kind in ("pio", "mmio"):
            runs = [one_run(_config(kernel, f"bench.{kind}={a.exits}", tmp))[1] for _ in range(max(3, a.runs // 2))]
            per_exit = (statistics.median(runs) - base_exit) / a.exits
            print(f"{kind.upper():4} exit round trip (incl. emulated guest loop): {per_exit * 1e6:6.2f} us")
        mem = idle_overhead(_config(kernel, "bench.idle=1", tmp))
        print(
            f"idle memory: total RSS {mem['rss_total_kib'] / 1024:.1f} MiB, guest RAM RSS "
            f"{mem['guest_rss_kib'] / 1024:.1f} MiB, VMM overhead {mem['vmm_overhead_kib'] / 1024:.1f} MiB"
        )


if __name__ == "__main__":
    main()
