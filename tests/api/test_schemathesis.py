"""Property-based API testing with schemathesis against the live server, over its Unix socket.

Every operation of ``sparkler/api/openapi.yaml`` is driven with generated requests (documented
examples, schema-valid and schema-invalid bodies, the coverage phase's edge cases, undocumented
methods) against three live processes, each a subprocess in its own scratch directory:

* ``fake``: the FakeVmm (``python -m sparkler.testing.fake_machine``) pre-boot (the operations
  run in document order, so /actions comes before any boot source and it stays pre-boot);
* ``fake-booted``: the FakeVmm after InstanceStart, so the post-boot phase (PATCH /vm,
  SendCtrlAltDel, FlushMetrics, the "after starting" refusals) is explored;
* ``vmm``: the real VMM (``python -m sparkler``) pre-boot; its boot source is a broken kernel, so
  a generated InstanceStart goes through the real builder and must fail with a 400.

Checks:

* no 5xx, and the process is still alive and answers ``GET /`` afterwards;
* every status code is documented for its operation, and every body matches the document
  (``response_schema_conformance``, ``content_type_conformance``, ...);
* bodies the document calls invalid are rejected with a 4xx (``negative_data_rejection``).

Two checks are switched off because they contradict Firecracker's behaviour, which Sparkler
follows (catalog 1.1): ``unsupported_method`` expects ``405`` + ``Allow`` for an undocumented
method, where micro-http answers ``400`` (parse error, or ``Invalid request method and/or
path``); ``positive_data_acceptance`` expects a 2xx for every schema-valid body, where
Firecracker answers 400 for semantic errors no schema expresses (missing files, wrong phase,
``vcpu_count`` odd with SMT, metrics initialised twice ...).

Requests go over AF_UNIX through a requests adapter (no TCP). Generation is deterministic
(``generation.deterministic`` = Hypothesis' derandomize, plus a fixed seed), and paths in bodies
that would leave the process' scratch directory are rewritten into it, so the test never
creates files elsewhere.
"""

from __future__ import annotations

import hashlib
import pathlib
import socket
import subprocess
import sys
import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from requests.adapters import HTTPAdapter
from schemathesis.specs.openapi.checks import content_type_conformance
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

OURS = pathlib.Path(__file__).resolve().parents[2] / "sparkler" / "api" / "openapi.yaml"
BASE_URL = "http://sparkler"
MAX_EXAMPLES = 100
SEED = 20261127
# Body fields that name host files: kept when relative and free of "..", else rewritten.
PATH_FIELDS = (
    "kernel_image_path",
    "initrd_path",
    "log_path",
    "metrics_path",
    "serial_out_path",
    # device endpoints, once the document lists them
    "path_on_host",
    "socket",
    "uds_path",
    "snapshot_path",
    "mem_file_path",
)

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {"deterministic": True, "max-examples": MAX_EXAMPLES},
        "phases": {"stateful": {"enabled": False}},
        "checks": {
            "unsupported_method": {"enabled": False},
            "positive_data_acceptance": {"enabled": False},
        },
    }
)


def load_document() -> dict:
    """Our document, with the two adjustments below made explicit."""
    import copy

    import yaml  # a schemathesis dependency

    doc = yaml.safe_load(OURS.read_text())
    # PATCH /machine-config: both documents (ours, to stay compatible, and Firecracker's) name
    # MachineConfiguration, whose vcpu_count and mem_size_mib are required, yet Firecracker and
    # Sparkler take any non-empty subset of it (MachineConfigUpdate, every field Option<T>;
    # catalog 1.2). The test checks the server against what it really accepts.
    update = copy.deepcopy(doc["definitions"]["MachineConfiguration"])
    update.pop("required")
    for prop in update["properties"].values():
        prop["x-nullable"] = True
    update["minProperties"] = 1
    doc["definitions"]["MachineConfigurationUpdate"] = update
    body = doc["paths"]["/machine-config"]["patch"]["parameters"][0]
    body["schema"] = {"$ref": "#/definitions/MachineConfigurationUpdate"}
    # Not fuzzed here: a random host_dev_name would create real taps in the host's network
    # namespace (the test runs as root) and a random uds_path would bind sockets anywhere. Their
    # endpoints have router, API and netns/e2e tests of their own (tests/api/test_router_net.py,
    # tests/e2e/test_net.py, tests/e2e/test_vsock*.py).
    for path in ("/network-interfaces/{iface_id}", "/vsock"):
        doc["paths"].pop(path)
    # PUT/PATCH /mmds: both documents say object, yet Firecracker (serde_json::Value) and Sparkler
    # store any JSON value, so GET /mmds answers whatever was stored.
    doc["definitions"]["MmdsContentsObject"].pop("type")
    doc["paths"]["/mmds"]["get"]["responses"][200]["schema"] = {}
    # x-nullable means null is valid, but schemathesis keeps an enum that omits null strict in
    # requests; null is added to such enums here (not in the file: test_openapi.py requires our
    # enums to be subsets of Firecracker's).
    for definition in doc["definitions"].values():
        for prop in (definition.get("properties") or {}).values():
            if prop.get("x-nullable") and isinstance(prop.get("enum"), list) and None not in prop["enum"]:
                prop["enum"] = [*prop["enum"], None]
    return doc


schema = schemathesis.openapi.from_dict(load_document(), config=CONFIG)


# --- requests over a Unix socket -----------------------------------------------------------------
class _UnixConnection(HTTPConnection):
    def __init__(self, *args, socket_path: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout if isinstance(self.timeout, int | float) else 10)
        sock.connect(self._socket_path)
        return sock


class _UnixPool(HTTPConnectionPool):
    ConnectionCls = _UnixConnection


class UnixAdapter(HTTPAdapter):
    """Sends every request of a session to one AF_UNIX socket (at most 2 pooled connections)."""

    def __init__(self, socket_path: str) -> None:
        super().__init__(max_retries=0)
        self._pool = _UnixPool("localhost", maxsize=2, socket_path=socket_path)

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()


def unix_session(socket_path: str) -> requests.Session:
    session = requests.Session()
    session.mount(BASE_URL, UnixAdapter(socket_path))
    return session


# --- the processes under test --------------------------------------------------------------------
COMMANDS = {
    "fake": [sys.executable, "-m", "sparkler.testing.fake_machine", "--api-sock"],
    "fake-booted": [sys.executable, "-m", "sparkler.testing.fake_machine", "--api-sock"],
    "vmm": [sys.executable, "-m", "sparkler", "--api-sock"],
}
# Files that exist in the process' cwd: half of the generated kernel/initrd paths name them.
KERNEL, INITRD = "vmlinux", "initrd.img"


class Target:
    """One API process under test, in its own scratch directory (its cwd)."""

    def __init__(self, kind: str, root: pathlib.Path) -> None:
        self.kind = kind
        self.workdir = root / "work"  # relative paths in bodies land here
        self.workdir.mkdir()
        (self.workdir / KERNEL).write_bytes(b"not an ELF kernel\n")
        (self.workdir / INITRD).write_bytes(b"not an initrd\n")
        self.socket_path = str(root / "fc.sock")
        self.log = open(root / "process.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            COMMANDS[kind] + [self.socket_path],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.session = unix_session(self.socket_path)
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, self.output()
            try:
                if self.session.get(BASE_URL + "/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the API socket did not answer"
                time.sleep(0.02)
        if kind == "vmm":  # every generated InstanceStart goes through the real builder and fails
            self.put("/boot-source", {"kernel_image_path": KERNEL})
        elif kind == "fake-booted":
            self.put("/boot-source", {"kernel_image_path": KERNEL})
            self.put("/actions", {"action_type": "InstanceStart"})

    def put(self, path: str, doc: dict) -> None:
        response = self.session.put(BASE_URL + path, json=doc, timeout=10)
        assert response.status_code == 204, response.text

    def output(self) -> str:
        self.log.flush()
        return pathlib.Path(self.log.name).read_text(errors="replace")[-4000:]

    def assert_alive(self) -> None:
        assert self.process.poll() is None, (
            f"{self.kind} exited with {self.process.returncode}:\n{self.output()}"
        )
        response = self.session.get(BASE_URL + "/", timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["state"] in ("Not started", "Running", "Paused")

    def stop(self) -> None:
        self.session.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()


@pytest.fixture(scope="module", params=sorted(COMMANDS))
def target(request, tmp_path_factory):
    t = Target(request.param, tmp_path_factory.mktemp(f"schemathesis-{request.param}"))
    yield t
    t.stop()


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def confine_paths(body: object) -> None:
    """Keep file paths of a body inside the process' cwd (it runs as root in CI).

    A path that is absolute or has ``..`` becomes a plain name there. Half of the kernel and
    initrd paths (chosen by a hash, so deterministically) name the files that exist, so that
    PUT /boot-source succeeds and InstanceStart is tried with a broken kernel.
    """
    if not isinstance(body, dict):
        return
    for key, existing in (("kernel_image_path", KERNEL), ("initrd_path", INITRD)):
        value = body.get(key)
        if isinstance(value, str) and int(_digest(value)[0], 16) % 2 == 0:
            body[key] = existing
    for key in PATH_FIELDS:
        value = body.get(key)
        if isinstance(value, str) and (value.startswith("/") or ".." in value):
            body[key] = "f_" + _digest(value)[:16]


def content_type_unless_no_content(ctx, response, case):
    """``content_type_conformance``, except that a 204 carries no body and so no Content-Type.

    Swagger 2.0's ``produces`` is per operation, not per response, so the built-in check wants
    ``application/json`` on the 204s too; micro-http sends neither a body nor the header there.
    """
    if response.status_code == 204:
        assert not response.content, f"204 with a body: {response.content!r}"
        assert "Content-Type" not in response.headers, response.headers
        return True
    return content_type_conformance(ctx, response, case)


@schema.parametrize()
# Stable in CI: a fixed sequence, no example database replaying earlier runs, no timing checks.
@settings(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_matches_openapi_document(case, target):
    confine_paths(case.body)
    case.call_and_validate(
        session=target.session,
        base_url=BASE_URL,
        excluded_checks=[content_type_conformance],
        additional_checks=[content_type_unless_no_content],
    )
    assert target.process.poll() is None, target.output()


def test_api_process_survived_and_answers(target):
    """Runs after every generated request of its target (pytest groups by the module fixture)."""
    target.assert_alive()
    if target.kind == "fake-booted":
        assert target.session.get(BASE_URL + "/", timeout=10).json()["state"] in ("Running", "Paused")


def test_openapi_document_reads_the_same_in_yaml_1_1():
    """schemathesis reads the document with PyYAML (YAML 1.1), where a bare Off is false and a
    bare 2M or None stay strings: it must read exactly as tests/api/yaml_subset.py reads it."""
    import yaml

    from . import yaml_subset

    def normalised(node):
        if isinstance(node, dict):
            return {str(k): normalised(v) for k, v in node.items()}
        if isinstance(node, list):
            return [normalised(v) for v in node]
        return node

    text = OURS.read_text()
    assert normalised(yaml.safe_load(text)) == normalised(yaml_subset.load(text))
