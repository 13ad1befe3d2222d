"""The device half of virtio, independent of the transport (virtio 1.2 sections 2 and 3).

A :class:`VirtioDevice` owns what the spec gives a device: a type id, offered and acknowledged
feature bits (read by the transport 32 bits at a time, "pages"), a device-specific configuration
space, and its virtqueues. Its life cycle is the two-state machine of Firecracker's
``DeviceState``::

    Inactive --activate(memory, interrupt)--> Activated --reset()--> Inactive

``activate`` runs when the driver sets DRIVER_OK; only then does the device receive guest memory
and its interrupt (R7: capabilities, not the world) and initialize its queues. ``queue_notify(i)``
(a kick: QueueNotify write or its ioeventfd) makes an activated device process queue ``i``.

Broken devices: anything the guest got wrong in a queue surfaces as :class:`GuestFault`. The
device catches it in ``queue_notify``, records the reason, stops processing and sets
``DEVICE_NEEDS_RESET`` in the status the transport reports, with a configuration-change
interrupt (spec 2.1.2). Only a reset (status 0) brings it back. No other exception is caught:
those are Sparkler bugs or host failures.

Locking: MMIO accesses come from vCPU threads, queue processing from the VMM thread. Both take
``device.lock`` (re-entrant, since a QueueNotify write may process the queue on the same thread).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from typing import Any

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.interrupt import IrqTrigger
from sparkler.devices.virtio.queue import Queue
from sparkler.errors import GuestFault
from sparkler.memory import GuestMemory


class DeviceState(enum.Enum):
    INACTIVE = "Inactive"
    ACTIVATED = "Activated"


def _ignore(_msg: str) -> None:
    pass


class VirtioDevice:
    """Base class: subclasses set ``device_type`` and implement :meth:`process_queue`."""

    device_type: int = 0

    # Where the device reports a guest error (the runtime points this at the logger).
    report_error: Callable[[str], None] = staticmethod(_ignore)

    def __init__(self, avail_features: int, queues: list[Queue], config_space: bytes = b"") -> None:
        self.avail_features = avail_features | (1 << spec.VIRTIO_F_VERSION_1)
        self.acked_features = 0
        self.queues = queues
        self.config_space = bytearray(config_space)
        self.config_generation = 0
        self.state = DeviceState.INACTIVE
        self.memory: GuestMemory | None = None
        self.interrupt: IrqTrigger | None = None
        self.broken_reason: str | None = None
        self.lock = threading.RLock()

    # --- features -------------------------------------------------------------------------------
    def avail_features_by_page(self, page: int) -> int:
        if page not in (0, 1):
            return 0
        return (self.avail_features >> (32 * page)) & 0xFFFF_FFFF

    def ack_features(self, features: int) -> None:
        """Record the driver's accepted features (the transport has checked they were offered)."""
        if features & ~self.avail_features:
            raise ValueError(f"features {features & ~self.avail_features:#x} were not offered")
        self.acked_features = features

    def has_feature(self, bit: int) -> bool:
        return bool(self.acked_features >> bit & 1)

    # --- configuration space ----------------------------------------------------------------------
    def read_config(self, offset: int, data: memoryview) -> None:
        """Fill ``data`` from the config space; bytes past its end read as zero."""
        with self.lock:
            chunk = self.config_space[offset : offset + len(data)] if offset >= 0 else b""
            data[: len(chunk)] = chunk
            data[len(chunk) :] = bytes(len(data) - len(chunk))

    def write_config(self, offset: int, data: bytes) -> None:
        """Driver writes to the config space. Default: read-only config, writes ignored."""

    def config_changed(self) -> None:
        """The config space changed (e.g. a resize): new generation and, if active, an interrupt."""
        with self.lock:
            self.config_generation = (self.config_generation + 1) & 0xFFFF_FFFF
            if self.interrupt is not None and self.state is DeviceState.ACTIVATED:
                self.interrupt.trigger_config()

    # --- life cycle -------------------------------------------------------------------------------
    @property
    def is_activated(self) -> bool:
        return self.state is DeviceState.ACTIVATED

    @property
    def broken(self) -> bool:
        return self.broken_reason is not None

    def activate(self, memory: GuestMemory, interrupt: IrqTrigger) -> None:
        """Inactive -> Activated: take memory and interrupt, map the queues (GuestFault if invalid)."""
        with self.lock:
            if self.state is DeviceState.ACTIVATED:
                raise RuntimeError("device is already activated")
            event_idx = self.has_feature(spec.VIRTIO_RING_F_EVENT_IDX)
            for queue in self.queues:
                queue.initialize(memory, event_idx=event_idx)
            self.memory = memory
            self.interrupt = interrupt
            self.state = DeviceState.ACTIVATED
            self.on_activate()

    def reset(self) -> None:
        """Any state -> Inactive (spec 2.4): forget features, queues, memory and brokenness."""
        with self.lock:
            self.on_reset()
            self.state = DeviceState.INACTIVE
            self.acked_features = 0
            for queue in self.queues:
                queue.reset()
            self.memory = None
            self.interrupt = None
            self.broken_reason = None

    def on_activate(self) -> None:
        """Hook for subclasses, called at the end of activate()."""

    def on_reset(self) -> None:
        """Hook for subclasses, called at the start of reset()."""

    def mark_broken(self, reason: str) -> None:
        """The guest broke the spec: stop serving, ask for a reset (DEVICE_NEEDS_RESET, spec 2.1.2)."""
        with self.lock:
            if self.broken_reason is not None:
                return
            self.broken_reason = reason
            self.report_error(f"virtio device (type {self.device_type}) needs reset: {reason}")
            if self.interrupt is not None:
                self.interrupt.trigger_config()

    # --- queue work -------------------------------------------------------------------------------
    def queue_notify(self, index: int) -> None:
        """The driver kicked queue ``index``. Guest errors break the device; nothing else is caught."""
        with self.lock:
            if self.state is not DeviceState.ACTIVATED or self.broken_reason is not None:
                return
            if not 0 <= index < len(self.queues):
                return  # a notification for a queue we do not have: ignored, as Firecracker
            try:
                self.process_queue(index)
            except GuestFault as fault:
                self.mark_broken(str(fault))
            if self.broken_reason is not None:
                self.on_queue_fault()  # it was not broken on entry: this notification broke it

    def process_queue(self, index: int) -> None:
        raise NotImplementedError

    def on_queue_fault(self) -> None:
        """Hook (under the lock): handling a queue notification marked the device broken (devices
        count it in their ``event_fails`` metric)."""

    # --- host side (called by the builder's wiring on the VMM thread) -------------------------------
    def attach_host(self, host: Any) -> None:
        """Register the device's own host fds (a tap, listening sockets) with ``host``
        (``sparkler.vmm.event_loop.DeviceHost``: ``add_fd(fd, callback(mask), events)``,
        ``modify_fd``, ``remove_fd``). Default: the device has none."""

    def timer_deadline_ns(self) -> int | None:
        """Earliest ``time.monotonic_ns()`` at which a blocked rate limiter may let work through
        again, or None; the builder arms one timerfd per device for it."""
        return None

    def process_rate_limiter_event(self) -> None:
        """The rate-limiter timer fired: replenish and retry blocked work."""

    def close(self) -> None:
        """Release host resources (files, sockets) at teardown. Default: none."""

    def signal_used_queue(self, index: int) -> None:
        """Raise the vring interrupt if queue ``index``'s suppression rules ask for it."""
        if self.interrupt is not None and self.queues[index].prepare_kick():
            self.interrupt.trigger_vring()
