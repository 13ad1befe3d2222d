"""vmm.controller.Controller against the fake builder/machine."""

import copy
import os

import msgspec
import pytest

from sparkler.config.logger import LoggerConfig
from sparkler.errors import LoaderError
from sparkler.testing.fake_machine import FakeBuilder
from sparkler.vmm import actions as A
from sparkler.vmm.controller import Controller, ControllerHooks

from .controller_util import boot, call

PRE = A.OperationNotSupportedPreBoot.MESSAGE
POST = A.OperationNotSupportedPostBoot.MESSAGE


def snapshot(controller):
    return msgspec.json.encode(controller.config)


# --- reads --------------------------------------------------------------------------------------
def test_controller_instance_info_before_boot(controller):
    info = call(controller, "GET", "/")
    assert info == A.InstanceInfoData("vm1", "Not started", A.FIRECRACKER_VERSION, "Firecracker")


def test_controller_version(controller):
    assert call(controller, "GET", "/version") == A.VersionData(A.FIRECRACKER_VERSION)


def test_controller_machine_config_defaults(controller):
    config = call(controller, "GET", "/machine-config").config
    assert (config.vcpu_count, config.mem_size_mib, config.smt, config.huge_pages) == (1, 128, False, "None")


# --- boot source --------------------------------------------------------------------------------
def test_controller_put_boot_source_stores_it(controller, kernel):
    call(controller, "PUT", "/boot-source", {"kernel_image_path": kernel, "boot_args": "console=ttyS0"})
    assert controller.config.boot_source.boot_args == "console=ttyS0"


def test_controller_put_boot_source_missing_kernel_file_fails_unchanged(controller, tmp_path):
    before = snapshot(controller)
    result = call(controller, "PUT", "/boot-source", {"kernel_image_path": str(tmp_path / "nope")})
    assert isinstance(result, A.BootSourceError)
    assert str(result).startswith("Boot source error: The kernel file cannot be opened")
    assert snapshot(controller) == before


def test_controller_put_boot_source_missing_initrd_fails(controller, kernel, tmp_path):
    result = call(
        controller, "PUT", "/boot-source", {"kernel_image_path": kernel, "initrd_path": str(tmp_path / "x")}
    )
    assert "The initrd file cannot be opened" in str(result)
    assert controller.config.boot_source is None


def test_controller_put_boot_source_non_ascii_args_fails(controller, kernel):
    result = call(controller, "PUT", "/boot-source", {"kernel_image_path": kernel, "boot_args": "é"})
    assert str(result).startswith("Boot source error: Invalid boot arguments")


# --- machine config -----------------------------------------------------------------------------
def test_controller_put_machine_config_then_get(controller):
    assert (
        call(controller, "PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256, "smt": True})
        == A.Empty()
    )
    config = call(controller, "GET", "/machine-config").config
    assert (config.vcpu_count, config.mem_size_mib, config.smt) == (2, 256, True)


@pytest.mark.parametrize(
    "doc",
    [
        {"vcpu_count": 0, "mem_size_mib": 128},
        {"vcpu_count": 33, "mem_size_mib": 128},
        {"vcpu_count": 3, "mem_size_mib": 128, "smt": True},
        {"vcpu_count": 1, "mem_size_mib": 0},
        {"vcpu_count": 1, "mem_size_mib": 129, "huge_pages": "2M"},
    ],
)
def test_controller_put_machine_config_invalid_leaves_config_unchanged(controller, doc):
    call(controller, "PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256})
    before = snapshot(controller)
    result = call(controller, "PUT", "/machine-config", doc)
    assert isinstance(result, A.MachineConfigError)
    assert str(result).startswith("Machine config error: ")
    assert snapshot(controller) == before


def test_controller_put_machine_config_resets_omitted_fields(controller):
    call(
        controller,
        "PUT",
        "/machine-config",
        {"vcpu_count": 2, "mem_size_mib": 256, "smt": True, "track_dirty_pages": True},
    )
    call(controller, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
    config = controller.config.machine
    assert (config.smt, config.track_dirty_pages) == (False, False)


def test_controller_put_machine_config_omitted_template_keeps_it(controller):
    call(controller, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2"})
    call(controller, "PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 128})
    assert controller.config.machine.cpu_template == "T2"


def test_controller_cpu_template_none_clears(controller):
    call(controller, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2"})
    call(controller, "PATCH", "/machine-config", {"cpu_template": "None"})
    assert controller.config.machine.cpu_template is None


def test_controller_patch_machine_config_keeps_other_fields(controller):
    call(controller, "PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256})
    call(controller, "PATCH", "/machine-config", {"mem_size_mib": 512})
    assert (controller.config.machine.vcpu_count, controller.config.machine.mem_size_mib) == (2, 512)


def test_controller_patch_machine_config_invalid_unchanged(controller):
    before = snapshot(controller)
    result = call(controller, "PATCH", "/machine-config", {"vcpu_count": 0})
    assert isinstance(result, A.MachineConfigError)
    assert snapshot(controller) == before


# --- cpu config, logger, metrics, serial --------------------------------------------------------
def test_controller_put_cpu_config_replaces_static_template(controller):
    call(controller, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "C3"})
    assert call(controller, "PUT", "/cpu-config", {"kvm_capabilities": ["!171"]}) == A.Empty()
    assert controller.config.cpu_config == {"kvm_capabilities": ["!171"]}
    assert controller.config.machine.cpu_template is None


def test_controller_static_template_replaces_cpu_config(controller):
    call(controller, "PUT", "/cpu-config", {"kvm_capabilities": ["171"]})
    call(controller, "PATCH", "/machine-config", {"cpu_template": "T2"})
    assert controller.config.cpu_config is None


def test_controller_put_logger_merges_and_resets_level(controller):
    seen = []
    controller.hooks = ControllerHooks(configure_logger=seen.append)
    call(controller, "PUT", "/logger", {"log_path": "/tmp/x", "level": "Debug", "show_level": True})
    call(controller, "PUT", "/logger", {"show_log_origin": True})
    assert seen[-1] == LoggerConfig(log_path="/tmp/x", level="Info", show_level=True, show_log_origin=True)
    assert controller.config.logger == seen[-1]


def test_controller_put_logger_hook_failure_unchanged(controller):
    def fail(_):
        raise OSError(13, "Permission denied")

    controller.hooks = ControllerHooks(configure_logger=fail)
    before = snapshot(controller)
    result = call(controller, "PUT", "/logger", {"log_path": "/root/x"})
    assert str(result).startswith("Logger error: Permission denied")
    assert snapshot(controller) == before


def test_controller_put_metrics_only_once(controller):
    configured = []
    controller.hooks = ControllerHooks(configure_metrics=configured.append)
    assert call(controller, "PUT", "/metrics", {"metrics_path": "/tmp/m"}) == A.Empty()
    result = call(controller, "PUT", "/metrics", {"metrics_path": "/tmp/m2"})
    assert str(result) == "Metrics error: Reinitialization of metrics not allowed."
    assert len(configured) == 1
    assert controller.config.metrics.metrics_path == "/tmp/m"


def test_controller_put_metrics_refused_after_metrics_path_flag():
    controller = Controller(FakeBuilder(), metrics_initialized=True)
    assert "Reinitialization" in str(call(controller, "PUT", "/metrics", {"metrics_path": "/tmp/m"}))


def test_controller_put_serial_rate_limiter_not_supported(controller):
    result = call(controller, "PUT", "/serial", {"rate_limiter": {"size": 1, "refill_time": 1}})
    assert str(result).startswith("Serial config error:")
    assert controller.serial is None


def test_controller_serial_out_path_reaches_builder(tmp_path, kernel):
    from sparkler.vmm.runtime_options import BuildOptions

    builder = FakeBuilder()
    controller = Controller(builder, BuildOptions())
    out = tmp_path / "serial.out"
    call(controller, "PUT", "/serial", {"serial_out_path": str(out)})
    boot(controller, kernel)
    fd = builder.builds[0][1].serial_out
    os.write(fd, b"hello")
    assert out.read_bytes() == b"hello"


# --- boot and phases ----------------------------------------------------------------------------
def test_controller_start_without_kernel(controller):
    result = call(controller, "PUT", "/actions", {"action_type": "InstanceStart"})
    assert str(result) == "Start microvm error: Cannot start microvm without kernel configuration."
    assert not controller.booted


def test_controller_start_builds_and_starts(controller, kernel):
    call(controller, "PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256})
    boot(controller, kernel)
    builder = controller.builder_fn
    config, options = builder.builds[0]
    assert config.machine.vcpu_count == 2 and options == "opts"
    assert builder.machine.calls == ["start"]
    assert call(controller, "GET", "/").state == "Running"


def test_controller_start_build_failure_stays_preboot(kernel):
    controller = Controller(FakeBuilder(fail_with=LoaderError("Invalid ELF magic number")))
    call(controller, "PUT", "/boot-source", {"kernel_image_path": kernel})
    result = call(controller, "PUT", "/actions", {"action_type": "InstanceStart"})
    assert str(result) == "Start microvm error: Invalid ELF magic number"
    assert not controller.booted
    assert call(controller, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64}) == A.Empty()


def test_controller_on_started_hook(kernel):
    started = []
    controller = Controller(FakeBuilder(), hooks=ControllerHooks(on_started=started.append))
    boot(controller, kernel)
    assert started == [controller.machine]


@pytest.mark.parametrize(
    "method, path, doc",
    [
        ("PUT", "/actions", {"action_type": "SendCtrlAltDel"}),
        ("PUT", "/actions", {"action_type": "FlushMetrics"}),
        ("PATCH", "/vm", {"state": "Paused"}),
        ("PATCH", "/vm", {"state": "Resumed"}),
    ],
)
def test_controller_post_boot_only_actions_refused_before_boot(controller, method, path, doc):
    before = snapshot(controller)
    assert str(call(controller, method, path, doc)) == PRE
    assert snapshot(controller) == before


@pytest.mark.parametrize(
    "method, path, doc",
    [
        ("PUT", "/actions", {"action_type": "InstanceStart"}),
        ("PUT", "/boot-source", {"kernel_image_path": "/x"}),
        ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128}),
        ("PATCH", "/machine-config", {"vcpu_count": 1}),
        ("PUT", "/cpu-config", {}),
        ("PUT", "/logger", {}),
        ("PUT", "/metrics", {"metrics_path": "/x"}),
        ("PUT", "/serial", {}),
    ],
)
def test_controller_preboot_only_actions_refused_after_boot(controller, kernel, method, path, doc):
    boot(controller, kernel)
    before = snapshot(controller)
    assert str(call(controller, method, path, doc)) == POST
    assert snapshot(controller) == before


def test_controller_reads_work_after_boot(controller, kernel):
    boot(controller, kernel)
    assert isinstance(call(controller, "GET", "/machine-config"), A.MachineConfigData)
    assert call(controller, "GET", "/vm/config").config.boot_source.kernel_image_path == kernel


def test_controller_pause_resume_idempotent(controller, kernel):
    boot(controller, kernel)
    for state, expected in [
        ("Paused", "Paused"),
        ("Paused", "Paused"),
        ("Resumed", "Running"),
        ("Resumed", "Running"),
    ]:
        assert call(controller, "PATCH", "/vm", {"state": state}) == A.Empty()
        assert call(controller, "GET", "/").state == expected
    assert controller.machine.calls == ["start", "pause", "pause", "resume", "resume"]


def test_controller_pause_logs_latency(kernel):
    lines = []
    controller = Controller(FakeBuilder(), hooks=ControllerHooks(log=lines.append))
    boot(controller, kernel)
    call(controller, "PATCH", "/vm", {"state": "Paused"})
    assert lines and lines[0].startswith("'pause vm' API request took ")


def test_controller_ctrl_alt_del_reaches_machine(controller, kernel):
    boot(controller, kernel)
    assert call(controller, "PUT", "/actions", {"action_type": "SendCtrlAltDel"}) == A.Empty()
    assert controller.machine.calls[-1] == "send_ctrl_alt_del"


def test_controller_machine_failure_is_internal_error(controller, kernel):
    boot(controller, kernel)
    controller.machine.fail_on["pause"] = RuntimeError("vCPU 0 did not pause")
    result = call(controller, "PATCH", "/vm", {"state": "Paused"})
    assert str(result) == "Internal VMM error: vCPU 0 did not pause"


def test_controller_flush_metrics_calls_hook(kernel):
    flushes = []
    controller = Controller(FakeBuilder(), hooks=ControllerHooks(flush_metrics=lambda: flushes.append(1)))
    boot(controller, kernel)
    assert call(controller, "PUT", "/actions", {"action_type": "FlushMetrics"}) == A.Empty()
    assert flushes == [1]


def test_controller_flush_metrics_failure(kernel):
    def fail():
        raise OSError(32, "Broken pipe")

    controller = Controller(FakeBuilder(), hooks=ControllerHooks(flush_metrics=fail))
    boot(controller, kernel)
    assert str(call(controller, "PUT", "/actions", {"action_type": "FlushMetrics"})).startswith(
        "Metrics error:"
    )


def test_controller_handle_never_raises_on_bugs(controller):
    assert isinstance(controller.handle(object()), A.InternalVmmError)


def test_controller_config_unchanged_after_every_error_sequence(controller, kernel):
    call(controller, "PUT", "/boot-source", {"kernel_image_path": kernel})
    call(controller, "PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256})
    before = copy.deepcopy(snapshot(controller))
    bad = [
        ("PUT", "/machine-config", {"vcpu_count": 0, "mem_size_mib": 1}),
        ("PATCH", "/machine-config", {"mem_size_mib": 0}),
        ("PUT", "/boot-source", {"kernel_image_path": "/does/not/exist"}),
        ("PUT", "/actions", {"action_type": "FlushMetrics"}),
        ("PATCH", "/vm", {"state": "Paused"}),
    ]
    for method, path, doc in bad:
        assert isinstance(call(controller, method, path, doc), A.VmmActionError)
        assert snapshot(controller) == before
