"""sparkler.sdk against a live API served over the fake machine."""

import sys

import pytest

import sparkler.sdk
from sparkler.config.boot_source import BootSourceConfig
from sparkler.config.cpu_config import CpuConfig
from sparkler.config.logger import LoggerConfig
from sparkler.config.machine import MachineConfig, MachineConfigUpdate
from sparkler.config.metrics import MetricsConfig
from sparkler.config.serial import SerialConfig
from sparkler.sdk import ApiError, Client, MicroVM
from sparkler.testing.fake_machine import FakeVmm


@pytest.fixture
def kernel(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(b"\x7fELF")
    return str(path)


@pytest.fixture
def fake(tmp_path):
    with FakeVmm(str(tmp_path / "api.sock"), instance_id="sdk_vm") as vmm:
        yield vmm


@pytest.fixture
def client(fake):
    with Client(fake.socket_path) as c:
        yield c


def test_sdk_public_surface():
    assert sorted(sparkler.sdk.__all__) == ["ApiError", "Client", "MicroVM"]


def test_sdk_describe_and_version(client):
    info = client.describe_instance()
    assert (info.id, info.state, info.app_name) == ("sdk_vm", "Not started", "Firecracker")
    assert client.version() == "1.17.0-dev"


def test_sdk_full_lifecycle(client, fake, kernel, tmp_path):
    client.put_logger(LoggerConfig(log_path=str(tmp_path / "log"), level="Debug"))
    client.put_metrics(MetricsConfig(metrics_path=str(tmp_path / "metrics")))
    client.put_serial(SerialConfig())
    client.put_cpu_config(CpuConfig(kvm_capabilities=["!171"]))
    client.put_boot_source(BootSourceConfig(kernel_image_path=kernel, boot_args="console=ttyS0"))
    client.put_machine_config(MachineConfig(vcpu_count=2, mem_size_mib=256))
    client.patch_machine_config(MachineConfigUpdate(mem_size_mib=512))
    assert client.get_machine_config().mem_size_mib == 512
    config = client.get_vm_config()
    assert config["boot-source"]["boot_args"] == "console=ttyS0"
    assert config["machine-config"] == {
        "vcpu_count": 2,
        "mem_size_mib": 512,
        "smt": False,
        "track_dirty_pages": False,
        "huge_pages": "None",
    }
    assert client.get_vm_config_typed().machine.vcpu_count == 2
    client.start()
    assert client.describe_instance().state == "Running"
    client.pause()
    assert client.describe_instance().state == "Paused"
    client.resume()
    client.send_ctrl_alt_del()
    client.flush_metrics()
    assert fake.builder.machine.calls == ["start", "pause", "resume", "send_ctrl_alt_del"]


def test_sdk_error_carries_fault_message(client):
    with pytest.raises(ApiError) as info:
        client.pause()
    assert info.value.status == 400
    assert info.value.fault_message == "The requested operation is not supported before starting the microVM."


def test_sdk_deprecation_is_reported(client):
    client.put_machine_config(MachineConfig(vcpu_count=1, mem_size_mib=128, cpu_template="T2"))
    assert client.last_deprecated
    client.put_machine_config(MachineConfig(vcpu_count=1, mem_size_mib=128))
    assert not client.last_deprecated
    assert client.get_machine_config().cpu_template == "T2"  # omitted template is kept


def test_sdk_http_level_error(client):
    with pytest.raises(ApiError) as info:
        client.request("POST", "/actions", {"action_type": "InstanceStart"})
    assert info.value.fault_message.startswith("Invalid HTTP Method")
    assert client.version()  # reconnects after the server closed the connection


def test_sdk_microvm_attach(fake, kernel):
    with MicroVM.attach(fake.socket_path) as vm:
        vm.configure(kernel=kernel, vcpus=2, mem_mib=256)
        vm.start()
        assert vm.state == "Running"
        vm.pause()
        assert vm.state == "Paused"
    assert fake.builder.builds[0][0].machine.vcpu_count == 2


def test_sdk_microvm_launch_runs_and_stops_process(tmp_path, kernel):
    sock = tmp_path / "launched.sock"
    command = [sys.executable, "-m", "sparkler.testing.fake_machine"]
    with MicroVM.launch(str(sock), command, instance_id="child") as vm:
        assert vm.api.describe_instance().id == "child"
        vm.configure(kernel=kernel)
        vm.start()
        assert vm.state == "Running"
        process = vm.process
    assert process.returncode == 0
    assert not sock.exists()


def test_sdk_microvm_launch_failure_is_reported(tmp_path):
    with pytest.raises(RuntimeError, match="exited with code"):
        with MicroVM.launch(str(tmp_path / "x.sock"), [sys.executable, "-c", "raise SystemExit(3)"]):
            pass
