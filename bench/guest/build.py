"""Build the benchmark guest with gcc into a cache directory; returns the ELF path."""

import hashlib
import os
import pathlib
import subprocess

HERE = pathlib.Path(__file__).parent
CFLAGS = [
    "-O2", "-ffreestanding", "-nostdlib", "-static", "-fno-pic", "-no-pie", "-mno-red-zone",
    "-mgeneral-regs-only", "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-march=x86-64",
    "-Wl,-n", "-Wl,-Ttext=0x100000", "-Wl,-e,_start", "-Wl,--build-id=none",
]


def build() -> pathlib.Path:
    src = HERE / "bench_guest.c"
    key = hashlib.sha256(src.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:16]
    cache = pathlib.Path(os.environ.get("SPARKLER_CACHE", pathlib.Path.home() / ".cache" / "sparkler")) / "bench"
    out = cache / f"bench-guest-{key}.elf"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        subprocess.run(["gcc", *CFLAGS, "-o", str(tmp), str(src)], check=True)
        tmp.replace(out)
    return out


if __name__ == "__main__":
    print(build())
