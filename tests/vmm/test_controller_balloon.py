"""PUT /entropy and the /balloon endpoints through the controller (fake machine, real balloon device)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from sparkler.api import bodies
from sparkler.devices.virtio.balloon.device import BalloonDevice
from sparkler.vmm import actions as A

from .controller_util import boot as boot_fake
from .controller_util import call

PRE = A.OperationNotSupportedPreBoot.MESSAGE


def boot(controller, kernel):
    boot_fake(controller, kernel)
    balloon = controller.config.balloon
    if balloon is not None:  # what the builder would attach
        device = BalloonDevice(balloon.amount_mib, stats_polling_interval_s=balloon.stats_polling_interval_s)
        controller.machine.devices = {"balloon": SimpleNamespace(device=device)}
        return device
    return None


def test_put_entropy_shows_in_vm_config(controller):
    assert call(controller, "PUT", "/entropy", {}) == A.Empty()
    doc = bodies.vm_config_document(controller.config)
    assert doc["entropy"] == {"rate_limiter": None}
    limited = {"rate_limiter": {"ops": {"size": 10, "refill_time": 100}}}
    assert call(controller, "PUT", "/entropy", limited) == A.Empty()
    assert controller.config.entropy.rate_limiter.ops.size == 10


def test_put_entropy_after_boot_is_refused(controller, kernel):
    boot(controller, kernel)
    assert str(call(controller, "PUT", "/entropy", {})) == A.OperationNotSupportedPostBoot.MESSAGE


def test_balloon_before_boot(controller):
    missing = call(controller, "GET", "/balloon")
    assert str(missing) == "Balloon config error: No balloon device found."
    too_big = call(controller, "PUT", "/balloon", {"amount_mib": 1000, "deflate_on_oom": False})
    assert str(too_big) == "Balloon config error: Amount of pages requested is too large."
    assert controller.config.balloon is None
    body = {"amount_mib": 16, "deflate_on_oom": True, "stats_polling_interval_s": 1}
    assert call(controller, "PUT", "/balloon", body) == A.Empty()
    got = call(controller, "GET", "/balloon")
    assert json.loads(bodies.encode(got)) == {**body, "free_page_hinting": False, "free_page_reporting": False}
    assert bodies.vm_config_document(controller.config)["balloon"]["amount_mib"] == 16
    for method, path, doc in (
        ("PATCH", "/balloon", {"amount_mib": 1}),
        ("PATCH", "/balloon/statistics", {"stats_polling_interval_s": 2}),
        ("GET", "/balloon/statistics", None),
    ):
        assert str(call(controller, method, path, doc)) == PRE
    hinting = call(controller, "PUT", "/balloon", {"amount_mib": 1, "deflate_on_oom": False, "free_page_hinting": True})
    assert "hinting" in str(hinting) and controller.config.balloon.amount_mib == 16


def test_machine_config_cannot_shrink_below_the_balloon(controller):
    assert call(controller, "PUT", "/balloon", {"amount_mib": 100, "deflate_on_oom": False}) == A.Empty()
    error = call(controller, "PATCH", "/machine-config", {"mem_size_mib": 64})
    assert "smaller than the previously set balloon device target size" in str(error)
    assert controller.config.machine.mem_size_mib == 128


def test_balloon_after_boot(controller, kernel):
    call(controller, "PUT", "/balloon", {"amount_mib": 0, "deflate_on_oom": False, "stats_polling_interval_s": 5})
    device = boot(controller, kernel)
    assert call(controller, "PATCH", "/balloon", {"amount_mib": 32}) == A.Empty()
    assert device.target_pages == 32 * 256
    assert json.loads(bodies.encode(call(controller, "GET", "/balloon")))["amount_mib"] == 32
    assert bodies.vm_config_document(controller.config)["balloon"]["amount_mib"] == 32
    assert "too large" in str(call(controller, "PATCH", "/balloon", {"amount_mib": 129}))
    stats = json.loads(bodies.encode(call(controller, "GET", "/balloon/statistics")))
    assert stats == {"target_pages": 8192, "actual_pages": 0, "target_mib": 32, "actual_mib": 0}
    assert call(controller, "PATCH", "/balloon/statistics", {"stats_polling_interval_s": 9}) == A.Empty()
    assert device.stats_polling_interval_s == 9
    off = call(controller, "PATCH", "/balloon/statistics", {"stats_polling_interval_s": 0})
    assert str(off).startswith("Balloon config error: Cannot enable or disable statistics")
    assert device.stats_polling_interval_s == 9
    assert str(call(controller, "PUT", "/balloon", {"amount_mib": 1, "deflate_on_oom": False})) == (
        A.OperationNotSupportedPostBoot.MESSAGE
    )


def test_balloon_stats_disabled_after_boot(controller, kernel):
    call(controller, "PUT", "/balloon", {"amount_mib": 0, "deflate_on_oom": False})
    boot(controller, kernel)
    text = str(call(controller, "GET", "/balloon/statistics"))
    assert text == "Balloon config error: Statistics for the balloon device are not enabled."
    assert "not enabled" in str(call(controller, "PATCH", "/balloon/statistics", {"stats_polling_interval_s": 1}))


def test_no_balloon_after_boot(controller, kernel):
    boot(controller, kernel)
    assert str(call(controller, "PATCH", "/balloon", {"amount_mib": 1})) == "Balloon config error: No balloon device found."
    assert str(call(controller, "GET", "/balloon")) == "Balloon config error: No balloon device found."
