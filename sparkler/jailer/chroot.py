"""The jail: ``<base>/<exec-name>/<id>/root``, the copied exec file, pivot_root, device nodes.

The exec file is copied, never hard-linked (two VMMs must not share text pages, and a link would let
the jailed user alter the host's binary): the destination is opened ``O_CREAT|O_WRONLY|O_NOFOLLOW``
with the source's mode and refused if its link count is above 1.

``enter_jail`` is Firecracker's sequence: a private mount namespace (``unshare(CLONE_NEWNS)``), ``/``
made a recursive slave so nothing propagates back to the host, the jail bind-mounted onto itself
(pivot_root needs a mount point), ``pivot_root(".", "old_root")`` and a lazy unmount of the old root.
After it the host file system is unreachable: everything the caller needs later must be imported or
opened before.
"""

from __future__ import annotations

import os
import stat

from sparkler.jailer import JailerError
from sparkler.jailer import namespaces as ns

OLD_ROOT = "old_root"
# (path inside the jail, major, minor, required): linux/miscdevice.h and devices.txt
DEVICES = (
    ("/dev/net/tun", 10, 200, True),
    ("/dev/kvm", 10, 232, True),
    ("/dev/urandom", 1, 9, False),
)
_COPY_CHUNK = 1 << 20


def chroot_dir(base: str, exec_name: str, instance_id: str) -> str:
    return os.path.join(base, exec_name, instance_id, "root")


def userfaultfd_minor(proc_misc: str = "/proc/misc") -> int | None:
    """The dynamic minor of ``/dev/userfaultfd`` (major 10), None if the host has none."""
    try:
        with open(proc_misc) as f:
            for line in f:
                fields = line.split()
                if len(fields) == 2 and fields[1] == "userfaultfd":
                    return int(fields[0])
    except OSError:
        return None
    return None


def make_chroot_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise JailerError(f"Failed to create directory {path}: {e}") from e


def copy_exec_file(source: str, dest: str, uid: int, gid: int) -> None:
    mode = stat.S_IMODE(os.stat(source).st_mode)
    try:
        fd = os.open(dest, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as e:
        raise JailerError(f"Failed to copy {source} to {dest}: {e}") from e
    try:
        if os.fstat(fd).st_nlink > 1:
            raise JailerError(f"Failed to copy {source} to {dest}: the destination has hard links")
        os.fchown(fd, uid, gid)
        os.ftruncate(fd, 0)
        with open(source, "rb") as src:
            while chunk := src.read(_COPY_CHUNK):
                os.write(fd, chunk)
    except OSError as e:
        raise JailerError(f"Failed to copy {source} to {dest}: {e}") from e
    finally:
        os.close(fd)


def is_script(path: str) -> bool:
    """True when ``path`` starts with ``#!`` (an interpreted exec file, e.g. Sparkler's console script)."""
    with open(path, "rb") as f:
        return f.read(2) == b"#!"


def python_runtime_paths() -> list[str]:
    """Host paths a Python VMM needs inside the jail, bound read-only at the same place.

    The jailer runs on the interpreter (and venv) that will run the VMM, so it knows them: the
    interpreter installation (``sys.base_prefix``: binary, libpython, stdlib), the environment
    (``sys.prefix``: site-packages, ``pyvenv.cfg``), the ``sparkler`` package itself (an editable
    install lives outside both) and ``/usr`` for the C libraries (libc, libffi, libseccomp).
    Top-level symlinks such as ``/lib -> usr/lib`` are recreated as symlinks, not bound.
    """
    import sys

    import sparkler

    candidates = ["/usr", "/lib", "/lib64", "/bin", sys.base_prefix, sys.prefix]
    candidates.append(os.path.dirname(os.path.abspath(sparkler.__file__)))
    # The jailed VMM starts with an empty environment, so it finds the package the way the venv's
    # editable-install finder maps it, which may differ from the one this process imported (e.g.
    # through PYTHONPATH in a git worktree): bind that one too.
    for name, module in list(sys.modules.items()):
        if name.startswith("__editable___sparkler") and isinstance(getattr(module, "MAPPING", None), dict):
            candidates.extend(str(p) for p in module.MAPPING.values())
    paths: list[str] = []
    for path in candidates:
        if not os.path.isabs(path) or not os.path.lexists(path):
            continue
        if not os.path.islink(path):
            path = os.path.realpath(path)
        if path in paths or any(path.startswith(p.rstrip("/") + "/") for p in paths if not os.path.islink(p)):
            continue
        paths.append(path)
    return paths


def bind_read_only(paths: list[str], root: str) -> None:
    """Bind each host ``path`` read-only (nosuid, nodev) at ``root + path`` (symlinks are copied)."""
    for path in paths:
        target = root + path
        try:
            if os.path.islink(path):
                if not os.path.lexists(target):
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    os.symlink(os.readlink(path), target)
                continue
            os.makedirs(target, exist_ok=True)
            ns.mount(path, target, None, ns.MS_BIND | ns.MS_REC)
            ns.mount(
                None, target, None, ns.MS_BIND | ns.MS_REMOUNT | ns.MS_RDONLY | ns.MS_NOSUID | ns.MS_NODEV
            )
        except OSError as e:
            raise JailerError(f"Failed to bind mount {path} into the jail: {e}") from e


def enter_jail(path: str, read_only_binds: list[str] | None = None) -> None:
    """pivot_root into ``path`` inside a new mount namespace; the cwd becomes the new ``/``.

    ``read_only_binds`` (host paths) are bound read-only into the jail before the pivot; they live
    in the jail's private mount namespace and vanish with it.
    """
    binds = read_only_binds or []
    steps = (
        ("Failed to unshare into new mount namespace", lambda: ns.unshare(ns.CLONE_NEWNS)),
        (
            "Failed to change the propagation type to slave",
            lambda: ns.mount(None, "/", None, ns.MS_SLAVE | ns.MS_REC),
        ),
        (
            "Failed to bind mount the jail root directory",
            lambda: ns.mount(path, path, None, ns.MS_BIND | ns.MS_REC),
        ),
        ("Failed to bind mount the Python runtime", lambda: bind_read_only(binds, path)),
        ("Failed to chdir into chroot directory", lambda: os.chdir(path)),
        ("Failed to create the jail root directory before pivoting root", lambda: os.mkdir(OLD_ROOT, 0o600)),
        ("Failed to pivot root", lambda: ns.pivot_root(".", OLD_ROOT)),
        ("Failed to change current directory", lambda: os.chdir("/")),
        ("Failed to unmount the old jail root", lambda: ns.umount2(OLD_ROOT, ns.MNT_DETACH)),
        ("Failed to remove old jail root directory", lambda: os.rmdir(OLD_ROOT)),
    )
    for message, step in steps:
        try:
            step()
        except OSError as e:
            raise JailerError(f"{message}: {e}") from e


def populate_jail(uid: int, gid: int, uffd_minor: int | None) -> list[str]:
    """Inside the jail: dirs ``/ /dev /dev/net /run`` (0700, uid:gid) and the device nodes.

    Returns warnings (``/dev/urandom`` failing is not fatal: only MMDS V2 tokens need it).
    """
    for d in ("/", "/dev", "/dev/net", "/run"):
        try:
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o700)
            os.chown(d, uid, gid)
        except OSError as e:
            raise JailerError(f"Failed to create directory {d}: {e}") from e
    devices = list(DEVICES)
    if uffd_minor is not None:
        devices.append(("/dev/userfaultfd", 10, uffd_minor, True))
    warnings = []
    for path, major, minor, required in devices:
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(major, minor))
            os.chown(path, uid, gid)
        except OSError as e:
            if required:
                raise JailerError(f"Failed to create {path} via mknod inside the jail: {e}") from e
            warnings.append(f"Could not create {path} ({e}); MMDS V2 will not work.")
    return warnings


__all__ = [
    "chroot_dir",
    "userfaultfd_minor",
    "make_chroot_dir",
    "copy_exec_file",
    "enter_jail",
    "is_script",
    "python_runtime_paths",
    "bind_read_only",
    "populate_jail",
]
