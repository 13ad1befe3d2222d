"""``--cgroup <controller>.<property>=<value>`` for cgroup v1 and v2 (catalog section 3.3).

Discovery reads ``/proc/mounts``: v1 hierarchies are ``cgroup`` mounts, a controller's hierarchy is
the first mount whose options name it; v2 is the first ``cgroup2`` mount. The cgroup of the VM is
``<hierarchy>/<parent_cgroup>/<id>``. v1 properties first inherit empty parent values (needed for
``cpuset.cpus``/``cpuset.mems``; with any ``cpuset.*`` setting both are inherited, otherwise attaching
fails with ENOSPC); v2 enables each controller in ``cgroup.subtree_control`` from the
root down to the parent. A plan is built (and validated) before anything is written; ``apply``
writes every value first, then attaches the pid (v1: ``tasks``, v2: ``cgroup.procs``).
"""

from __future__ import annotations

import dataclasses
import os

from sparkler.jailer import JailerError

PROC_MOUNTS = "/proc/mounts"
CPUSET_INHERITED = ("cpuset.cpus", "cpuset.mems")


@dataclasses.dataclass(frozen=True)
class CgroupSetting:
    controller: str
    file: str
    value: str


def parse_cgroup_arg(arg: str) -> CgroupSetting:
    """``cpuset.cpus=0`` -> CgroupSetting("cpuset", "cpuset.cpus", "0"); JailerError if malformed."""
    parts = arg.split("=")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise JailerError(f"Invalid format for cgroups: {arg}")
    file, value = parts
    components = file.split("/")
    controller = file.split(".", 1)[0]
    if (
        file.startswith("/")
        or any(c in ("", ".", "..") for c in components)
        or "." not in file
        or not controller
    ):
        raise JailerError(f"Invalid format for cgroups: {arg}")
    return CgroupSetting(controller, file, value)


def validate_parent_cgroup(path: str) -> None:
    if not path or path.startswith("/") or any(c in ("", ".", "..") for c in path.split("/")):
        raise JailerError("Parent cgroup path is invalid. Path should not be absolute or contain '..' or '.'")


def _mounts(fstype: str) -> list[tuple[str, list[str]]]:
    try:
        with open(PROC_MOUNTS) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise JailerError(f"Failed to read file {PROC_MOUNTS} into a string: {e}") from e
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[2] == fstype:
            found.append((fields[1], fields[3].split(",")))
    return found


def unified_root() -> str:
    mounts = _mounts("cgroup2")
    if not mounts:
        raise JailerError("Hierarchy not found: cgroup2")
    return mounts[0][0]


def v1_hierarchy(controller: str) -> str:
    for mount_point, options in _mounts("cgroup"):
        if controller in options:
            return mount_point
    raise JailerError(f"Hierarchy not found: {controller}")


@dataclasses.dataclass(frozen=True)
class CgroupPlan:
    """What to create and write: the version, the cgroup directories, the settings per directory."""

    version: int
    parent_cgroup: str
    id: str
    root: str  # v2 unified root ("" for v1)
    dirs: dict[str, list[CgroupSetting]]  # cgroup directory -> its settings, in argument order

    def created_dirs(self) -> list[str]:
        """Directories ``apply`` may create (deepest first), for callers that clean up."""
        out = []
        for d in self.dirs:
            out.append(d)
            out.append(os.path.dirname(d))
        return list(dict.fromkeys(out))


def build_plan(settings: list[CgroupSetting], version: int, parent_cgroup: str, id: str) -> CgroupPlan:
    """Resolve hierarchies and validate controllers; nothing is written."""
    dirs: dict[str, list[CgroupSetting]] = {}
    root = ""
    if version == 2:
        root = unified_root()
        available = _read(os.path.join(root, "cgroup.controllers")).split()
        for s in settings:
            if s.controller not in available:
                raise JailerError(f"Controller {s.controller} is unavailable")
            dirs.setdefault(os.path.join(root, parent_cgroup, id), []).append(s)
    else:
        for s in settings:
            dirs.setdefault(os.path.join(v1_hierarchy(s.controller), parent_cgroup, id), []).append(s)
    return CgroupPlan(version, parent_cgroup, id, root, dirs)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise JailerError(f"Failed to read file {path} into a string: {e}") from e


def _write(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(f"{value}\n")
    except OSError as e:
        raise JailerError(f"Failed to write to {path}: {e}") from e


def _inherit_from_parent(directory: str, file: str, depth: int) -> None:
    """v1: if ``directory/file`` is empty, fill it (recursively) from the parent's first line."""
    path = os.path.join(directory, file)
    if not os.path.exists(path) or _read(path).strip():
        return
    parent = os.path.dirname(directory)
    if depth > 0:
        _inherit_from_parent(parent, file, depth - 1)
    line = _read(os.path.join(parent, file)).split("\n", 1)[0]
    if not line:
        raise JailerError(f"Failed to inherit cgroups configurations from file {file} in path {parent}")
    _write(path, line)


def _mkdir(path: str, created: list[str] | None = None) -> None:
    if created is not None:
        missing = []
        probe = path
        while probe and not os.path.isdir(probe):
            missing.append(probe)
            probe = os.path.dirname(probe)
        created.extend(reversed(missing))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise JailerError(f"Failed to create directory {path}: {e}") from e


def apply(plan: CgroupPlan, pid: int, created: list[str] | None = None) -> None:
    """Create the cgroups, write every value, then (second pass) move ``pid`` into them.

    Directories this call creates are appended to ``created`` (for ``undo``).
    """
    created = [] if created is None else created
    if plan.version == 2:
        controllers = sorted({s.controller for ss in plan.dirs.values() for s in ss})
        level = plan.root
        for component in plan.parent_cgroup.split("/"):
            for c in controllers:
                _write(os.path.join(level, "cgroup.subtree_control"), f"+{c}")
            level = os.path.join(level, component)
            _mkdir(level, created)
        for c in controllers:
            _write(os.path.join(level, "cgroup.subtree_control"), f"+{c}")
    for directory, settings in plan.dirs.items():
        _mkdir(directory, created)
        depth = len(plan.parent_cgroup.split("/")) + 1
        if plan.version == 1 and any(s.controller == "cpuset" for s in settings):
            # a task cannot join a cpuset whose cpus or mems is empty (ENOSPC): inherit both first,
            # given values then overwrite them
            for file in CPUSET_INHERITED:
                _inherit_from_parent(directory, file, depth)
        for s in settings:
            if plan.version == 1:
                _inherit_from_parent(directory, s.file, depth)
            _write(os.path.join(directory, s.file), s.value)
    procs = "cgroup.procs" if plan.version == 2 else "tasks"
    for directory in plan.dirs:
        _write(os.path.join(directory, procs), str(pid))


def undo(plan: CgroupPlan, pid: int, created: list[str]) -> None:
    """Best effort after a failure: move ``pid`` back to the hierarchy roots, remove ``created``."""
    roots = (
        {plan.root}
        if plan.version == 2
        else {v1_hierarchy(s.controller) for ss in plan.dirs.values() for s in ss}
    )
    procs = "cgroup.procs" if plan.version == 2 else "tasks"
    for root in roots:
        try:
            _write(os.path.join(root, procs), str(pid))
        except JailerError:
            pass
    for directory in reversed(created):
        try:
            os.rmdir(directory)
        except OSError:
            pass


def join_parent_v2(parent_cgroup: str, pid: int) -> None:
    """v2 without ``--cgroup``: join ``<unified>/<parent_cgroup>`` if it exists (else do nothing)."""
    mounts = _mounts("cgroup2")
    if not mounts:
        return
    directory = os.path.join(mounts[0][0], parent_cgroup)
    if os.path.isdir(directory):
        try:
            _write(os.path.join(directory, "cgroup.procs"), str(pid))
        except JailerError as e:
            raise JailerError(
                f"{e} (hint: the parent cgroup must not have controllers enabled in its "
                "cgroup.subtree_control, the 'no internal processes' rule)"
            ) from e


__all__ = [
    "CgroupSetting",
    "CgroupPlan",
    "parse_cgroup_arg",
    "validate_parent_cgroup",
    "build_plan",
    "apply",
    "undo",
    "join_parent_v2",
]
