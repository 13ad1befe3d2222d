"""/mmds and /mmds/config against live servers: the API thread + controller in-process, and the real
``python -m sparkler`` process (``--mmds-size-limit``, ``--metadata``, config file)."""

import json
import socket
import subprocess
import sys
import time

import pytest

from sparkler.api.server import ApiServer
from sparkler.mmds.imds import Mmds
from sparkler.testing.fake_machine import FakeBuilder
from sparkler.vmm.channel import Channel
from sparkler.vmm.controller import Controller
from sparkler.vmm.runtime_options import BuildOptions

from .test_server import UnixHTTPConnection, Vmm, request

LIMIT = 200


class MmdsVmm(Vmm):
    def __init__(self, path, limit=LIMIT):
        self.channel = Channel()
        self.builder = FakeBuilder()
        self.controller = Controller(
            self.builder,
            BuildOptions(),
            instance_id="test_vm",
            channel=self.channel,
            mmds=Mmds(size_limit=limit, instance_id="test_vm"),
        )
        self.server = ApiServer(str(path), self.channel.call, max_payload=51200)
        self.path = str(path)
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)


@pytest.fixture
def vmm(tmp_path):
    v = MmdsVmm(tmp_path / "api.sock")
    v.start()
    yield v
    v.stop()


def test_mmds_get_before_put_is_empty_object(vmm):
    response, doc = request(vmm.client(), "GET", "/mmds")
    assert response.status == 200 and doc == {}


def test_mmds_put_get_patch_roundtrip(vmm):
    conn = vmm.client()
    response, _ = request(conn, "PUT", "/mmds", {"latest": {"meta-data": {"ami-id": "a", "x": 1}}})
    assert response.status == 204
    response, _ = request(conn, "PATCH", "/mmds", {"latest": {"meta-data": {"x": None, "y": "z"}}})
    assert response.status == 204
    response, doc = request(conn, "GET", "/mmds")
    assert doc == {"latest": {"meta-data": {"ami-id": "a", "y": "z"}}}


def test_mmds_patch_before_put_is_400_not_initialized(vmm):
    response, doc = request(vmm.client(), "PATCH", "/mmds", {"a": 1})
    assert response.status == 400
    assert doc == {"fault_message": "MMDS error: The MMDS data store is not initialized."}


def test_mmds_put_over_limit_is_413_and_store_unchanged(vmm):
    conn = vmm.client()
    request(conn, "PUT", "/mmds", {"a": "b"})
    response, doc = request(conn, "PUT", "/mmds", {"a": "x" * LIMIT})
    assert response.status == 413
    assert doc == {"fault_message": "MMDS limit exceeded error: The MMDS patch request doesn't fit."}
    response, doc = request(conn, "PATCH", "/mmds", {"b": "x" * LIMIT})
    assert response.status == 413
    assert request(conn, "GET", "/mmds")[1] == {"a": "b"}


def test_mmds_config_with_unknown_interface_is_refused(vmm):
    response, doc = request(vmm.client(), "PUT", "/mmds/config", {"network_interfaces": ["eth0"]})
    assert response.status == 400
    assert doc["fault_message"].startswith("MMMDS config error: The list of network interface IDs provided")
    assert request(vmm.client(), "GET", "/vm/config")[1]["mmds-config"] is None


@pytest.mark.parametrize(
    "body, message",
    [
        ({"network_interfaces": []}, "is empty"),
        ({"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}, "not link local"),
        ({"network_interfaces": ["eth0"], "ipv4_address": "169.254.0.1"}, "not link local"),
        ({"network_interfaces": ["eth0"], "version": "V3"}, "deserializing"),
    ],
)
def test_mmds_config_bad_body_is_refused(vmm, body, message):
    response, doc = request(vmm.client(), "PUT", "/mmds/config", body)
    assert response.status == 400 and message in doc["fault_message"]


def test_mmds_config_v1_answer_carries_deprecation_header(vmm):
    conn = vmm.client()
    conn.request("PUT", "/mmds/config", body=json.dumps({"network_interfaces": []}))
    response = conn.getresponse()
    response.read()
    assert response.status == 400  # validation fails, the deprecation is still announced
    assert response.getheader("Deprecation") == "true"


def test_mmds_config_after_boot_is_refused_but_data_still_works(vmm, tmp_path):
    conn = vmm.client()
    kernel = tmp_path / "k"
    kernel.write_bytes(b"k")
    request(conn, "PUT", "/boot-source", {"kernel_image_path": str(kernel)})
    assert request(conn, "PUT", "/actions", {"action_type": "InstanceStart"})[0].status == 204
    response, doc = request(conn, "PUT", "/mmds/config", {"network_interfaces": ["eth0"]})
    assert doc["fault_message"] == "The requested operation is not supported after starting the microVM."
    response, doc = request(conn, "GET", "/mmds")
    assert response.status == 400 and "not initialized" in doc["fault_message"]
    assert request(conn, "PUT", "/mmds", {"k": "v"})[0].status == 204
    assert request(conn, "GET", "/mmds")[1] == {"k": "v"}


def test_mmds_builder_receives_the_controllers_mmds(vmm, tmp_path):
    conn = vmm.client()
    kernel = tmp_path / "k"
    kernel.write_bytes(b"k")
    request(conn, "PUT", "/boot-source", {"kernel_image_path": str(kernel)})
    request(conn, "PUT", "/mmds", {"k": "v"})
    request(conn, "PUT", "/actions", {"action_type": "InstanceStart"})
    (_config, options), = vmm.builder.builds
    assert options.mmds is vmm.controller.mmds and options.mmds.store.value() == {"k": "v"}


# --- the real process ------------------------------------------------------------------------------
def _wait_socket(path, proc, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sparkler exited with {proc.returncode}")
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("API socket never appeared")


@pytest.fixture
def process(tmp_path):
    procs = []

    def start(*args):
        sock = str(tmp_path / f"fc{len(procs)}.sock")
        proc = subprocess.Popen(
            [sys.executable, "-m", "sparkler", "--api-sock", sock, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
        )
        procs.append(proc)
        _wait_socket(sock, proc)
        return UnixHTTPConnection(sock)

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(10)


def test_mmds_size_limit_flag_in_real_process(process):
    conn = process("--mmds-size-limit", "30")
    assert request(conn, "PUT", "/mmds", {"a": "x" * 20})[0].status == 204  # 28 bytes
    response, doc = request(conn, "PUT", "/mmds", {"a": "x" * 30})
    assert response.status == 413 and "doesn't fit" in doc["fault_message"]


def test_mmds_metadata_flag_prepopulates_store(process, tmp_path):
    metadata = tmp_path / "meta.json"
    metadata.write_text(json.dumps({"latest": {"user-data": "hello"}}))
    conn = process("--metadata", str(metadata))
    assert request(conn, "GET", "/mmds")[1] == {"latest": {"user-data": "hello"}}


def test_mmds_metadata_larger_than_limit_fails_start(tmp_path):
    metadata = tmp_path / "meta.json"
    metadata.write_text(json.dumps({"k": "v" * 100}))
    proc = subprocess.run(
        [sys.executable, "-m", "sparkler", "--api-sock", str(tmp_path / "x.sock"), "--metadata", str(metadata),
         "--mmds-size-limit", "10"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1 and "doesn't fit" in proc.stdout + proc.stderr
