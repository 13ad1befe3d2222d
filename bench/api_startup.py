"""API start-up benchmark: VMM process start -> API socket accepting connections. Prints, asserts nothing.

Wall time: ``perf_counter`` before ``Popen`` until a ``connect()`` to the socket succeeds (polled
every 0.2 ms). CPU time of the VMM process at that moment: the sum of ``se.sum_exec_runtime`` over
its threads (``/proc/<pid>/task/*/schedstat``, nanoseconds; ``/proc/<pid>/stat`` utime+stime is
only 10 ms granular). The process is then killed. Median of ``--runs`` runs for two command lines:

* ``python -m sparkler --api-sock S`` (site enabled, the runpy path);
* ``python -I -S -c 'from sparkler.cli import main; ...' --api-sock S`` (isolated, no ``site``:
  the repository and the venv's site-packages are put on ``sys.path`` by the ``-c`` code).

Targets (Firecracker-class start-up): 50 ms wall, 25 ms CPU. ``--importtime`` also prints the
slowest imports of one run (``python -X importtime``, cumulative microseconds).

Usage: .venv/bin/python bench/api_startup.py [--runs 10] [--importtime]
"""

from __future__ import annotations

import argparse
import glob
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
TARGET_WALL_MS = 50.0
TARGET_CPU_MS = 25.0


def _isolated_code() -> str:
    paths = [str(REPO), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return f"import sys; sys.path[:0] = {paths!r}; from sparkler.cli import main; sys.exit(main())"


COMMANDS = {
    "python -m sparkler": [sys.executable, "-m", "sparkler"],
    "python -I -S -c 'from sparkler.cli import main'": [sys.executable, "-I", "-S", "-c", _isolated_code()],
}


def process_cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far (schedstat, nanoseconds)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def accepts_connection(path: str) -> bool:
    """True when a Unix stream socket at ``path`` accepts a connection now."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
            return True
        except OSError:
            return False


def one_run(argv: list[str], tmp: str, env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall ms, CPU ms) from Popen to an accepted connection."""
    sock = os.path.join(tmp, "fc.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    t0 = time.perf_counter()
    proc = subprocess.Popen([*argv, "--api-sock", sock, "--level", "Error"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=tmp, env=env)
    try:
        while True:
            if os.path.exists(sock) and accepts_connection(sock):
                wall = time.perf_counter() - t0
                cpu = process_cpu_ns(proc.pid)
                return wall * 1000, cpu / 1e6
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise SystemExit(f"VMM exited with {proc.returncode} before the socket was ready\n{err}")
            if time.perf_counter() - t0 > 30:
                raise SystemExit("API socket did not appear within 30 s")
            time.sleep(0.0002)
    finally:
        proc.kill()
        proc.wait()


def importtime(argv: list[str], tmp: str, top: int = 15) -> list[tuple[int, int, str]]:
    """(cumulative us, self us, module) of the slowest imports of one start-up."""
    sock = os.path.join(tmp, "fc-it.sock")
    cmd = [argv[0], "-X", "importtime", *argv[1:], "--api-sock", sock, "--level", "Error"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp)
    deadline = time.monotonic() + 30
    while not (os.path.exists(sock) and accepts_connection(sock)) and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.kill()
    _, err = proc.communicate()
    rows = []
    for line in err.decode(errors="replace").splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum_us, name = line[len("import time:"):].split("|", 2)
        rows.append((int(cum_us), int(self_us), name[1:]))  # nesting = 2 leading spaces per level
    total = sum(r[0] for r in rows if not r[2].startswith(" "))
    top_level = sorted((r for r in rows if not r[2].startswith(" ")), reverse=True)[:top]
    return [(total, 0, "<sum of top-level imports>"), *top_level]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--importtime", action="store_true")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, argv in COMMANDS.items():
            one_run(argv, tmp)  # warm the page cache and __pycache__
            runs = [one_run(argv, tmp) for _ in range(args.runs)]
            results.append((label, statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs),
                            min(w for w, _ in runs), min(c for _, c in runs)))
        width = max(len(r[0]) for r in results)
        print(f"VMM start -> API socket ready, median of {args.runs} runs (milliseconds)")
        print(f"{'command'.ljust(width)}  {'wall':>7}  {'cpu':>7}  {'min wall':>8}  {'min cpu':>7}  "
              f"target wall {TARGET_WALL_MS:.0f} / cpu {TARGET_CPU_MS:.0f}")
        for label, wall, cpu, wmin, cmin in results:
            verdict = ("ok" if wall <= TARGET_WALL_MS else "over") + " / " + ("ok" if cpu <= TARGET_CPU_MS else "over")
            print(f"{label.ljust(width)}  {wall:7.1f}  {cpu:7.1f}  {wmin:8.1f}  {cmin:7.1f}  {verdict}")
        base = [sys.executable, "-S", "-c", "pass"]
        t = [one_run_bare(base) for _ in range(5)]
        print(f"(bare interpreter `python -S -c pass`: {statistics.median(t):.1f} ms wall)")
        if args.importtime:
            print("\nslowest imports (python -I -S ..., -X importtime; cumulative us, top level):")
            for cum, _, name in importtime(COMMANDS["python -I -S -c 'from sparkler.cli import main'"], tmp):
                print(f"  {cum:8d}  {name.strip()}")


def one_run_bare(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True)
    return (time.perf_counter() - t0) * 1000


if __name__ == "__main__":
    main()
