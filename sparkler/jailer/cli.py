"""The ``jailer`` command line (catalog section 3.1) and the sequence of section 3.2.

Flags use Firecracker's ``--name value`` grammar: the tokenizer below is ``sparkler.cli``'s rules
(unknown flag, duplicate, missing value, value starting with ``--``, bare ``--`` forwards the rest)
plus the jailer's repeatable flags (``--cgroup``, ``--resource-limit``), which the VMM's
``split_arguments`` (hard-wired to the VMM's flag table, no repeatable flags) cannot express; the
value checks reuse ``sparkler.cli.parse_unsigned`` and ``validate_instance_id``.

Errors: argument errors print ``Arguments parsing error: <why>`` and exit 1 (the jailer, unlike the
VMM, exits 1); later failures print ``Jailer error: <why>`` on stderr and exit 1. Everything that can
be validated (paths, ids, cgroup and limit values, cgroup hierarchies and controllers) is checked
before the first directory is created, so a bad flag leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Sequence

from sparkler import __version__
from sparkler.cli import ArgParseError, Flag, parse_unsigned, validate_instance_id
from sparkler.jailer import JailerError, cgroup, chroot, exec, limits
from sparkler.jailer import namespaces as ns

DEFAULT_CHROOT_BASE = "/srv/jailer"
U32_MAX = 2**32 - 1

FLAGS: dict[str, Flag] = {
    f.name: f
    for f in (
        Flag("id", "Jail ID."),
        Flag("exec-file", "File path to exec into."),
        Flag("uid", "The user identifier the jailer switches to after exec."),
        Flag("gid", "The group identifier the jailer switches to after exec."),
        Flag(
            "chroot-base-dir", "The base folder where chroot jails are located.", default=DEFAULT_CHROOT_BASE
        ),
        Flag("netns", "Path to the network namespace this microVM should join."),
        Flag(
            "daemonize",
            "Daemonize the jailer before exec, by invoking setsid(), and redirecting the standard I/O "
            "file descriptors to /dev/null.",
            takes_value=False,
        ),
        Flag("new-pid-ns", "Exec into a new PID namespace.", takes_value=False),
        Flag(
            "cgroup",
            "Cgroup and value to be set by the jailer. It must follow this format: <cgroup_file>=<value> "
            "(e.g cpu.shares=10). This argument can be used multiple times to add multiple cgroups.",
        ),
        Flag(
            "resource-limit",
            "Resource limit values to be set by the jailer. It must follow this format: "
            "<resource>=<value> (e.g no-file=1024). This argument can be used multiple times. "
            "Resources: fsize (maximum size in bytes of files created), no-file (one more than the "
            "largest fd number that can be opened).",
        ),
        Flag("cgroup-version", "Select the cgroup version used by the jailer.", default="1"),
        Flag("parent-cgroup", "Parent cgroup in which the cgroup of this microvm will be placed."),
        Flag("version", "Print the binary version number.", takes_value=False),
        Flag("help", "Print this help message (also -h).", takes_value=False),
    )
}
REPEATABLE = frozenset({"cgroup", "resource-limit"})
REQUIRED = ("id", "exec-file", "uid", "gid")


@dataclasses.dataclass(frozen=True)
class JailerArgs:
    id: str
    exec_file: str  # canonical
    exec_name: str
    uid: int
    gid: int
    chroot_base: str  # canonical
    netns: str | None = None
    daemonize: bool = False
    new_pid_ns: bool = False
    cgroups: tuple[cgroup.CgroupSetting, ...] = ()
    cgroup_version: int = 1
    parent_cgroup: str = ""
    resource_limits: dict[str, int] = dataclasses.field(default_factory=dict)
    extra_args: tuple[str, ...] = ()

    @property
    def chroot_dir(self) -> str:
        return chroot.chroot_dir(self.chroot_base, self.exec_name, self.id)


def split_jailer_arguments(argv: Sequence[str]) -> tuple[dict[str, list[str] | bool], tuple[str, ...]]:
    values: dict[str, list[str] | bool] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return values, tuple(argv[i + 1 :])
        flag = FLAGS.get(token[2:]) if token.startswith("--") else None
        if flag is None:
            raise ArgParseError(
                f"Found argument '{token}' which wasn't expected, or isn't valid in this context."
            )
        if flag.name in values and flag.name not in REPEATABLE:
            raise ArgParseError(f"The argument '{flag.name}' was provided more than once.")
        if flag.takes_value:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ArgParseError(f"Missing value for argument '{flag.name}'.")
            seen = values.setdefault(flag.name, [])
            assert isinstance(seen, list)
            seen.append(argv[i + 1])
            i += 2
        else:
            values[flag.name] = True
            i += 1
    return values, ()


def parse_jailer_args(argv: Sequence[str]) -> JailerArgs:
    """Parse and validate; ArgParseError for grammar, JailerError for values (both exit 1)."""
    values, extra = split_jailer_arguments(argv)
    for name in REQUIRED:
        if name not in values:
            raise ArgParseError(f"Argument '{name}' required, but not found.")

    def one(name: str) -> str | None:
        value = values.get(name)
        return value[0] if isinstance(value, list) else None

    def many(name: str) -> list[str]:
        value = values.get(name)
        return value if isinstance(value, list) else []

    instance_id = one("id") or ""
    try:
        validate_instance_id(instance_id)
    except ArgParseError as e:
        raise JailerError(str(e)) from e
    exec_file = _canonical(one("exec-file") or "")
    if not os.path.isfile(exec_file):
        raise JailerError(f"{exec_file} is not a file")
    exec_name = os.path.basename(exec_file)
    base = _canonical(one("chroot-base-dir") or DEFAULT_CHROOT_BASE)
    if not os.path.isdir(base):
        raise JailerError(f"{base} is not a directory")
    uid = _id_value("uid", one("uid") or "")
    gid = _id_value("gid", one("gid") or "")
    version_text = one("cgroup-version") or "1"
    if version_text not in ("1", "2"):
        raise JailerError(f"{version_text} is an invalid cgroup version specifier")
    parent = one("parent-cgroup")
    if parent is None:
        parent = exec_name
    cgroup.validate_parent_cgroup(parent)
    return JailerArgs(
        id=instance_id,
        exec_file=exec_file,
        exec_name=exec_name,
        uid=uid,
        gid=gid,
        chroot_base=base,
        netns=one("netns"),
        daemonize="daemonize" in values,
        new_pid_ns="new-pid-ns" in values,
        cgroups=tuple(cgroup.parse_cgroup_arg(a) for a in many("cgroup")),
        cgroup_version=int(version_text),
        parent_cgroup=parent,
        resource_limits=limits.parse_resource_limits(many("resource-limit")),
        extra_args=extra,
    )


def _canonical(path: str) -> str:
    try:
        os.stat(path)
    except OSError as e:
        raise JailerError(f"Failed to canonicalize path {path}: {e.strerror} (os error {e.errno})") from e
    return os.path.realpath(path)


def _id_value(name: str, value: str) -> int:
    try:
        return parse_unsigned(name, value, U32_MAX)
    except ArgParseError as e:
        raise JailerError(f"Invalid {name}: {value}") from e


def run(args: JailerArgs, start_us: int) -> None:
    """Catalog section 3.2 steps 4-20; returns only on error (raises JailerError)."""
    plan = None
    if args.cgroups:
        plan = cgroup.build_plan(list(args.cgroups), args.cgroup_version, args.parent_cgroup, args.id)
    elif args.cgroup_version == 2:
        cgroup.join_parent_v2(args.parent_cgroup, os.getpid())
    uffd_minor = chroot.userfaultfd_minor()
    created_cgroups: list[str] = []
    preexisting = os.path.exists(os.path.dirname(args.chroot_dir))
    try:
        dev_null = _build_outside(args, plan, created_cgroups)
    except JailerError:
        _undo(args, plan, created_cgroups, preexisting)
        raise
    _finish_inside(args, start_us, uffd_minor, dev_null)


def _undo(
    args: JailerArgs, plan: cgroup.CgroupPlan | None, created_cgroups: list[str], preexisting: bool
) -> None:
    """Leave no half-built jail: remove the instance dir and the cgroups this run created."""
    instance_dir = os.path.dirname(args.chroot_dir)
    if not preexisting:
        shutil.rmtree(instance_dir, ignore_errors=True)
        try:
            os.rmdir(os.path.dirname(instance_dir))  # <base>/<exec-name>, if now empty
        except OSError:
            pass
    if plan is not None:
        cgroup.undo(plan, os.getpid(), created_cgroups)


def _build_outside(args: JailerArgs, plan: cgroup.CgroupPlan | None, created_cgroups: list[str]) -> int:
    """Steps 7-12, on the host file system; returns the /dev/null fd (-1 without --daemonize)."""
    root = args.chroot_dir
    chroot.make_chroot_dir(root)
    chroot.copy_exec_file(args.exec_file, os.path.join(root, args.exec_name), args.uid, args.gid)
    if args.netns is not None:
        try:
            fd = os.open(args.netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise JailerError(f"Failed to open file {args.netns}: {e}") from e
        try:
            ns.setns(fd, ns.CLONE_NEWNET)
        except OSError as e:
            raise JailerError(f"Failed to join network namespace: netns: {e}") from e
        finally:
            os.close(fd)
    limits.apply_resource_limits(args.resource_limits)
    if plan is not None:
        cgroup.apply(plan, os.getpid(), created_cgroups)
    dev_null = -1
    if args.daemonize:
        try:
            dev_null = os.open("/dev/null", os.O_RDWR)
        except OSError as e:
            raise JailerError(f"Failed to open /dev/null: {e}") from e
    return dev_null


def _finish_inside(args: JailerArgs, start_us: int, uffd_minor: int | None, dev_null: int) -> None:
    """Steps 14-20: pivot_root, device nodes, daemonize, PID namespace, pid file, exec."""
    binds = chroot.python_runtime_paths() if chroot.is_script(args.exec_file) else []
    chroot.enter_jail(args.chroot_dir, binds)
    for warning in chroot.populate_jail(args.uid, args.gid, uffd_minor):
        sys.stderr.write(warning + "\n")
    jailer_cpu_us = exec.cpu_time_us()
    if args.daemonize:
        jailer_cpu_us += exec.daemonize(dev_null)
    pid_file = f"/{args.exec_name}.pid"
    if args.new_pid_ns:
        exec.enter_new_pid_ns(pid_file)
    else:
        exec.write_pid_file(pid_file, os.getpid())
    path = f"/{args.exec_name}"
    argv = [
        path,
        "--id", args.id,
        "--start-time-us", str(start_us),
        "--start-time-cpu-us", str(exec.cpu_time_us()),
        "--parent-cpu-time-us", str(jailer_cpu_us),
        *args.extra_args,
    ]  # fmt: skip
    exec.drop_and_exec(path, argv, args.uid, args.gid)


def formatted_help() -> str:
    rows = []
    for name in sorted(FLAGS):
        flag = FLAGS[name]
        usage = f"--{name} <{name}>" if flag.takes_value else f"--{name}"
        text = flag.help + (f' [default: "{flag.default}"]' if flag.default is not None else "")
        rows.append((usage, text))
    width = max(len(u) for u, _ in rows)
    required = "required arguments:\n" + "\n".join(
        f"  {u.ljust(width)}  {t}" for u, t in rows if u.split()[0][2:] in REQUIRED
    )
    optional = "optional arguments:\n" + "\n".join(
        f"  {u.ljust(width)}  {t}" for u, t in rows if u.split()[0][2:] not in REQUIRED
    )
    return f"{required}\n\n{optional}"


def main(argv: list[str] | None = None) -> int:
    """The console script: sanitise, parse, build the jail, exec. Returns only on error."""
    start_us = time.monotonic_ns() // 1000
    if argv is None:
        argv = sys.argv[1:]
    ns.close_range_unshare(3)  # step 1: nothing inherited reaches the VMM...
    os.environ.clear()  # ...and it starts with an empty environment
    if "--help" in argv or "-h" in argv:
        sys.stdout.write(f"Jailer v{__version__}\n\n{formatted_help()}\n")
        return 0
    if "--version" in argv:
        sys.stdout.write(f"Jailer v{__version__}\n\n")
        return 0
    try:
        args = parse_jailer_args(argv)
    except ArgParseError as e:
        sys.stderr.write(f"Arguments parsing error: {e}\n\nFor more information try --help.\n")
        return 1
    except JailerError as e:
        sys.stderr.write(f"Jailer error: {e}\n")
        return 1
    try:
        run(args, start_us)
    except JailerError as e:
        sys.stderr.write(f"Jailer error: {e}\n")
    return 1


__all__ = ["main", "parse_jailer_args", "JailerArgs", "FLAGS"]
