"""MmdsNetworkStack against a real Linux TCP/IP stack and curl: a tap in a fresh network namespace
whose kernel plays the guest (ARP, TCP handshake, HTTP, FIN), as a guest kernel would."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

SERVER = pathlib.Path(__file__).with_name("tap_server.py")
STORE = {"latest": {"meta-data": {"ami-id": "ami-12345", "big": "b" * 20000}, "user-data": "hello"}}

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("curl") is None, reason="needs root (netns, tap) and curl"
)


@pytest.fixture
def served(request):
    """(run-in-namespace function, server process) for the MMDS version given as the parameter."""
    ns = f"spk-mmds-peer-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    server = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, str(SERVER), "mmds0", request.param, "20"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        server.stdin.write(json.dumps(STORE))
        server.stdin.close()
        assert server.stdout.readline().strip() == "ready", server.stderr.read()

        def run(*argv):
            return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30)

        assert run("ip", "addr", "add", "169.254.0.2/16", "dev", "mmds0").returncode == 0
        assert run("ip", "link", "set", "mmds0", "up").returncode == 0
        yield run, server
    finally:
        server.kill()
        server.wait(10)
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)


def curl(run, *args):
    result = run("curl", "-sS", "--max-time", "10", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("served", ["V1"], indirect=True)
def test_linux_peer_curl_reads_imds_text_and_json(served):
    run, _ = served
    assert curl(run, "http://169.254.169.254/latest/meta-data/") == "ami-id\nbig"
    assert curl(run, "http://169.254.169.254/latest/user-data") == "hello"
    doc = json.loads(curl(run, "-H", "Accept: application/json", "http://169.254.169.254/latest/meta-data"))
    assert doc["ami-id"] == "ami-12345" and doc["big"] == "b" * 20000  # many segments, in order


@pytest.mark.parametrize("served", ["V2"], indirect=True)
def test_linux_peer_v2_token_flow_with_curl(served):
    run, _ = served
    denied = run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://169.254.169.254/latest/user-data")
    assert denied.stdout == "401"
    token = curl(run, "-X", "PUT", "-H", "X-aws-ec2-metadata-token-ttl-seconds: 60", "http://169.254.169.254/latest/api/token")
    assert 0 < len(token) <= 70
    assert curl(run, "-H", f"X-aws-ec2-metadata-token: {token}", "http://169.254.169.254/latest/user-data") == "hello"
    # Several requests on one kept-alive connection.
    out = curl(run, "-H", f"X-metadata-token: {token}", "http://169.254.169.254/latest/user-data",
               "http://169.254.169.254/latest/meta-data/ami-id")
    assert out == "helloami-12345"


@pytest.mark.parametrize("served", ["V1"], indirect=True)
def test_linux_peer_other_port_is_refused_at_once(served):
    run, _ = served
    code = "import socket; socket.create_connection(('169.254.169.254', 8080), timeout=5)"
    result = run(sys.executable, "-c", code)
    assert "ConnectionRefusedError" in result.stderr  # answered with RST, not a time-out
