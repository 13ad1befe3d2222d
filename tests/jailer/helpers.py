"""Shared helpers for the jailer tests: a static probe exec file and a jailer runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

# The probe: writes what it sees to /out.txt (inside the jail; stdout may be /dev/null when
# daemonized), then, given --hold, waits until /release exists so the test can look at it from
# the host (cgroup membership, namespaces) while it runs.
PROBE_C = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>
int main(int argc, char **argv) {
    char cwd[4096];
    struct rlimit nofile, fsize;
    int hold = 0;
    FILE *out = fopen("/out.txt", "w");
    if (!out) return 3;
    getrlimit(RLIMIT_NOFILE, &nofile);
    getrlimit(RLIMIT_FSIZE, &fsize);
    fprintf(out, "uid=%d\ngid=%d\npid=%d\ncwd=%s\n", (int)getuid(), (int)getgid(), (int)getpid(),
            getcwd(cwd, sizeof cwd) ? cwd : "?");
    fprintf(out, "nofile=%llu\nfsize=%llu\n", (unsigned long long)nofile.rlim_cur,
            (unsigned long long)fsize.rlim_cur);
    fprintf(out, "stdin_tty=%d\nsid_is_pid=%d\n", isatty(0), getsid(0) == getpid());
    fprintf(out, "host_bin=%d\n", access("/bin/sh", F_OK) == 0);
    for (int i = 0; i < argc; i++) {
        fprintf(out, "arg=%s\n", argv[i]);
        if (strcmp(argv[i], "--hold") == 0) hold = 1;
    }
    fprintf(out, "end\n");
    fclose(out);
    while (hold && access("/release", F_OK) != 0) usleep(10000);
    return 0;
}
"""

JAILER = [sys.executable, "-c", "import sys; from sparkler.jailer.cli import main; sys.exit(main())"]


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the jailer needs root (mknod, pivot_root, setuid)")


def build_probe(directory: Path, name: str = "sparkler-probe") -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the static probe exec file")
    src = directory / "probe.c"
    src.write_text(PROBE_C)
    exe = directory / name
    result = subprocess.run(["gcc", "-static", "-O1", "-o", str(exe), str(src)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot build a static binary: {result.stderr.decode()[-300:]}")
    return exe


def run_jailer(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*JAILER, *args], capture_output=True, text=True, timeout=timeout)


def read_report(path: Path, timeout: float = 10) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            text = path.read_text()
            if text.endswith("end\n"):
                report: dict[str, list[str]] = {}
                for line in text.splitlines():
                    key, _, value = line.partition("=")
                    report.setdefault(key, []).append(value)
                return report
        time.sleep(0.01)
    raise AssertionError(f"no complete report at {path}")


def wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.01)
    os.kill(pid, 9)
    raise AssertionError(f"process {pid} still running")
