"""Jailer start-up benchmark: ``jailer`` process start -> the jailed VMM's API socket accepts. Prints only.

Each run starts ``sparkler.jailer.cli`` (as root: mknod, pivot_root, setuid) with a fresh
``--chroot-base-dir`` and ``--id``, ``--uid``/``--gid`` 12345 and a ``firecracker`` exec file that
runs this tree's VMM on the current interpreter (a ``#!`` script, so the jailer binds the
interpreter, the venv, the package and ``/usr`` read-only into the jail). Wall time runs from just
before ``Popen`` until a ``connect()`` to ``<root>/run/firecracker.socket`` succeeds (polled every
0.2 ms); CPU time is the VMM's at that moment (``/proc/<pid>/task/*/schedstat``; the jailer execs
into the VMM, so this includes the jailer's own work). The VMM is then killed and the jail removed.

Two rows: the default (every VMM thread installs its seccomp filter; the API thread before it
accepts) and with a forwarded ``-- --no-seccomp``, so the difference is the filters' start-up cost.

Usage: .venv/bin/python bench/jailer_startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from api_startup import accepts_connection, process_cpu_ns  # bench/ is on sys.path: run as a script

REPO = pathlib.Path(__file__).resolve().parent.parent
UID = GID = 12345
JAILER = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); "
          "from sparkler.jailer.cli import main; sys.exit(main())"]  # fmt: skip
VARIANTS = {
    "jailer -> VMM (seccomp filters, default)": (),
    "jailer -> VMM -- --no-seccomp": ("--", "--no-seccomp"),
}


def exec_file(directory: pathlib.Path) -> pathlib.Path:
    script = directory / "firecracker"
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
                      "from sparkler.cli import main\nsys.exit(main())\n")  # fmt: skip
    script.chmod(0o755)
    return script


def one_run(script: pathlib.Path, extra: tuple[str, ...], index: int) -> tuple[float, float]:
    """(wall ms, CPU ms) from the jailer's Popen to an accepted connection on the jailed socket."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="sjb-", dir="/tmp"))  # short: sun_path is 108 bytes
    vm_id = f"bench-{os.getpid()}-{index}"
    sock = str(base / "firecracker" / vm_id / "root" / "run" / "firecracker.socket")
    argv = [*JAILER, "--id", vm_id, "--exec-file", str(script), "--uid", str(UID), "--gid", str(GID),
            "--chroot-base-dir", str(base), *extra]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        while True:
            if accepts_connection(sock):
                wall = time.perf_counter() - t0
                return wall * 1000, process_cpu_ns(proc.pid) / 1e6
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise SystemExit(f"the jailer/VMM exited with {proc.returncode} before the socket was ready\n{err}")
            if time.perf_counter() - t0 > 30:
                raise SystemExit("the jailed API socket did not appear within 30 s")
            time.sleep(0.0002)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # without --daemonize/--new-pid-ns the jailer *is* the VMM
        proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/jailer_startup.py needs root (the jailer mknods, pivot_roots and drops to a uid)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="sjb-exec-") as d:
        script = exec_file(pathlib.Path(d))
        for label, extra in VARIANTS.items():
            one_run(script, extra, 0)  # warm the page cache and __pycache__
            runs = [one_run(script, extra, i + 1) for i in range(args.runs)]
            walls = [w for w, _ in runs]
            rows.append((label, statistics.median(walls), min(walls), max(walls), statistics.median(c for _, c in runs)))
    width = max(len(r[0]) for r in rows)
    print(f"jailer start -> API socket ready in the jail, {args.runs} runs (milliseconds)")
    print(f"{'variant'.ljust(width)}  {'median':>7}  {'min':>7}  {'max':>7}  {'cpu':>7}")
    for label, med, lo, hi, cpu in rows:
        print(f"{label.ljust(width)}  {med:7.1f}  {lo:7.1f}  {hi:7.1f}  {cpu:7.1f}")


if __name__ == "__main__":
    main()
