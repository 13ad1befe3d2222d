"""API mode: the REST server on its own thread, the controller on the VMM (main) thread.

The API thread (``fc_api``) parses each request into a VMM action and hands it over a channel
(queue + eventfd doorbell); the main thread applies it with the controller and answers. Before
InstanceStart the main thread waits only on the channel; once the machine runs, the same channel
is one more source in the machine's event loop. With ``--config-file`` the machine is built and
started before the first request is served, as Firecracker does.
"""

from __future__ import annotations

import selectors
from typing import TYPE_CHECKING

from sparkler import logger as log
from sparkler.errors import SparklerError
from sparkler.vmm.runtime import EXIT_GENERIC, EXIT_OK, build_options, run_event_loop
from sparkler.vmm.runtime_options import RunOptions

if TYPE_CHECKING:
    from sparkler.config import VmmConfig


def run(options: RunOptions, config: VmmConfig | None) -> int:
    from sparkler.api.server import ApiServer
    from sparkler.vmm import actions
    from sparkler.vmm.builder import build_microvm
    from sparkler.vmm.channel import Channel
    from sparkler.vmm.controller import Controller, ControllerHooks
    from sparkler.vmm.vcpu import install_kick_handler

    install_kick_handler()
    channel = Channel()
    hooks = ControllerHooks(configure_logger=log.update, log=log.info)
    controller = Controller(
        build_microvm,
        build_options(options),
        options.instance_id,
        channel=channel,
        config=config,
        hooks=hooks,
        metrics_initialized=bool(options.metrics_path),
    )
    if config is not None:
        result = controller.handle(actions.StartMicroVm())
        if isinstance(result, actions.VmmActionError):
            log.error(f"Could not Start MicroVM from one single json: {result}")
            channel.close()
            return EXIT_GENERIC
        log.info("Successfully started microvm that was configured from one single json")
    try:
        server = ApiServer(
            options.api_sock, channel.call, max_payload=options.http_api_max_payload_size, log=log.info
        )
    except (OSError, SparklerError) as e:
        log.error(f"Failed to open the API socket at {options.api_sock}: {e}")
        if controller.machine is not None:
            controller.machine.stop()
        channel.close()
        return EXIT_GENERIC
    server.start()
    log.info("API server started.")
    try:
        if not _wait_for_boot(controller, channel):
            return EXIT_OK
        machine = controller.machine
        try:
            return run_event_loop(machine, extra=[(channel.fd, controller.process_channel)])
        finally:
            machine.stop()
    finally:
        server.shutdown()
        channel.close()


def _wait_for_boot(controller: object, channel: object) -> bool:
    """Serve pre-boot requests until InstanceStart succeeded; False on Ctrl-C."""
    sel = selectors.DefaultSelector()
    sel.register(channel.fd, selectors.EVENT_READ)  # type: ignore[attr-defined]
    try:
        while not controller.booted:  # type: ignore[attr-defined]
            try:
                sel.select()
            except KeyboardInterrupt:
                return False
            controller.process_channel()  # type: ignore[attr-defined]
        return True
    finally:
        sel.close()
