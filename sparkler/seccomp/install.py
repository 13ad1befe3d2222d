"""Compile the per-role seccomp policies with libseccomp and install one on the calling thread.

Policy format (Firecracker's ``seccompiler`` input, catalog section 10.3)::

    {"<role>": {"default_action": <action>, "filter_action": <action>,
                "filter": [{"syscall": "<name>", "comment": "...",
                            "args": [{"index": 0-5, "type": "dword"|"qword",
                                      "op": "eq"|"ne"|"lt"|"le"|"gt"|"ge"|{"masked_eq": <mask>},
                                      "val": <u64>, "comment": "..."}]}]}}

Actions: ``"allow"``, ``"trap"``, ``"log"``, ``"kill_thread"``, ``"kill_process"``, ``{"errno": N}``,
``{"trace": N}``. Rules for one syscall are OR-ed, the ``args`` of a rule AND-ed; a ``dword`` ``eq``
compares the low 32 bits (a masked compare), as seccompiler does. The shipped policies are
allow-lists with ``default_action: "trap"``: a forbidden syscall raises SIGSYS, which the VMM's
handler (``sparkler.host.signals``) turns into exit code 148 with ``seccomp.num_faults = 1`` and a log
line naming the syscall (:func:`find_bad_syscall`); with no handler installed SIGSYS kills the
process (the kernel's default action).

How it works: ``compile_policy`` builds a libseccomp context (``seccomp_init`` with the default
action, ``seccomp_rule_add_array`` per rule) and exports the BPF program (``seccomp_export_bpf``) as
bytes. ``install_bpf`` loads such a program on the *calling thread only*:
``prctl(PR_SET_NO_NEW_PRIVS, 1)`` then ``seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_LOG,
&prog)`` without ``SECCOMP_FILTER_FLAG_TSYNC`` (the kernel keeps filters per task; the LOG flag makes
the kernel audit-log every trapped call, which is how the VMM names the syscall). Threads created
afterwards inherit their creator's filters, and filters stack (every installed filter must allow a
syscall), so a thread started by the filtered main thread runs with vmm + its own policy; that is why
``vmm.json`` (unlike Firecracker's) allows ``clone``/``clone3`` (threads only: ``CLONE_THREAD``),
``prctl(PR_SET_NAME | PR_SET_NO_NEW_PRIVS)`` and ``seccomp(SECCOMP_SET_MODE_FILTER)``.

The allow-lists come from ``strace -f -X raw`` of real runs (config file and API: boot, pause/resume,
PUT/PATCH drives, FlushMetrics, SendCtrlAltDel, SIGHUP, guest reset), taking each thread's calls
after its ``seccomp()`` call, plus what CPython itself may do on any thread (lazy imports:
``openat``, ``newfstatat``, ``getdents64``; allocator: ``mmap``/``munmap``/``madvise``; GIL:
``futex``; thread exit). Argument rules: ``ioctl`` request numbers on every thread (vCPU: KVM_RUN,
KVM_GET_REGS, KVM_GET_SREGS, KVM_IRQ_LINE, TCGETS, and KVM_SET_REGS/KVM_GET/SET_VCPU_EVENTS for
the PVM compatibility mode; API: FIONBIO, TCGETS; VMM: the KVM and ``'T'``
ioctl types), no ``PROT_EXEC`` in ``mmap``/``mprotect`` on API and vCPU threads, ``madvise`` there only
DONTNEED/FREE, ``fcntl`` fd-flag commands, ``socket(AF_UNIX)``, ``clone(CLONE_THREAD)``.

Wiring (``sparkler.vmm``; this module imports nothing from it):

* start-up (catalog 2.3 step 7, ``vmm.runtime.setup_process``): ``configure(no_seccomp=...,
  policies=None or load_filter_file(path))`` compiles the three programs, so a broken policy is a
  start-up error (SeccompError, exit 1) and threads pay one syscall;
* ``fc_api``: names itself, then ``install_thread_filter("api")`` before it accepts a connection;
* ``fc_vcpu <n>``: names itself, then ``install_thread_filter("vcpu")`` before the first KVM_RUN;
* main thread: ``install_thread_filter("vmm")`` once the machine is built and started, before the
  event loop;
* ``install_thread_filter`` is a no-op in a process that never called ``configure`` (in-process
  tests) and installs nothing after ``configure(no_seccomp=True)`` (``Seccomp: 0``).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from sparkler.errors import ConfigError

ROLES = ("vmm", "api", "vcpu")
FILTERS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "filters")
MAX_BPF_INSTRUCTIONS = 4096  # BPF_MAXINSNS
BPF_INSTRUCTION_SIZE = 8  # struct sock_filter
MAX_FILTER_FILE_SIZE = 1 << 20

# libseccomp actions (seccomp.h)
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_KILL_THREAD = 0x00000000
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_LOG = 0x7FFC0000
SCMP_ACT_ALLOW = 0x7FFF0000
_SIMPLE_ACTIONS = {
    "allow": SCMP_ACT_ALLOW,
    "trap": SCMP_ACT_TRAP,
    "log": SCMP_ACT_LOG,
    "kill_thread": SCMP_ACT_KILL_THREAD,
    "kill_process": SCMP_ACT_KILL_PROCESS,
    "kill": SCMP_ACT_KILL_THREAD,
}
_ERRNO = 0x00050000
_TRACE = 0x7FF00000
# enum scmp_compare
_OPS = {"ne": 1, "lt": 2, "le": 3, "eq": 4, "ge": 5, "gt": 6}
SCMP_CMP_MASKED_EQ = 7
U32_MASK = 0xFFFFFFFF
U64_MAX = 2**64 - 1

PR_SET_NO_NEW_PRIVS = 38  # linux/prctl.h
SYS_SECCOMP = 317  # x86_64
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_LOG = 2  # linux/seccomp.h (4.14+): the kernel audit-logs this filter's traps
SCMP_ARCH_NATIVE = 0

# Test-only hook (see ``install_thread_filter``): both variables must be set.
TEST_HOOKS_ENV = "SPARKLER_TEST_HOOKS"
BAD_SYSCALL_ENV = "SPARKLER_TEST_BAD_SYSCALL"
BAD_SYSCALL_NR = 110  # getppid: harmless, and in none of the shipped allow-lists


class SeccompError(ConfigError):
    """A policy cannot be parsed, compiled or installed."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class ArgCondition(msgspec.Struct, frozen=True):
    index: int
    op: int
    datum_a: int
    datum_b: int


class Rule(msgspec.Struct, frozen=True):
    syscall: str
    args: tuple[ArgCondition, ...] = ()


class Policy(msgspec.Struct, frozen=True):
    default_action: int
    filter_action: int
    rules: tuple[Rule, ...]


# --- parsing -----------------------------------------------------------------------------------------
def parse_action(value: Any) -> int:
    if isinstance(value, str) and value in _SIMPLE_ACTIONS:
        return _SIMPLE_ACTIONS[value]
    if isinstance(value, dict) and len(value) == 1:
        ((kind, number),) = value.items()
        if kind in ("errno", "trace") and isinstance(number, int) and 0 <= number <= 0xFFFF:
            return (_ERRNO if kind == "errno" else _TRACE) | number
    raise SeccompError(f"invalid action: {value!r}")


def _parse_arg(raw: Any, where: str) -> ArgCondition:
    if not isinstance(raw, dict):
        raise SeccompError(f"{where}: an argument condition must be an object")
    index, kind, op, val = raw.get("index"), raw.get("type"), raw.get("op"), raw.get("val")
    if not isinstance(index, int) or not 0 <= index <= 5:
        raise SeccompError(f"{where}: index must be 0 to 5")
    if kind not in ("dword", "qword"):
        raise SeccompError(f"{where}: type must be dword or qword")
    if not isinstance(val, int) or not 0 <= val <= U64_MAX:
        raise SeccompError(f"{where}: val must be an unsigned 64-bit integer")
    if isinstance(op, dict) and set(op) == {"masked_eq"} and isinstance(op["masked_eq"], int):
        mask = op["masked_eq"] & (U32_MASK if kind == "dword" else U64_MAX)
        return ArgCondition(index, SCMP_CMP_MASKED_EQ, mask, val & mask)
    if op not in _OPS:
        raise SeccompError(f"{where}: unknown op {op!r}")
    if kind == "dword":
        if val > U32_MASK:
            raise SeccompError(f"{where}: a dword val must fit in 32 bits")
        if op == "eq":  # seccompiler: compare only the low 32 bits
            return ArgCondition(index, SCMP_CMP_MASKED_EQ, U32_MASK, val)
    return ArgCondition(index, _OPS[op], val, 0)


def parse_policy(raw: Any, role: str) -> Policy:
    if not isinstance(raw, dict):
        raise SeccompError(f"{role}: the filter must be an object")
    unknown = set(raw) - {"default_action", "filter_action", "filter"}
    if unknown:
        raise SeccompError(f"{role}: unknown keys {sorted(unknown)}")
    rules = []
    for i, entry in enumerate(raw.get("filter", [])):
        where = f"{role}.filter[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("syscall"), str):
            raise SeccompError(f"{where}: a rule needs a syscall name")
        args = entry.get("args") or []
        if not isinstance(args, list):
            raise SeccompError(f"{where}: args must be a list")
        rules.append(Rule(entry["syscall"], tuple(_parse_arg(a, where) for a in args)))
    return Policy(
        parse_action(raw.get("default_action")), parse_action(raw.get("filter_action")), tuple(rules)
    )


def parse_filter_file(data: bytes | str) -> dict[str, Policy]:
    """A custom filter file: exactly the three thread categories (Firecracker's rule)."""
    try:
        raw = json.loads(data)
    except ValueError as e:
        raise SeccompError(f"invalid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise SeccompError("the filter file must be a JSON object")
    keys = {k.lower(): v for k, v in raw.items()}
    extra = set(keys) - set(ROLES)
    if extra:
        raise SeccompError(f"Invalid thread categories: {sorted(extra)}")
    for role in ROLES:
        if role not in keys:
            raise SeccompError(f"Missing thread category: {role}")
    return {role: parse_policy(keys[role], role) for role in ROLES}


def load_filter_file(path: str) -> dict[str, Policy]:
    """``--seccomp-filter FILE`` in Sparkler's format: the JSON above with exactly the three roles.

    (Firecracker's flag takes a compiled bitcode blob; Sparkler takes the JSON source and compiles
    it at start-up, so one format serves both the shipped and the custom policies.) Pass the result
    to ``configure(policies=...)``.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILTER_FILE_SIZE + 1)
    except OSError as e:
        raise SeccompError(f"cannot read the seccomp filter file {path}: {e.strerror}") from e
    if len(data) > MAX_FILTER_FILE_SIZE:
        raise SeccompError(f"the seccomp filter file {path} is larger than {MAX_FILTER_FILE_SIZE} bytes")
    return parse_filter_file(data)


def default_policies() -> dict[str, Policy]:
    """The shipped ``filters/<role>.json`` (read by path: importlib.resources costs start-up time)."""
    policies = {}
    for role in ROLES:
        with open(os.path.join(FILTERS_DIR, f"{role}.json"), "rb") as f:
            raw = json.loads(f.read())
        if set(raw) != {role}:
            raise SeccompError(f"filters/{role}.json must hold exactly the {role!r} filter")
        policies[role] = parse_policy(raw[role], role)
    return policies


# --- compiling with libseccomp -----------------------------------------------------------------------
_lib: Any = None
_libc: Any = None


def _c() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols include libc's
        _libc.syscall.restype = ctypes.c_long
        _libc.free.argtypes = [ctypes.c_void_p]
    return _libc


def _libseccomp() -> Any:
    global _lib
    if _lib is None:
        try:  # the soname first: find_library runs ldconfig/gcc, absent (and slow) inside a jail
            lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        except OSError:
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so", use_errno=True)
            except OSError as e:
                raise SeccompError(f"libseccomp is not available: {e}") from e
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp),
        ]  # fmt: skip
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.seccomp_syscall_resolve_num_arch.argtypes = [ctypes.c_uint32, ctypes.c_int]
        lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p
        _lib = lib
    return _lib


def compile_policy(policy: Policy) -> bytes:
    """The classic-BPF program (``struct sock_filter[]``) for this thread's architecture."""
    lib = _libseccomp()
    ctx = lib.seccomp_init(policy.default_action)
    if not ctx:
        raise SeccompError("seccomp_init failed")
    try:
        for rule in policy.rules:
            nr = lib.seccomp_syscall_resolve_name(rule.syscall.encode())
            if nr < 0:
                raise SeccompError(f"unknown syscall {rule.syscall!r}")
            conditions = (_ArgCmp * max(1, len(rule.args)))(
                *[_ArgCmp(a.index, a.op, a.datum_a, a.datum_b) for a in rule.args]
            )
            rc = lib.seccomp_rule_add_array(ctx, policy.filter_action, nr, len(rule.args), conditions)
            if rc < 0:
                raise SeccompError(f"cannot add the rule for {rule.syscall!r}: {os.strerror(-rc)}")
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise SeccompError(f"seccomp_export_bpf failed: {os.strerror(-rc)}")
            program = os.pread(fd, MAX_BPF_INSTRUCTIONS * BPF_INSTRUCTION_SIZE + 1, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    if len(program) > MAX_BPF_INSTRUCTIONS * BPF_INSTRUCTION_SIZE:
        raise SeccompError(f"the program has more than {MAX_BPF_INSTRUCTIONS} instructions")
    return program


# --- installing --------------------------------------------------------------------------------------
_log_flag = SECCOMP_FILTER_FLAG_LOG


def install_bpf(program: bytes) -> None:
    """Load ``program`` on the calling thread (no TSYNC). An empty program means no filter.

    The filter is loaded with ``SECCOMP_FILTER_FLAG_LOG`` (unlike Firecracker): a trapped syscall is
    then written to the kernel audit log (``dmesg``: ``audit: type=1326 ... comm="fc_vcpu 0" ...
    syscall=N``), which is how a violation's syscall is found (see :func:`find_bad_syscall`). Kernels
    without the flag get the filter without it.
    """
    global _log_flag
    if not program:
        return
    libc = _c()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise SeccompError(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(err)}")
    buffer = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // BPF_INSTRUCTION_SIZE, ctypes.addressof(buffer))
    while True:
        rc = libc.syscall(
            ctypes.c_long(SYS_SECCOMP),
            ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
            ctypes.c_uint(_log_flag),
            ctypes.byref(prog),
        )
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EINVAL and _log_flag:
            _log_flag = 0  # a kernel older than 4.14: no audit logging of traps
            continue
        raise SeccompError(f"seccomp(SECCOMP_SET_MODE_FILTER) failed: {os.strerror(err)}")


class _State:
    """What ``configure`` decided for this process."""

    def __init__(self) -> None:
        self.no_seccomp = False
        self.programs: dict[str, bytes] | None = None
        self.bad_syscall_role: str | None = None  # the test-only hook, read once by configure()


_state = _State()
_lock = threading.Lock()


def configure(
    *,
    no_seccomp: bool = False,
    policies: Mapping[str, Policy] | None = None,
) -> None:
    """Decide once per process (from ``--no-seccomp`` / a custom filter) and compile the programs.

    ``policies`` defaults to the shipped files; pass ``parse_filter_file(...)`` for a custom one.
    Also reads the test-only hook (``SPARKLER_TEST_HOOKS=1`` together with
    ``SPARKLER_TEST_BAD_SYSCALL=<role>``, see :func:`install_thread_filter`).
    """
    hook = os.environ.get(BAD_SYSCALL_ENV) if os.environ.get(TEST_HOOKS_ENV) == "1" else None
    if hook is not None and hook not in ROLES:
        raise SeccompError(f"{BAD_SYSCALL_ENV} must be one of {', '.join(ROLES)}, not {hook!r}")
    with _lock:
        _state.bad_syscall_role = hook
        _state.no_seccomp = no_seccomp
        if no_seccomp:
            _state.programs = {role: b"" for role in ROLES}
            return
        chosen = default_policies() if policies is None else policies
        _state.programs = {role: compile_policy(chosen[role]) for role in ROLES}


def configured() -> bool:
    """Whether this process called :func:`configure` (the VMM does at start-up)."""
    return _state.programs is not None


def install_filter(role: str) -> None:
    """Install the ``role`` filter (``vmm``, ``api`` or ``vcpu``) on the calling thread.

    A no-op after ``configure(no_seccomp=True)``; compiles the shipped policies on first use if
    ``configure`` was not called.
    """
    if role not in ROLES:
        raise SeccompError(f"unknown thread role {role!r} (expected one of {', '.join(ROLES)})")
    if _state.programs is None:
        configure()
    assert _state.programs is not None
    install_bpf(_state.programs[role])


def install_thread_filter(role: str) -> bool:
    """The VMM's install points (``fc_api``, each ``fc_vcpu N``, the main thread after the build).

    Installs ``role``'s filter on the calling thread when the process configured seccomp at
    start-up (``configure``, done by ``vmm.runtime.setup_process`` from ``--no-seccomp`` /
    ``--seccomp-filter``); a no-op otherwise, so code that drives a VMM inside another process (an
    in-process test, a library user) never filters that process's threads. Returns whether a filter
    was installed.

    Test-only hook: with ``SPARKLER_TEST_HOOKS=1`` and ``SPARKLER_TEST_BAD_SYSCALL=<role>`` in the
    environment at start-up, the thread makes one forbidden syscall (``getppid``) right after
    installing its filter, so tests can watch a violation end the process (exit code 148). Both
    variables are needed; the jailer clears the environment, so a jailed VMM never honours it.
    """
    if role not in ROLES:
        raise SeccompError(f"unknown thread role {role!r} (expected one of {', '.join(ROLES)})")
    programs = _state.programs
    if programs is None:
        return False
    install_bpf(programs[role])
    if _state.bad_syscall_role == role:
        _c().syscall(ctypes.c_long(BAD_SYSCALL_NR))
    return bool(programs[role])


# --- finding the cause of a violation ----------------------------------------------------------------
# comm is quoted, or hex-encoded when it holds a space or a quote ("fc_vcpu 0" -> 66635F766370752030)
_AUDIT_SECCOMP = (
    rb'type=1326 [^\n]*?\bpid=(\d+) [^\n]*?\bcomm=(?:"([^"\n]*)"|([0-9A-F]+))[^\n]*?\bsyscall=(\d+)'
)  # compiled on use: only a dying process needs it


class BadSyscall(msgspec.Struct, frozen=True):
    """One violation as the kernel audit log recorded it."""

    nr: int
    name: str
    thread: str

    def describe(self) -> str:
        return f"{self.name} ({self.nr}) on thread {self.thread}"


def syscall_name(nr: int) -> str:
    """The name of x86_64 syscall ``nr`` (libseccomp's table); ``syscall <nr>`` if unknown."""
    try:
        lib = _libseccomp()
    except SeccompError:
        return f"syscall {nr}"
    ptr = lib.seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr)
    if not ptr:
        return f"syscall {nr}"
    try:
        return ctypes.string_at(ptr).decode(errors="replace")
    finally:
        _c().free(ptr)


def find_bad_syscall(pid: int | None = None, timeout: float = 0.2, kmsg: str = "/dev/kmsg") -> BadSyscall | None:
    """The last seccomp violation of process ``pid`` in the kernel log, or None.

    Filters are loaded with ``SECCOMP_FILTER_FLAG_LOG``, so the kernel writes an audit record
    (``type=1326``, ``syscall=N``, the thread's ``comm``) for every trapped syscall. Without auditd
    the record lands in the kernel ring buffer (``dmesg``), which this reads through ``/dev/kmsg``
    (needs CAP_SYSLOG when ``kernel.dmesg_restrict=1``; absent inside a jail). The record is
    printed asynchronously (kauditd), so this waits up to ``timeout`` seconds for it.
    """
    pid = os.getpid() if pid is None else pid
    try:
        fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:  # the main (VMM) thread is called ``main`` in log lines; the kernel knows its comm
        with open(f"/proc/{pid}/comm") as f:
            main_comm = f.read().strip()
    except OSError:
        main_comm = None
    found: BadSyscall | None = None
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                if found is not None or time.monotonic() >= deadline:
                    return found
                time.sleep(0.005)
                continue
            except BrokenPipeError:  # records were overwritten while we read: go on
                continue
            except OSError:
                return found
            if not record:
                return found
            for m in re.finditer(_AUDIT_SECCOMP, record):  # /dev/kmsg gives one record per read
                if int(m[1]) == pid:
                    nr = int(m[4])
                    comm = (m[2] if m[2] is not None else bytes.fromhex(m[3].decode())).decode(errors="replace")
                    found = BadSyscall(nr, syscall_name(nr), "main" if comm == main_comm else comm)
    finally:
        os.close(fd)


def seccomp_mode(tid: int | None = None) -> int:
    """``Seccomp:`` of /proc/self/task/<tid>/status: 0 none, 1 strict, 2 filter."""
    tid = threading.get_native_id() if tid is None else tid
    with open(f"/proc/self/task/{tid}/status") as f:
        for line in f:
            if line.startswith("Seccomp:"):
                return int(line.split()[1])
    return 0


__all__ = [
    "ROLES",
    "Policy",
    "Rule",
    "ArgCondition",
    "SeccompError",
    "parse_action",
    "parse_policy",
    "parse_filter_file",
    "load_filter_file",
    "default_policies",
    "compile_policy",
    "install_bpf",
    "configure",
    "install_filter",
    "install_thread_filter",
    "configured",
    "find_bad_syscall",
    "syscall_name",
    "BadSyscall",
    "seccomp_mode",
]
