"""`sparkler demo`: the main job on built-in defaults: build a guest and boot it.

On a host with hardware virtualisation the guest is the Linux microVM kernel with a busybox
initramfs (built from Debian packages by ``sparkler guest build``, cached). On a PVM host, where a
stock Linux guest cannot run its user space, it is the probe guest, which checks from inside what
the VMM gave it and prints the results on the serial console. Either way the VMM is started exactly
as a user would start it: ``sparkler --no-api --config-file <file> --boot-timer``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

USAGE = """usage: sparkler demo [--probe | --linux] [--vcpus N] [--mem-mib N] [--keep-config PATH]

Build a guest and boot it with Sparkler on built-in defaults.
  --probe          boot the probe guest (default on PVM hosts)
  --linux          boot the Linux guest (default on hosts with hardware virtualisation)
  --vcpus N        number of vCPUs (default 2)
  --mem-mib N      guest memory in MiB (default 256)
  --keep-config P  also write the generated config file to P
"""


def _parse(argv: list[str]) -> dict[str, object]:
    opts: dict[str, object] = {"kind": None, "vcpus": 2, "mem": 256, "keep": None}
    it = iter(argv)
    for arg in it:
        if arg in ("-h", "--help"):
            print(USAGE, end="")
            raise SystemExit(0)
        if arg in ("--probe", "--linux"):
            opts["kind"] = arg[2:]
            continue
        key = {"--vcpus": "vcpus", "--mem-mib": "mem", "--keep-config": "keep"}.get(arg)
        value = next(it, None)
        if key is None or value is None:
            print(f"sparkler demo: bad argument {arg!r}\n{USAGE}", file=sys.stderr, end="")
            raise SystemExit(153)
        if key in ("vcpus", "mem"):
            if not value.isdigit():
                print(f"sparkler demo: {arg} needs a number", file=sys.stderr)
                raise SystemExit(153)
            opts[key] = int(value)
        else:
            opts[key] = value
    return opts


def _probe_config(vcpus: int, mem: int) -> dict[str, object]:
    from sparkler.testing.probe import build_probe

    kernel = build_probe("linux")
    args = f"console=ttyS0 reboot=k panic=1 probe.cpus={vcpus} probe.mem_mib={mem} probe.smp=1 probe.boot_timer=1"
    return {
        "boot-source": {"kernel_image_path": str(kernel), "boot_args": args},
        "machine-config": {"vcpu_count": vcpus, "mem_size_mib": mem},
    }


def _linux_config(vcpus: int, mem: int) -> dict[str, object]:
    from sparkler.guest import build as guest_build

    paths = guest_build.build(guest_build.BuildRequest(), progress=lambda m: print(m, file=sys.stderr))
    return {
        "boot-source": {
            "kernel_image_path": str(paths.kernel),
            "initrd_path": str(paths.initramfs),
            "boot_args": "console=ttyS0 reboot=k panic=1 pci=off",
        },
        "machine-config": {"vcpu_count": vcpus, "mem_size_mib": mem},
    }


def main(argv: list[str]) -> int:
    opts = _parse(argv)
    from sparkler.kvm.system import host_kind

    kind = opts["kind"] or ("probe" if host_kind() == "pvm" else "linux")
    vcpus, mem = int(opts["vcpus"]), int(opts["mem"])  # type: ignore[call-overload]
    print(f"sparkler demo: host KVM is {host_kind()}; booting the {kind} guest "
          f"({vcpus} vCPUs, {mem} MiB)", file=sys.stderr)
    config = _probe_config(vcpus, mem) if kind == "probe" else _linux_config(vcpus, mem)
    with tempfile.TemporaryDirectory(prefix="sparkler-demo-") as tmp:
        path = os.path.join(tmp, "vm.json")
        with open(path, "w") as f:
            json.dump(config, f, indent=2)
        if opts["keep"]:
            with open(str(opts["keep"]), "w") as f:
                json.dump(config, f, indent=2)
        cmd = [sys.executable, "-m", "sparkler", "--no-api", "--config-file", path, "--boot-timer"]
        print("sparkler demo: " + " ".join(cmd), file=sys.stderr)
        return subprocess.call(cmd)
