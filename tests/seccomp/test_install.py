"""Seccomp policies: the shipped JSON files parse and compile; installed filters allow and forbid.

Installing a filter cannot be undone, so every install happens in a forked child (core dumps
disabled); the child reports through a pipe and ends with ``os._exit``.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import threading
from collections.abc import Callable

import pytest

from sparkler.seccomp import install as sc

FORBIDDEN_IN_EVERY_ROLE = "getppid"  # harmless, and in none of the shipped allow-lists


def _in_child(body: Callable[[int], None]) -> tuple[int, bytes]:
    """Run body(write_fd) in a forked child; returns (wait status, what it wrote)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a SIGSYS death must not dump core
            body(w)
        except BaseException as e:  # noqa: BLE001 - report any failure through the exit code
            try:
                os.write(w, f"error: {e!r}".encode())
            finally:
                code = 99
        os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 4096):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return status, b"".join(chunks)


def test_shipped_filters_parse_and_compile_within_bpf_limit():
    policies = sc.default_policies()
    assert set(policies) == {"vmm", "api", "vcpu"}
    for role, policy in policies.items():
        program = sc.compile_policy(policy)
        assert 0 < len(program) // 8 <= sc.MAX_BPF_INSTRUCTIONS, role
        assert policy.default_action == sc.SCMP_ACT_TRAP and policy.filter_action == sc.SCMP_ACT_ALLOW


def test_shipped_filters_do_not_allow_the_forbidden_probe_syscall():
    for role, policy in sc.default_policies().items():
        assert FORBIDDEN_IN_EVERY_ROLE not in {r.syscall for r in policy.rules}, role


@pytest.mark.parametrize("role", ["vmm", "api", "vcpu"])
def test_install_filter_forbidden_syscall_kills_child_with_sigsys(role):
    def body(w: int) -> None:
        sc.install_filter(role)
        os.write(w, b"installed")
        os.getppid()  # trapped: SIGSYS with the default disposition ends the process
        os.write(w, b" survived")

    status, out = _in_child(body)
    assert out == b"installed"
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


@pytest.mark.parametrize("role", ["vmm", "api", "vcpu"])
def test_install_filter_allows_listed_syscalls(role, tmp_path):
    target = tmp_path / "f.txt"

    def body(w: int) -> None:
        sc.install_filter(role)
        with open(target, "w") as f:  # openat, write, close
            f.write("x")
        os.stat(target)
        os.getpid()
        lock = threading.Lock()
        with lock:
            pass
        os.write(w, f"mode={sc.seccomp_mode()}".encode())

    status, out = _in_child(body)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out
    assert out == b"mode=2"


def test_install_filter_is_per_thread():
    def body(w: int) -> None:
        sc.configure()  # compile before the thread, as the VMM does at start-up
        modes: dict[str, int] = {}

        def api_thread() -> None:
            sc.install_filter("api")
            modes["api"] = sc.seccomp_mode()

        t = threading.Thread(target=api_thread)
        t.start()
        t.join()
        os.write(w, f"{modes['api']} {sc.seccomp_mode()}".encode())

    status, out = _in_child(body)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out
    assert out == b"2 0"  # the filtered thread has mode 2, the main thread none


def test_no_seccomp_installs_nothing():
    def body(w: int) -> None:
        sc.configure(no_seccomp=True)
        for role in sc.ROLES:
            sc.install_filter(role)
        os.getppid()
        os.write(w, f"mode={sc.seccomp_mode()}".encode())

    status, out = _in_child(body)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out
    assert out == b"mode=0"


def _custom_file(extra_rule: dict, *, default: object = "trap") -> bytes:
    base = {role: json.loads(sc.resources.files("sparkler.seccomp").joinpath("filters", f"{role}.json")
                             .read_text())[role] for role in sc.ROLES}  # fmt: skip
    for role in sc.ROLES:
        base[role] = dict(base[role], default_action=default, filter=[*base[role]["filter"], extra_rule])
    return json.dumps(base).encode()


def test_custom_filter_argument_conditions_allow_and_forbid():
    rule = {"syscall": "kill", "args": [{"index": 1, "type": "dword", "op": "eq", "val": 0}]}
    policies = sc.parse_filter_file(_custom_file(rule))

    def body(w: int) -> None:
        sc.configure(policies=policies)
        sc.install_filter("vcpu")
        os.kill(os.getpid(), 0)  # signal 0: allowed by the argument condition
        os.write(w, b"signal-0-ok")
        os.kill(os.getpid(), signal.SIGCONT)  # any other signal: trapped

    status, out = _in_child(body)
    assert out == b"signal-0-ok"
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


def test_custom_filter_errno_default_action_fails_the_call_with_errno():
    policies = sc.parse_filter_file(_custom_file({"syscall": "getpid"}, default={"errno": 1}))

    def body(w: int) -> None:
        sc.configure(policies=policies)
        sc.install_filter("vcpu")
        try:
            os.chdir("/")  # chdir is in no allow-list: fails with EPERM (1) instead of trapping
        except OSError as e:
            os.write(w, f"errno={e.errno}".encode())

    status, out = _in_child(body)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out
    assert out == b"errno=1"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"vmm": {}, "api": {}}, "Missing thread category: vcpu"),
        ({"vmm": {}, "api": {}, "vcpu": {}, "other": {}}, "Invalid thread categories"),
    ],
)
def test_parse_filter_file_requires_exactly_three_categories(document, message):
    with pytest.raises(sc.SeccompError, match=message):
        sc.parse_filter_file(json.dumps(document))


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"default_action": "explode", "filter_action": "allow"}, "invalid action"),
        ({"default_action": "trap", "filter_action": "allow", "filter": [{"comment": "x"}]}, "syscall name"),
        (
            {"default_action": "trap", "filter_action": "allow",
             "filter": [{"syscall": "read", "args": [{"index": 6, "type": "dword", "op": "eq", "val": 0}]}]},
            "index must be 0 to 5",
        ),
        (
            {"default_action": "trap", "filter_action": "allow",
             "filter": [{"syscall": "read", "args": [{"index": 0, "type": "dword", "op": "is", "val": 0}]}]},
            "unknown op",
        ),
    ],
)  # fmt: skip
def test_parse_policy_rejects_malformed_rules(policy, message):
    with pytest.raises(sc.SeccompError, match=message):
        sc.parse_policy(policy, "vmm")


def test_compile_policy_rejects_unknown_syscall():
    policy = sc.parse_policy({"default_action": "trap", "filter_action": "allow",
                              "filter": [{"syscall": "no_such_call"}]}, "vmm")  # fmt: skip
    with pytest.raises(sc.SeccompError, match="unknown syscall 'no_such_call'"):
        sc.compile_policy(policy)


def test_install_filter_unknown_role_is_an_error():
    with pytest.raises(sc.SeccompError, match="unknown thread role"):
        sc.install_filter("gpu")


def test_load_filter_file_reads_the_json_format(tmp_path):
    path = tmp_path / "filters.json"
    path.write_bytes(_custom_file({"syscall": "getppid"}))
    policies = sc.load_filter_file(str(path))
    assert set(policies) == set(sc.ROLES)
    assert "getppid" in {r.syscall for r in policies["api"].rules}


def test_load_filter_file_missing_file_is_an_error(tmp_path):
    with pytest.raises(sc.SeccompError, match="cannot read the seccomp filter file"):
        sc.load_filter_file(str(tmp_path / "nope.json"))
