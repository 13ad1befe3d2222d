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


@needs_netns
def test_controller_patch_network_interface_after_boot(kvm, probe_kernel):
    import os

    from sparkler.config import VmmConfig
    from sparkler.config.boot_source import BootSourceConfig
    from sparkler.config.machine import MachineConfig
    from sparkler.config.net import NetworkInterfaceUpdate
    from sparkler.config.rate_limiter import RateLimiterConfig
    from sparkler.config.serial import TokenBucketConfig
    from sparkler.vmm.builder import BuildOptions, build_microvm

    machines = []

    def builder(config, options):
        machine = build_microvm(config, options)
        machine.start = lambda: None  # keep the vCPUs parked: only the device matters here
        machines.append(machine)
        return machine

    with netns_with_tap() as (ns, tap):
        config = VmmConfig(
            boot_source=BootSourceConfig(kernel_image_path=str(probe_kernel)),
            machine_config=MachineConfig(vcpu_count=1, mem_size_mib=64),
            network_interfaces=[NetworkInterfaceConfig("eth0", tap)],
        )
        ctl = Controller(builder, BuildOptions(serial_out=os.open(os.devnull, os.O_WRONLY)), config=config)
        assert isinstance(in_netns(ns, lambda: ctl.handle(A.StartMicroVm())), A.Empty)
        try:
            net = machines[0].devices["net_eth0"].device
            assert net.rx_rate_limiter is None and net.tx_rate_limiter is None
            ops = RateLimiterConfig(ops=TokenBucketConfig(size=100, refill_time=1000))
            assert isinstance(ctl.handle(A.PatchNetworkInterface(NetworkInterfaceUpdate("eth0", rx_rate_limiter=ops))), A.Empty)
            assert net.rx_rate_limiter.ops.size == 100 and net.tx_rate_limiter is None
            bw = RateLimiterConfig(bandwidth=TokenBucketConfig(size=4096, refill_time=100))
            assert isinstance(ctl.handle(A.PatchNetworkInterface(NetworkInterfaceUpdate("eth0", rx_rate_limiter=bw))), A.Empty)
            assert net.rx_rate_limiter.ops.size == 100 and net.rx_rate_limiter.bandwidth.size == 4096
            assert ctl.config.network_interfaces[0].rx_rate_limiter == bw
            err = ctl.handle(A.PatchNetworkInterface(NetworkInterfaceUpdate("nope", tx_rate_limiter=bw)))
            assert isinstance(err, A.NetworkInterfaceError)
            put = ctl.handle(A.PutNetworkInterface(NetworkInterfaceConfig("eth1", tap)))
            assert isinstance(put, A.OperationNotSupportedPostBoot)
        finally:
            machines[0].stop()
