"""Seccomp policies: the shipped JSON files parse and compile; installed filters allow and forbid.

Installing a filter cannot be undone, so every install happens in a forked child (core dumps
disabled); the child reports through a pipe and ends with ``os._exit``.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import threading
from collections.abc import Callable
from importlib import resources

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
    base = {role: json.loads(resources.files("sparkler.seccomp").joinpath("filters", f"{role}.json")
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


# --- finding the cause of a violation ---------------------------------------------------------------
AUDIT_LINES = (
    b"6,100,1,-;audit: type=1326 audit(1.0:1): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=77 "
    b'comm="fc_api" exe="/usr/bin/python3" sig=0 arch=c000003e syscall=59 compat=0 ip=0x1 code=0x30000\n'
    b"6,101,2,-;kvm: something else pid=4242 syscall=1\n"
    b"6,102,3,-;audit: type=1326 audit(1.0:2): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=4242 "
    b'comm=66635F766370752030 exe="/usr/bin/python3" sig=0 arch=c000003e syscall=110 compat=0 ip=0x1 code=0x30000\n'
    b"6,103,4,-;audit: type=1326 audit(1.0:3): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=4242 "
    b'comm="main thread" exe="/usr/bin/python3" sig=0 arch=c000003e syscall=57 compat=0 ip=0x1 code=0x30000\n'
)


def test_find_bad_syscall_parses_audit_records_of_this_pid(tmp_path):
    log = tmp_path / "kmsg"
    log.write_bytes(AUDIT_LINES)
    found = sc.find_bad_syscall(4242, timeout=0, kmsg=str(log))
    assert found == sc.BadSyscall(57, "fork", "main thread")  # the last record of pid 4242
    log.write_bytes(AUDIT_LINES.rsplit(b"6,103", 1)[0])
    found = sc.find_bad_syscall(4242, timeout=0, kmsg=str(log))
    assert found == sc.BadSyscall(110, "getppid", "fc_vcpu 0")  # a comm with a space is hex-encoded
    assert sc.find_bad_syscall(77, timeout=0, kmsg=str(log)) == sc.BadSyscall(59, "execve", "fc_api")
    assert sc.find_bad_syscall(5, timeout=0, kmsg=str(log)) is None
    assert sc.find_bad_syscall(5, timeout=0, kmsg=str(tmp_path / "absent")) is None


def test_syscall_name_resolves_numbers():
    assert sc.syscall_name(0) == "read"
    assert sc.syscall_name(110) == "getppid"
    assert sc.syscall_name(99999) == "syscall 99999"


def _kmsg_readable() -> bool:
    try:
        os.close(os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK))
        return True
    except OSError:
        return False


def test_violation_is_in_the_kernel_audit_log():
    if not _kmsg_readable():
        pytest.skip("/dev/kmsg is not readable here (needs CAP_SYSLOG)")

    def body(w: int) -> None:
        sc.install_filter("vcpu")
        os.getppid()  # trapped: SIGSYS, audit-logged because the filter carries SECCOMP_FILTER_FLAG_LOG

    pid = os.fork()
    if pid == 0:
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            body(-1)
        finally:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS
    found = sc.find_bad_syscall(pid, timeout=3)
    if found is None and b"callbacks suppressed" in subprocess.run(["dmesg"], capture_output=True).stdout[-4000:]:
        pytest.skip("the kernel rate-limited the audit record (printk_ratelimit)")
    assert found is not None and (found.nr, found.name) == (110, "getppid")


def test_thread_started_after_the_vmm_filter_inherits_it_and_can_stack_its_own():
    """A thread the filtered main thread starts later (none does today) is covered: it inherits the
    vmm filter (Seccomp: 2 from its first instruction), and the vmm policy lets it name itself and
    add its own filter, which then also applies (getppid stays forbidden)."""

    def body(w: int) -> None:
        sc.configure()
        assert sc.install_thread_filter("vmm")
        seen: dict[str, object] = {}

        def later() -> None:
            seen["inherited"] = sc.seccomp_mode()
            from sparkler.host.thread_name import prctl_set_name

            prctl_set_name("fc_later")
            seen["stacked"] = sc.install_thread_filter("vcpu")

        t = threading.Thread(target=later)
        t.start()
        t.join()
        os.write(w, f"{seen['inherited']} {seen['stacked']} {sc.seccomp_mode()}".encode())

    status, out = _in_child(body)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out
    assert out == b"2 True 2"


def test_install_thread_filter_is_a_no_op_in_a_process_that_did_not_configure():
    def body(w: int) -> None:
        sc._state.programs = None  # a fresh process: the fork copied whatever the parent had
        installed = sc.install_thread_filter("vcpu")
        os.getppid()
        os.write(w, f"{installed} {sc.seccomp_mode()}".encode())

    status, out = _in_child(body)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out
    assert out == b"False 0"
