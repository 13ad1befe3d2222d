"""``sparkler net``: real taps in fresh network namespaces (unique names, always removed), NAT rules
read back with nft, ownership checked by opening the tap as that user, and the refusals (bad names,
no privileges) with their messages."""

import os
import shutil
import subprocess
import sys

import pytest

from sparkler.hostnet import tap

PY = sys.executable
IS_ROOT = os.geteuid() == 0
NOBODY = 65534
needs_root = pytest.mark.skipif(not IS_ROOT, reason="creating taps and namespaces needs root")


def net(*args, user=None):
    prefix = []
    if user is not None:
        prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--inh-caps=-all"]
    return subprocess.run([*prefix, PY, "-m", "sparkler", "net", *args], capture_output=True, text=True, timeout=60)


def in_ns(ns, *argv):
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30)


def attach_as(ns, uid, name):
    code = (
        "import errno, fcntl, os, struct\n"
        "fd = os.open('/dev/net/tun', os.O_RDWR)\n"
        "try:\n"
        f"    fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', {name.encode()!r}, 0x0002 | 0x1000 | 0x4000))\n"
        "    print('ok')\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno])\n"
    )
    caps = ["--inh-caps=+dac_override", "--ambient-caps=+dac_override"]
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *caps, PY, "-c", code]
    result = in_ns(ns, *argv)
    return result.stdout.strip() or result.stderr


@pytest.fixture
def netns_name():
    name = f"spk-mmds-{os.getpid()}"
    yield name
    if os.path.exists(f"/run/netns/{name}"):
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)


@pytest.mark.parametrize(
    "name", ["", "a" * 16, "a/b", "a b", ".", "..", "x:y", "tä"]
)
def test_net_create_tap_invalid_name_is_usage_error(name):
    result = net("create-tap", name)
    assert result.returncode == 2
    assert "Invalid tap name" in result.stderr


@pytest.mark.parametrize("address", ["172.16.0.1", "172.16.0.300/30", "172.16.0.0/30", "fe80::1/64", "x"])
def test_net_create_tap_invalid_address_is_usage_error(address):
    result = net("create-tap", "tapx", "--address", address)
    assert result.returncode == 2 and "Invalid address" in result.stderr


def test_net_nat_without_address_is_refused():
    result = net("create-tap", "tapx", "--nat")
    assert result.returncode == 1 and "--nat needs --address" in result.stderr


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
def test_net_create_tap_without_privileges_says_so():
    result = net("create-tap", f"spkn{os.getpid() % 100000}", user=NOBODY)
    assert result.returncode == 1
    assert "Permission denied" in result.stderr and "CAP_NET_ADMIN" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
def test_net_delete_tap_without_privileges_says_so():
    result = net("delete-tap", "tapx", user=NOBODY)
    assert result.returncode == 1 and "CAP_NET_ADMIN" in result.stderr


@needs_root
def test_net_create_tap_in_new_netns_with_address_nat_and_owner(netns_name):
    result = net(
        "create-tap", "tap0", "--netns", netns_name, "--address", "172.16.0.1/30", "--nat", "--owner", str(NOBODY)
    )
    assert result.returncode == 0, result.stderr
    details = in_ns(netns_name, "ip", "-d", "addr", "show", "tap0").stdout
    assert "tun type tap" in details and "persist on" in details and "user nobody" in details
    assert "inet 172.16.0.1/30" in details and ",UP" in details
    ruleset = in_ns(netns_name, "nft", "list", "ruleset").stdout
    assert "ip saddr 172.16.0.0/30" in ruleset and "masquerade" in ruleset
    assert in_ns(netns_name, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    # The owner may attach to it the way the VMM does (TUNSETIFF, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
    # another unprivileged user may not. (/dev/net/tun may be 0600 here: both get CAP_DAC_OVERRIDE
    # to open the node, never CAP_NET_ADMIN.)
    assert attach_as(netns_name, NOBODY, "tap0") == "ok"
    assert attach_as(netns_name, 1234, "tap0").startswith("EPERM")

    result = net("delete-tap", "tap0", "--netns", netns_name, "--delete-netns")
    assert result.returncode == 0, result.stderr
    assert not os.path.exists(f"/run/netns/{netns_name}")


@needs_root
def test_net_create_tap_existing_name_fails_and_keeps_the_existing_one(netns_name):
    assert net("create-tap", "tap1", "--netns", netns_name).returncode == 0
    result = net("create-tap", "tap1", "--netns", netns_name, "--address", "172.16.5.1/24")
    assert result.returncode == 1 and "already exists" in result.stderr
    assert "tap1" in in_ns(netns_name, "ip", "link", "show", "tap1").stdout
    assert "172.16.5.1" not in in_ns(netns_name, "ip", "addr", "show", "tap1").stdout


@needs_root
def test_net_delete_tap_missing_is_clear_error(netns_name):
    subprocess.run(["ip", "netns", "add", netns_name], check=True, timeout=30)
    result = net("delete-tap", "nosuch", "--netns", netns_name)
    assert result.returncode == 1 and "There is no interface nosuch" in result.stderr


@needs_root
def test_net_delete_tap_refuses_other_kinds(netns_name):
    subprocess.run(["ip", "netns", "add", netns_name], check=True, timeout=30)
    result = net("delete-tap", "lo", "--netns", netns_name)
    assert result.returncode == 1 and "is not a tap" in result.stderr
    assert "lo" in in_ns(netns_name, "ip", "link", "show", "lo").stdout


@needs_root
def test_net_failed_nat_step_undoes_tap_and_new_netns(netns_name, monkeypatch):
    def broken_nat(*args, **kwargs):
        raise tap.NetSetupError("nft exploded")

    monkeypatch.setattr(tap, "_add_nat", broken_nat)
    with pytest.raises(tap.NetSetupError, match="nft exploded"):
        tap.create_tap(tap.TapRequest("tap2", netns_name, "172.16.9.1/30", nat=True), log=lambda _m: None)
    assert not os.path.exists(f"/run/netns/{netns_name}")
