"""API mode: the REST server on its own thread, the controller on the VMM (main) thread.

The API thread (``fc_api``) parses each request into a VMM action and hands it over a channel
(queue + eventfd doorbell); the main thread applies it with the controller and answers. Before
InstanceStart the main thread waits only on the channel; once the machine runs, the same channel
is one more source in the machine's event loop. With ``--config-file`` the machine is built and
started before the first request is served, as Firecracker does.
"""

from __future__ import annotations

import selectors
import time
from typing import TYPE_CHECKING

from sparkler import logger as log
from sparkler.errors import SparklerError
from sparkler.metrics import METRICS
from sparkler.vmm.runtime import (
    EXIT_GENERIC,
    EXIT_OK,
    build_options,
    final_metrics_flush,
    install_vmm_filter,
    make_mmds,
    metrics_started,
    periodic_metrics,
    run_event_loop,
    setup_process,
    signal_wakeup,
)
from sparkler.vmm.runtime_options import BuildOptions, RunOptions

if TYPE_CHECKING:
    from sparkler.config import VmmConfig


def run(options: RunOptions, config: VmmConfig | None) -> int:
    from sparkler.api.server import ApiServer
    from sparkler.vmm import actions
    from sparkler.vmm.channel import Channel
    from sparkler.vmm.controller import Controller, ControllerHooks

    try:
        metrics_initialized = setup_process(options, config)
    except SparklerError as e:
        log.error(str(e))
        return EXIT_GENERIC
    try:
        # Made now only when there is something to put in it (--metadata that does not fit the store
        # fails before serving); otherwise the controller makes it on first use (start-up cost).
        needed = options.metadata_json is not None or (config is not None and config.mmds_config is not None)
        mmds = make_mmds(options, config) if needed else None
    except SparklerError as e:
        log.error(str(e))
        return EXIT_GENERIC
    channel = Channel()
    hooks = ControllerHooks(
        configure_logger=log.update,
        configure_metrics=METRICS.configure,
        flush_metrics=METRICS.write,
        on_started=metrics_started,
        log=_log_and_record_latency,
    )
    controller = Controller(
        _build_microvm,
        build_options(options),
        options.instance_id,
        channel=channel,
        config=config,
        hooks=hooks,
        metrics_initialized=metrics_initialized,
        mmds=mmds,
        mmds_size_limit=int(options.mmds_size_limit or 0),
    )
    METRICS.add_source("mmds", controller.mmds_statistics)
    if config is not None:
        result = controller.handle(actions.StartMicroVm())
        if isinstance(result, actions.VmmActionError):
            log.error(f"Could not Start MicroVM from one single json: {result}")
            channel.close()
            return EXIT_GENERIC
        log.info("Successfully started microvm that was configured from one single json")
    try:
        server = ApiServer(
            options.api_sock,
            channel.call,
            max_payload=options.http_api_max_payload_size,
            log=log.info,
            on_request=METRICS.count_api_request,
            debug_log=log.debug,
            thread_init=_install_api_filter,
        )
    except (OSError, SparklerError) as e:
        log.error(f"Failed to open the API socket at {options.api_sock}: {e}")
        if controller.machine is not None:
            controller.machine.stop()
        channel.close()
        return EXIT_GENERIC
    try:
        server.start()
    except SparklerError as e:  # the fc_api thread could not install its seccomp filter
        log.error(str(e))
        server.shutdown()
        if controller.machine is not None:
            controller.machine.stop()
        channel.close()
        return EXIT_GENERIC
    log.info("API server started.")
    _report_startup_time(options)
    try:
        if not _wait_for_boot(controller, channel):
            return EXIT_OK
        machine = controller.machine
        try:
            # After the build, before the event loop (catalog 10.1). What the main thread still does
            # later (PATCH /drives opens files, FlushMetrics, logger/metrics writes, device work,
            # pause/resume) is in the vmm allow-list.
            install_vmm_filter()
        except SparklerError as e:
            log.error(str(e))
            machine.stop()
            return EXIT_GENERIC
        timer, extra = periodic_metrics()
        try:
            return run_event_loop(machine, extra=[(channel.fd, controller.process_channel), *extra])
        finally:
            timer.close()  # type: ignore[attr-defined]
            final_metrics_flush()
            machine.stop()
    finally:
        server.shutdown()
        channel.close()


def _log_and_record_latency(message: str) -> None:
    """The controller's Info lines; ``'pause vm' API request took N us.`` also sets
    ``latencies_us.pause_vm`` and ``vmm_pause_vm`` (same for resume)."""
    log.info(message)
    for label, key in (("'pause vm'", "pause_vm"), ("'resume vm'", "resume_vm")):
        if message.startswith(label + " API request took "):
            try:
                us = int(message.rsplit(" took ", 1)[1].split()[0])
            except (IndexError, ValueError):
                return
            METRICS.store("latencies_us", key, us)
            METRICS.store("latencies_us", "vmm_" + key, us)


def _report_startup_time(options: RunOptions) -> None:
    """``api_server.process_startup_time_us`` / ``_cpu_us`` (need ``--start-time-us`` /
    ``--start-time-cpu-us``; ``--parent-cpu-time-us`` is added to the CPU time)."""
    if options.start_time_us is not None:
        now_us = time.monotonic_ns() // 1000
        METRICS.store("api_server", "process_startup_time_us", max(0, now_us - options.start_time_us))
    if options.start_time_cpu_us is not None:
        cpu_us = time.process_time_ns() // 1000 - options.start_time_cpu_us + (options.parent_cpu_time_us or 0)
        METRICS.store("api_server", "process_startup_time_cpu_us", max(0, cpu_us))


def _install_api_filter() -> None:
    """Run by ``fc_api`` after naming itself, before it accepts a connection."""
    from sparkler.seccomp import install as seccomp

    seccomp.install_thread_filter("api")


def _build_microvm(config: VmmConfig, options: BuildOptions) -> object:
    from sparkler.vmm.builder import build_microvm
    from sparkler.vmm.vcpu import install_kick_handler

    install_kick_handler()  # the controller runs on the main thread, as signal.signal requires
    return build_microvm(config, options)


def _wait_for_boot(controller: object, channel: object) -> bool:
    """Serve pre-boot requests until InstanceStart succeeded; False on Ctrl-C."""
    sel = selectors.DefaultSelector()
    sel.register(channel.fd, selectors.EVENT_READ)  # type: ignore[attr-defined]
    for fd, callback in signal_wakeup():
        sel.register(fd, selectors.EVENT_READ, callback)
    try:
        while not controller.booted:  # type: ignore[attr-defined]
            try:
                events = sel.select()
            except KeyboardInterrupt:
                return False
            for key, _ in events:
                if key.data is not None:
                    key.data()
            controller.process_channel()  # type: ignore[attr-defined]
        return True
    finally:
        sel.close()
