"""Where an emulated Linux boot spends its time (PVM hosts): console timeline + RIP samples.

    PYTHONPATH=. python bench/pvm_linux_profile.py [--vcpus 2] [--mem-mib 64] [--interval 0.1]
                                                   [--timeout 900] [--boot-args "..."] [--json OUT]

Boots the ``pvm-test`` kernel profile (``sparkler guest build --profile pvm-test``) with its ext4
rootfs on virtio-blk, exactly as the slow test tier does, but inside this process so that it can:

* stamp every console line with host wall time (the console goes through a pipe);
* sample each vCPU's RIP every ``--interval`` seconds (pause the vCPU - a kick out of KVM_RUN -,
  KVM_GET_REGS, resume) and map the samples to ``System.map`` symbols.

Prints the timeline of the key console lines, the gaps between consecutive lines that took longest,
and the top symbols per vCPU. Numbers, not assertions: this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

KEY_LINES = [
    ("console", r"printk: console \[ttyS0\] enabled|Linux version"),
    ("smp_up", r"smp: Brought up"),
    ("virtio_blk", r"virtio_blk virtio\d+: \[vda\]"),
    ("root_mounted", r"VFS: Mounted root"),
    ("run_init", r"Run \S+ as init process"),
    ("init_dies", r"Kernel panic|segfault|Attempted to kill init"),
]
DEFAULT_ARGS = 'console=ttyS0 reboot=k panic=-1 printk.time=1 loglevel=8 rodata=off tsc=reliable dyndbg="func driver_bound +p"'


def load_symbols(system_map: Path) -> tuple[list[int], list[str]]:
    addrs, names = [], []
    for line in system_map.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            addrs.append(int(parts[0], 16))
            names.append(parts[2])
    order = sorted(range(len(addrs)), key=addrs.__getitem__)
    return [addrs[i] for i in order], [names[i] for i in order]


def symbolize(rip: int, addrs: list[int], names: list[str]) -> str:
    i = bisect.bisect_right(addrs, rip) - 1
    return names[i] if i >= 0 else f"{rip:#x}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vcpus", type=int, default=2)
    parser.add_argument("--mem-mib", type=int, default=64)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--boot-args", default=DEFAULT_ARGS)
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--console", type=Path, help="write the stamped console here")
    args = parser.parse_args(argv)

    from sparkler.config import parse_vmm_config
    from sparkler.guest import build as guest_build
    from sparkler.vmm import runtime
    from sparkler.vmm.builder import BuildOptions, build_microvm
    from sparkler.vmm.vcpu import install_kick_handler

    paths = guest_build.artifact_paths(profile="pvm-test")
    if not paths.kernel.exists() or not paths.rootfs.exists():
        print("build first: python -m sparkler guest build --profile pvm-test", file=sys.stderr)
        return 2
    system_map = paths.kernel.parent / "System.map"
    addrs, names = load_symbols(system_map) if system_map.exists() else ([], [])

    work = Path(tempfile.mkdtemp(prefix="sparkler-pvmprof-"))
    disk = work / "rootfs.ext4"
    shutil.copyfile(paths.rootfs, disk)
    config = parse_vmm_config(
        json.dumps(
            {
                "boot-source": {"kernel_image_path": str(paths.kernel), "boot_args": args.boot_args},
                "machine-config": {"vcpu_count": args.vcpus, "mem_size_mib": args.mem_mib},
                "drives": [
                    {"drive_id": "rootfs", "path_on_host": str(disk), "is_root_device": True, "is_read_only": False}
                ],
            }
        ).encode()
    )
    install_kick_handler()
    read_fd, write_fd = os.pipe()
    t0 = time.monotonic()
    lines: list[tuple[float, str]] = []

    def reader() -> None:
        buf = b""
        while True:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                lines.append((time.monotonic() - t0, line.decode("utf-8", "replace").rstrip("\r")))

    threading.Thread(target=reader, daemon=True).start()
    machine = build_microvm(config, BuildOptions(serial_out=write_fd, pvm_compat="auto"))
    samples: list[Counter[str]] = [Counter() for _ in machine.vcpus]
    timeline: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def sampler() -> None:
        while not stop.wait(args.interval):
            for vcpu in machine.vcpus:
                vcpu.pause()
                try:
                    rip = vcpu.fd.get_regs().rip
                except OSError:
                    continue
                finally:
                    vcpu.resume()
                sym = symbolize(rip, addrs, names) if addrs else f"{rip:#x}"
                samples[vcpu.index][sym] += 1
                timeline.append((time.monotonic() - t0, vcpu.index, sym))

    machine.start()
    threading.Thread(target=sampler, daemon=True).start()
    watchdog = threading.Timer(args.timeout, lambda: machine.request_exit(1, "profile timeout"))
    watchdog.daemon = True
    watchdog.start()
    try:
        code = runtime.run_event_loop(machine)
    finally:
        stop.set()
        watchdog.cancel()
        machine.stop()
    total = time.monotonic() - t0
    time.sleep(0.2)
    os.close(write_fd)

    print(f"exit code {code}, wall {total:.1f} s, {len(lines)} console lines, CPU {os.times().user:.1f} s user "
          f"{os.times().system:.1f} s sys")
    print("\n== key console lines (host wall time since start) ==")
    found = {}
    for key, pattern in KEY_LINES:
        for t, line in lines:
            if re.search(pattern, line):
                found[key] = t
                print(f"{t:8.2f} s  {key:13s} {line[:110]}")
                break
    print("\n== longest gaps between consecutive console lines ==")
    gaps = sorted(
        ((lines[i][0] - lines[i - 1][0], lines[i - 1][1], lines[i][1]) for i in range(1, len(lines))), reverse=True
    )
    stamps = [0.0] + [t for t, _ in lines]
    for gap, before, after in gaps[:15]:
        print(f"{gap:7.2f} s  after: {before[:70]!r}\n           before: {after[:70]!r}")
    print("\n== the 12 longest stretches between console lines, with the vCPU samples taken in them ==")
    spans = sorted(((stamps[i + 1] - stamps[i], i) for i in range(len(stamps) - 1)), reverse=True)[:12]
    for gap, i in spans:
        lo, hi = stamps[i], stamps[i + 1]
        head = lines[i][1][:90] if i < len(lines) else ""
        print(f"{gap:7.2f} s  [{lo:7.2f} .. {hi:7.2f}] up to: {head!r}")
        for index in range(len(machine.vcpus)):
            inside = Counter(sym for t, v, sym in timeline if v == index and lo <= t < hi)
            top = ", ".join(f"{sym} {n}" for sym, n in inside.most_common(6))
            print(f"           vCPU {index}: {top}")
    for index, counter in enumerate(samples):
        n = sum(counter.values())
        print(f"\n== vCPU {index}: {n} RIP samples, top symbols ==")
        for sym, count in counter.most_common(20):
            print(f"{100 * count / max(n, 1):6.1f} %  {sym}")
    if args.console:
        args.console.write_text("".join(f"[{t:9.3f}] {line}\n" for t, line in lines))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "exit_code": code,
                    "wall_s": total,
                    "key_lines_s": found,
                    "top_symbols": [dict(c.most_common(40)) for c in samples],
                    "gaps": [{"s": g, "after": b, "before": a} for g, b, a in gaps[:30]],
                },
                indent=2,
            )
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
