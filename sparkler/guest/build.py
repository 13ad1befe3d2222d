"""Guest artifact cache: keys, atomic publish, Debian package checks, and the build driver.

Cache layout (root: ``--cache``, else ``$SPARKLER_CACHE``, else ``~/.cache/sparkler/guest``)::

    <root>/kernel-<key>/{vmlinux,config,System.map,build.log}
    <root>/kernel-<profile>-<key>/...  the same for a kernel profile other than ``microvm``
    <root>/initramfs-<key>/initramfs.cpio.gz
    <root>/rootfs-<key>/rootfs.ext4
    <root>/.tmp-*                 staging and work directories of builds in progress

An artifact directory's key hashes everything its content depends on: the Debian package
version(s) it is built from, the kernel config fragment or the init script, and a recipe
version. Each build writes into a fresh ``.tmp-*`` directory inside the cache root and publishes
it with one ``rename(2)``, so a reader sees either no artifact or a complete one; an interrupted
build leaves only a ``.tmp-*`` directory, which the next build removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sparkler.guest import kernel, rootfs

#: Bump when a recipe changes in a way the inputs below do not capture.
RECIPE_VERSION = "1"
KERNEL_FILE = "vmlinux"
INITRAMFS_FILE = "initramfs.cpio.gz"
ROOTFS_FILE = "rootfs.ext4"

Progress = Callable[[str], None]


class GuestBuildError(Exception):
    """A guest artifact could not be built; the message says why and what to do."""


def default_cache_root() -> Path:
    """``$SPARKLER_CACHE`` if set, else ``~/.cache/sparkler/guest``."""
    env = os.environ.get("SPARKLER_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "sparkler" / "guest"


def cache_key(*parts: str) -> str:
    """A short stable hash of the inputs (order matters; parts are length-prefixed)."""
    digest = hashlib.sha256()
    for part in (RECIPE_VERSION, *parts):
        data = part.encode()
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:16]


def package_version(package: str) -> str | None:
    """The installed version of a Debian package, or None when it is not installed."""
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}\t${Version}", package],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return None
    if result.returncode != 0:
        return None
    status, _, version = result.stdout.partition("\t")
    return version if status.endswith(" installed") and version else None


def ensure_packages(packages: Iterable[str], progress: Progress) -> None:
    """Install missing Debian packages with apt-get when root; otherwise fail naming them."""
    missing = [p for p in dict.fromkeys(packages) if package_version(p) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise GuestBuildError(
            "missing Debian packages: "
            + " ".join(missing)
            + f"\ninstall them first: sudo apt-get install -y {' '.join(missing)}"
        )
    progress(f"installing Debian packages with apt-get: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *missing]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise GuestBuildError(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    still = [p for p in missing if package_version(p) is None]
    if still:
        raise GuestBuildError(f"apt-get did not install: {' '.join(still)}")


@dataclass(frozen=True)
class ArtifactPaths:
    """Where the three artifacts live (they may not exist yet)."""

    kernel: Path
    initramfs: Path
    rootfs: Path

    def as_json(self) -> str:
        return json.dumps(
            {"kernel": str(self.kernel), "initramfs": str(self.initramfs), "rootfs": str(self.rootfs)},
            indent=2,
        )


def _versions(*packages: str) -> list[str]:
    return [f"{p}={package_version(p) or 'missing'}" for p in packages]


def kernel_key(profile: str = kernel.DEFAULT_PROFILE) -> str:
    parts = ("kernel",) if profile == kernel.DEFAULT_PROFILE else ("kernel", profile)
    return cache_key(*parts, *_versions(kernel.SOURCE_PACKAGE), kernel.fragment_text(profile))


def kernel_dir_name(profile: str = kernel.DEFAULT_PROFILE) -> str:
    """``kernel-<key>`` for the default profile, ``kernel-<profile>-<key>`` for the others."""
    if profile == kernel.DEFAULT_PROFILE:
        return f"kernel-{kernel_key()}"
    return f"kernel-{profile}-{kernel_key(profile)}"


def userspace_key(kind: str) -> str:
    return cache_key(
        kind, *_versions(rootfs.BUSYBOX_PACKAGE), rootfs.init_script(), str(rootfs.ROOTFS_SIZE_MIB)
    )


def artifact_paths(cache_root: Path | None = None, profile: str = kernel.DEFAULT_PROFILE) -> ArtifactPaths:
    """Paths of the artifacts for the currently installed packages and the ``profile`` fragment."""
    root = cache_root or default_cache_root()
    return ArtifactPaths(
        kernel=root / kernel_dir_name(profile) / KERNEL_FILE,
        initramfs=root / f"initramfs-{userspace_key('initramfs')}" / INITRAMFS_FILE,
        rootfs=root / f"rootfs-{userspace_key('rootfs')}" / ROOTFS_FILE,
    )


def publish(staging: Path, final: Path) -> None:
    """Atomically move the complete ``staging`` directory to ``final`` (same file system).

    If another build published ``final`` first, ours is discarded (both are equivalent).
    """
    staging.chmod(0o755)  # mkdtemp makes it 0700; artifacts are readable by every user
    try:
        os.rename(staging, final)
    except OSError:
        if final.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
            return
        raise
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def clean_stale(root: Path, max_age_s: float = 6 * 3600) -> None:
    """Remove ``.tmp-*`` leftovers of interrupted builds (older than ``max_age_s``)."""
    now = time.time()
    for entry in root.glob(".tmp-*"):
        try:
            if now - entry.stat().st_mtime > max_age_s:
                shutil.rmtree(entry, ignore_errors=True)
        except FileNotFoundError:
            continue


def _build_one(
    root: Path, final_file: Path, progress: Progress, produce: Callable[[Path, Path], None]
) -> Path:
    """Build one artifact directory unless it is cached; ``produce(staging, work)``."""
    if final_file.exists():
        progress(f"cached: {final_file}")
        return final_file
    name = final_file.parent.name
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    work = Path(tempfile.mkdtemp(prefix=f".tmp-work-{name}-", dir=root))
    started = time.monotonic()
    try:
        produce(staging, work)
        for f in staging.iterdir():
            if f.is_file():
                with f.open("rb") as fh:
                    os.fsync(fh.fileno())
        publish(staging, final_file.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    size = final_file.stat().st_size
    progress(f"built {final_file} ({size / 2**20:.1f} MiB) in {time.monotonic() - started:.0f} s")
    return final_file


@dataclass(frozen=True)
class BuildRequest:
    """What ``sparkler guest build`` should produce."""

    kernel: bool = True
    userspace: bool = True
    jobs: int = 0  # 0: os.cpu_count()
    cache_root: Path | None = None
    profile: str = "microvm"  # kernel config profile (one of kernel.PROFILES)


def build(request: BuildRequest, progress: Progress = print) -> ArtifactPaths:
    """Build (or reuse from the cache) the requested artifacts; returns all artifact paths."""
    root = request.cache_root or default_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    clean_stale(root)
    packages: list[str] = []
    if request.kernel:
        packages += kernel.BUILD_PACKAGES
    if request.userspace:
        packages += rootfs.BUILD_PACKAGES
    if request.profile not in kernel.PROFILES:
        raise GuestBuildError(
            f"unknown kernel profile {request.profile!r} (known: {', '.join(sorted(kernel.PROFILES))})"
        )
    ensure_packages(packages, progress)
    paths = artifact_paths(root, request.profile)
    jobs = request.jobs or os.cpu_count() or 1
    if request.kernel:
        _build_one(
            root,
            paths.kernel,
            progress,
            lambda staging, work: _kernel(
                staging, work, jobs, root / f"{paths.kernel.parent.name}-build.log", progress, request.profile
            ),
        )
    if request.userspace:
        _build_one(
            root,
            paths.initramfs,
            progress,
            lambda staging, _work: rootfs.build_initramfs(staging / INITRAMFS_FILE, progress),
        )
        _build_one(
            root,
            paths.rootfs,
            progress,
            lambda staging, work: rootfs.build_rootfs(staging / ROOTFS_FILE, work, progress),
        )
    return paths


def _kernel(staging: Path, work: Path, jobs: int, log: Path, progress: Progress, profile: str) -> None:
    try:
        kernel.build_kernel(staging, work, jobs, log, progress, profile=profile)
    except kernel.KernelBuildError as exc:
        raise GuestBuildError(str(exc)) from exc
