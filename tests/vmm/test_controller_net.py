"""The controller's PUT /network-interfaces (tap opened at PUT time) and GET /vm/config."""

from __future__ import annotations

from sparkler.api.bodies import vm_config_document
from sparkler.config.net import NetworkInterfaceConfig
from sparkler.vmm import actions as A
from sparkler.vmm.controller import Controller
from tests.devices.virtio.net.netns import in_netns, needs_netns, netns_with_tap


@needs_netns
def test_controller_put_network_interface():
    ctl = Controller(lambda config, options: None)
    with netns_with_tap() as (ns, tap):
        put = A.PutNetworkInterface(NetworkInterfaceConfig("eth0", tap, guest_mac="06:00:00:00:00:01"))
        assert isinstance(in_netns(ns, lambda: ctl.handle(put)), A.Empty)
        err = in_netns(ns, lambda: ctl.handle(A.PutNetworkInterface(NetworkInterfaceConfig("eth1", "lo"))))
        assert isinstance(err, A.NetworkInterfaceError)
        assert "Invalid TUN/TAP Backend provided by lo" in str(err)
        dup = NetworkInterfaceConfig("eth2", tap + "x", guest_mac="06:00:00:00:00:01")
        err = in_netns(ns, lambda: ctl.handle(A.PutNetworkInterface(dup)))
        assert str(err) == "The MAC address is already in use: 06:00:00:00:00:01"
    doc = vm_config_document(ctl.handle(A.GetVmConfig()).config)
    assert doc["network-interfaces"] == [
        {"iface_id": "eth0", "host_dev_name": tap, "guest_mac": "06:00:00:00:00:01", "mtu": None,
         "rx_rate_limiter": None, "tx_rate_limiter": None}
    ]
    patch = A.PatchNetworkInterface(msgspec_update("eth0"))
    assert isinstance(ctl.handle(patch), A.OperationNotSupportedPreBoot)


def msgspec_update(iface_id):
    from sparkler.config.net import NetworkInterfaceUpdate

    return NetworkInterfaceUpdate(iface_id)
