"""api.router: PUT/PATCH /network-interfaces/{iface_id}."""

import json

from sparkler.api.faults import ApiFault
from sparkler.api.router import route
from sparkler.vmm import actions as A


def call(method, path, doc):
    return route(method, path, json.dumps(doc).encode())


def test_put_network_interface_decodes_the_body():
    body = {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:00:00:00:01", "mtu": 1500,
            "rx_rate_limiter": {"ops": {"size": 10, "refill_time": 100}}}
    result = call("PUT", "/network-interfaces/eth0", body)
    assert isinstance(result, A.PutNetworkInterface)
    assert result.config.rx_rate_limiter.ops.size == 10 and result.config.mtu == 1500


def test_net_id_mismatch_names_both_ids():
    result = call("PUT", "/network-interfaces/eth0", {"iface_id": "eth1", "host_dev_name": "t"})
    assert isinstance(result, ApiFault)
    assert result.message == "The id from the path [eth0] does not match the id from the body [eth1]!"


def test_net_bad_ids_and_bodies():
    assert call("PUT", "/network-interfaces/a-b", {"iface_id": "a-b", "host_dev_name": "t"}).message.startswith(
        "API Resource IDs can only contain"
    )
    missing = call("PUT", "/network-interfaces/e", {"iface_id": "e"})
    assert isinstance(missing, ApiFault) and "host_dev_name" in missing.message


def test_patch_network_interface_decodes_the_body():
    result = call("PATCH", "/network-interfaces/eth0", {"iface_id": "eth0", "tx_rate_limiter": {}})
    assert isinstance(result, A.PatchNetworkInterface) and result.update.tx_rate_limiter is not None
    bad = call("PATCH", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "x"})
    assert isinstance(bad, ApiFault)
