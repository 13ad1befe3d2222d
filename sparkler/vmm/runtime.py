"""Process runtime: build the microVM, run the VMM thread's event loop, tear down.

The main thread is the VMM thread (Firecracker's ``main``): after the build it waits in one
selector for the machine's exit fd and, when the console is interactive, for guest console input
on stdin. vCPU threads run the guest; they never wait on this loop.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from sparkler import logger as log
from sparkler.errors import SparklerError
from sparkler.vmm.runtime_options import BuildOptions, RunOptions

if TYPE_CHECKING:
    from sparkler.config import VmmConfig
    from sparkler.vmm.machine import Machine

EXIT_OK = 0
EXIT_GENERIC = 1


def build_options(options: RunOptions) -> BuildOptions:
    """The builder's options for this process; the boot-timer clock starts now."""
    return BuildOptions(
        boot_timer=options.boot_timer,
        instance_id=options.instance_id,
        pvm_compat=options.pvm_compat,
        start_wall_us=time.monotonic_ns() // 1000,
        start_cpu_us=time.process_time_ns() // 1000,
    )


def make_mmds(options: RunOptions, config: VmmConfig | None) -> object:
    """The VM's MMDS: ``--mmds-size-limit``, the instance id as token AAD, the ``--metadata`` document
    (put before ``mmds-config`` is applied, as Firecracker does) and the config file's
    ``mmds-config``. Raises ConfigError when the metadata does not fit the limit."""
    import msgspec

    from sparkler.errors import ConfigError
    from sparkler.mmds.imds import Mmds
    from sparkler.mmds.store import MmdsStoreError

    mmds = Mmds(size_limit=int(options.mmds_size_limit or 0), instance_id=options.instance_id)
    if options.metadata_json is not None:
        try:
            mmds.store.put(msgspec.json.decode(options.metadata_json))
        except (MmdsStoreError, msgspec.DecodeError, RecursionError) as e:
            raise ConfigError(f"Unable to put the --metadata document into the MMDS: {e}") from None
    if config is not None and config.mmds_config is not None:
        mmds.configure(config.mmds_config)
    return mmds


def setup_process(options: RunOptions, config: VmmConfig | None) -> bool:
    """Firecracker's start-up steps 4, 6 and 7: signal handlers, ``--metrics-path`` (or the config
    file's ``metrics``), then the seccomp filters (compiled now, installed by each thread later).
    Returns whether metrics are initialised; raises SparklerError when the metrics destination
    cannot be opened or the filters cannot be loaded (before any thread or guest runs)."""
    from sparkler import metrics
    from sparkler.errors import ConfigError
    from sparkler.host import signals
    from sparkler.seccomp import install as seccomp

    signals.install(metrics.METRICS, log.error, log.info, find_bad_syscall=seccomp.find_bad_syscall)
    metrics.METRICS.clear_sources()
    metrics.METRICS.set_instance_id(options.instance_id)
    metrics.METRICS.add_source("logger", metrics.logger_source(log.statistics))
    metrics_config = config.metrics if config is not None else None
    try:
        if options.metrics_path:
            metrics.METRICS.init(options.metrics_path)
        elif metrics_config is not None:
            metrics.METRICS.configure(metrics_config)
    except (OSError, ValueError) as e:
        raise ConfigError(f"Failed to initialize the metrics system: {getattr(e, 'strerror', None) or e}") from None
    configure_seccomp(options)
    return metrics.METRICS.initialized


def configure_seccomp(options: RunOptions) -> None:
    """Load the filters (``--no-seccomp``: none; ``--seccomp-filter FILE``: that file; else the
    shipped ones) and compile them; a bad file is a ConfigError before anything runs."""
    from sparkler.seccomp import install as seccomp

    try:
        policies = None if options.seccomp_filter is None else seccomp.load_filter_file(options.seccomp_filter)
        seccomp.configure(no_seccomp=options.no_seccomp, policies=policies)
    except seccomp.SeccompError as e:
        raise seccomp.SeccompError(f"Error retrieving seccomp filters: {e}") from None


def install_vmm_filter() -> None:
    """The main thread's filter, once the machine is built and started (catalog 10.1)."""
    from sparkler.seccomp import install as seccomp

    seccomp.install_thread_filter("vmm")


def metrics_started(machine: Machine) -> None:
    """The VM is built: register its metrics sources and write the first line (Firecracker flushes
    right after the build, then every 60 s)."""
    from sparkler import metrics

    metrics.attach_machine(metrics.METRICS, machine)
    metrics.METRICS.flush_quietly()


def signal_wakeup() -> list[tuple[int, object]]:
    """The signal wake-up pipe for a main-thread event loop (see sparkler.host.signals)."""
    from sparkler.host import signals

    fd = signals.wakeup_fd()
    return [] if fd is None else [(fd, signals.drain_wakeup)]


def periodic_metrics() -> tuple[object, list[tuple[int, object]]]:
    """A 60 s timer and the signal wake-up pipe for the event loop: ``(timer, extra)``; close the
    timer after the loop."""
    from sparkler import metrics

    timer = metrics.PeriodicTimer()

    def on_timer() -> None:
        if timer.acknowledge():
            metrics.METRICS.flush_quietly()

    return timer, [(timer.fd, on_timer), *signal_wakeup()]


def final_metrics_flush() -> None:
    """Flush at exit (Firecracker writes the metrics when the Vmm is dropped)."""
    from sparkler import metrics

    metrics.METRICS.flush_quietly()


def run_from_config(config: VmmConfig, options: RunOptions) -> int:
    """The ``--no-api`` path: build from the config file, run until the guest stops."""
    from sparkler.vmm.builder import build_microvm
    from sparkler.vmm.vcpu import install_kick_handler

    install_kick_handler()
    try:
        setup_process(options, config)
    except SparklerError as e:
        log.error(str(e))
        return EXIT_GENERIC
    import msgspec

    try:
        mmds = make_mmds(options, config)
        from sparkler import metrics

        metrics.METRICS.add_source("mmds", mmds.statistics)  # type: ignore[attr-defined]
        machine = build_microvm(config, msgspec.structs.replace(build_options(options), mmds=mmds))
    except SparklerError as e:
        log.error(f"Could not Start MicroVM from one single json: {e}")
        return EXIT_GENERIC
    machine.start()
    try:
        install_vmm_filter()
    except SparklerError as e:
        log.error(str(e))
        machine.stop()
        return EXIT_GENERIC
    log.info("Successfully started microvm that was configured from one single json")
    metrics_started(machine)
    timer, extra = periodic_metrics()
    try:
        return run_event_loop(machine, extra=extra)
    finally:
        timer.close()  # type: ignore[attr-defined]
        final_metrics_flush()
        machine.stop()


def run_event_loop(machine: Machine, extra: list[tuple[int, object]] | None = None) -> int:
    """Serve the machine until it stops; returns its exit code."""
    from sparkler.devices.legacy.serial import input_allowed
    from sparkler.vmm.event_loop import EventLoop

    own_loop = getattr(machine, "event_loop", None) is None
    loop = EventLoop() if own_loop else machine.event_loop  # the machine closes its own at stop()
    loop.add(machine.exit_fd, lambda _mask: None)
    serial = machine.devices.get("serial")
    if serial is not None and input_allowed(0):
        os.set_blocking(0, False)
        ConsoleInput(loop, serial, 0).start()
    for fd, handler in [*getattr(machine, "event_handlers", ()), *(extra or [])]:
        loop.add(fd, lambda _mask, handler=handler: handler())  # type: ignore[misc]
    try:
        while machine.exit_code is None:
            try:
                loop.run_once()
            except KeyboardInterrupt:
                machine.request_exit(EXIT_OK, "Shutting down VM after intercepting SIGINT.")
                break
    finally:
        if own_loop:
            loop.close()
    return machine.exit_code if machine.exit_code is not None else EXIT_GENERIC


class ConsoleInput:
    """Console input (``fd``, stdin) -> the UART, on the VMM thread, never more than the receive
    FIFO holds: when it is full, ``fd`` leaves the loop until the guest drains the FIFO (the UART
    signals ``serial.space_event``), so no byte is dropped. Without that event (a machine built
    elsewhere) input is read 64 bytes at a time and what does not fit is counted as missed."""

    def __init__(self, loop: Any, serial: Any, fd: int) -> None:
        self.loop, self.serial, self.fd = loop, serial, fd
        self.space_event = getattr(serial, "space_event", None)
        self.reading = False
        self.eof = False

    def start(self) -> None:
        if self.space_event is not None:
            self.loop.add(self.space_event.fileno(), self._on_space)
        self._resume()

    def _resume(self) -> None:
        if not self.reading and not self.eof:
            self.loop.add(self.fd, self._on_input)
            self.reading = True

    def _pause(self) -> None:
        if self.reading:
            self.loop.remove(self.fd)
            self.reading = False

    def _on_space(self, _mask: int) -> None:
        self.space_event.read()  # type: ignore[union-attr]
        self._resume()

    def _on_input(self, _mask: int) -> None:
        space = self.serial.input_space() if self.space_event is not None else 64
        if space == 0:
            self._pause()
            return
        try:
            data = os.read(self.fd, space)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.eof = True  # the console has no more input
            self._pause()
            return
        self.serial.enqueue_input(data)
        if self.space_event is not None and self.serial.input_space() == 0:
            self._pause()


def run_api(options: RunOptions, config: VmmConfig | None) -> int:
    """API mode (issue 3): served by api.server + vmm.controller."""
    from sparkler.vmm import api_runtime

    return api_runtime.run(options, config)


__all__ = [
    "ConsoleInput",
    "RunOptions",
    "configure_seccomp",
    "final_metrics_flush",
    "install_vmm_filter",
    "metrics_started",
    "periodic_metrics",
    "run_api",
    "run_event_loop",
    "run_from_config",
    "setup_process",
]
