"""Build the benchmark guest with gcc into a cache directory; returns the ELF path.

One ELF with two entries: the Linux 64-bit boot protocol entry (``_start``, the ELF entry point, used
by Sparkler and Firecracker) and a PVH note (``pvh.S``, used by QEMU ``-M microvm``), so both VMMs
boot the same binary.
"""

import hashlib
import os
import pathlib
import subprocess

HERE = pathlib.Path(__file__).parent
SOURCES = ["bench_guest.c", "pvh.S"]
LINKER_SCRIPT = "bench.ld"
CFLAGS = [
    "-O2", "-ffreestanding", "-nostdlib", "-static", "-fno-pic", "-no-pie", "-mno-red-zone",
    "-mgeneral-regs-only", "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-march=x86-64",
    "-Wl,-n", "-Wl,--build-id=none", "-Wl,-z,noexecstack", "-Wl,--no-warn-rwx-segments",
]


def build() -> pathlib.Path:
    h = hashlib.sha256(" ".join(CFLAGS).encode())
    for name in [*SOURCES, LINKER_SCRIPT]:
        h.update(name.encode() + b"\0" + (HERE / name).read_bytes())
    key = h.hexdigest()[:16]
    cache = pathlib.Path(os.environ.get("SPARKLER_CACHE", pathlib.Path.home() / ".cache" / "sparkler")) / "bench"
    out = cache / f"bench-guest-{key}.elf"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(
            ["gcc", *CFLAGS, f"-Wl,-T,{HERE / LINKER_SCRIPT}", "-o", str(tmp), *(str(HERE / s) for s in SOURCES)],
            check=True,
        )
        tmp.replace(out)
    return out


if __name__ == "__main__":
    print(build())
