"""The virtio-mmio transport, version 2 (virtio 1.2 section 4.2), around one VirtioDevice.

A 4 KiB MMIO window: 32-bit little-endian registers below ``0x100`` and the device's configuration
space from ``0x100``. The driver discovers the device (MagicValue "virt", Version 2, DeviceID),
negotiates features 32 bits at a time through the ``*FeaturesSel`` page registers, programs each
queue (QueueSel, QueueNum, the six address halves, QueueReady) and walks the device status
(spec 2.1, 3.1.1)::

    0 -> ACKNOWLEDGE -> +DRIVER -> +FEATURES_OK -> +DRIVER_OK     (FAILED may be set at any time;
                                                                  writing 0 resets)

Rules, as in Firecracker's ``MmioTransport`` (``devices/virtio/transport/mmio.rs``):

* each status write must set exactly the next bit on top of the current value; a write that clears
  bits is ignored unless it is 0 (reset); FAILED is always accepted;
* FEATURES_OK is accepted only if the driver's features are a subset of the offered ones and
  include VIRTIO_F_VERSION_1 (spec 2.2.2: otherwise the device "MUST fail to set" it, and the
  driver sees it unset when it reads Status back);
* DriverFeatures is writable only between DRIVER and FEATURES_OK; queue registers only between
  FEATURES_OK and DRIVER_OK; config space only from DRIVER on (and not after FAILED);
  InterruptACK and QueueNotify only after DRIVER_OK;
* DRIVER_OK activates the device with guest memory and the interrupt; if a queue is misconfigured
  the device is broken instead: Status reads back with DEVICE_NEEDS_RESET and a configuration
  change interrupt is raised (spec 2.1.2; Firecracker silently stays inactive here);
* register accesses that are not 4 bytes wide are ignored (reads return zeros); unknown registers
  read as zero and ignore writes.

QueueNotify normally never reaches Python: the builder registers an ioeventfd per queue on
``base + 0x50`` (datamatch = queue index) that calls :meth:`VirtioDevice.queue_notify` from the
VMM thread's event loop. A write that does arrive here is handled the same way.
"""

from __future__ import annotations

import struct

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.device import VirtioDevice
from sparkler.devices.virtio.interrupt import IrqTrigger
from sparkler.devices.virtio.queue import Queue
from sparkler.errors import GuestFault
from sparkler.memory import GuestMemory

_U32 = struct.Struct("<I")

S_ACKNOWLEDGE = spec.VIRTIO_CONFIG_S_ACKNOWLEDGE
S_DRIVER = spec.VIRTIO_CONFIG_S_DRIVER
S_FEATURES_OK = spec.VIRTIO_CONFIG_S_FEATURES_OK
S_DRIVER_OK = spec.VIRTIO_CONFIG_S_DRIVER_OK
S_FAILED = spec.VIRTIO_CONFIG_S_FAILED
S_NEEDS_RESET = spec.VIRTIO_CONFIG_S_NEEDS_RESET

# The status before each accepted single-bit step (Firecracker's set_device_status).
_STEPS = {
    S_ACKNOWLEDGE: 0,
    S_DRIVER: S_ACKNOWLEDGE,
    S_FEATURES_OK: S_ACKNOWLEDGE | S_DRIVER,
    S_DRIVER_OK: S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK,
}

_QUEUE_ADDRESS_REGISTERS = {
    spec.VIRTIO_MMIO_QUEUE_DESC_LOW: ("desc_table", 0),
    spec.VIRTIO_MMIO_QUEUE_DESC_HIGH: ("desc_table", 32),
    spec.VIRTIO_MMIO_QUEUE_AVAIL_LOW: ("avail_ring", 0),
    spec.VIRTIO_MMIO_QUEUE_AVAIL_HIGH: ("avail_ring", 32),
    spec.VIRTIO_MMIO_QUEUE_USED_LOW: ("used_ring", 0),
    spec.VIRTIO_MMIO_QUEUE_USED_HIGH: ("used_ring", 32),
}


class MmioTransport:
    """BusDevice for one virtio-mmio window (``read(offset, data)`` / ``write(offset, data)``)."""

    def __init__(self, device: VirtioDevice, memory: GuestMemory, interrupt: IrqTrigger | None = None) -> None:
        self.device = device
        self.memory = memory
        self.interrupt = interrupt if interrupt is not None else IrqTrigger()
        self._reset_registers()

    def _reset_registers(self) -> None:
        self.device_status = 0
        self.features_select = 0
        self.driver_features_select = 0
        self.driver_features = 0
        self.queue_select = 0

    # --- helpers ----------------------------------------------------------------------------------
    @property
    def status(self) -> int:
        """Status as the driver reads it (DEVICE_NEEDS_RESET when the device broke)."""
        return self.device_status | (S_NEEDS_RESET if self.device.broken else 0)

    def _check_status(self, set_bits: int, clear_bits: int) -> bool:
        return self.device_status & (set_bits | clear_bits) == set_bits

    def _selected_queue(self) -> Queue | None:
        if 0 <= self.queue_select < len(self.device.queues):
            return self.device.queues[self.queue_select]
        return None

    # --- BusDevice ----------------------------------------------------------------------------------
    def read(self, offset: int, data: memoryview) -> None:
        with self.device.lock:
            if 0 <= offset < spec.VIRTIO_MMIO_CONFIG:
                if len(data) == 4:
                    _U32.pack_into(data, 0, self._read_register(offset))
                else:
                    data[:] = bytes(len(data))
            elif spec.VIRTIO_MMIO_CONFIG <= offset < spec.VIRTIO_MMIO_SIZE:
                self.device.read_config(offset - spec.VIRTIO_MMIO_CONFIG, data)
            else:
                data[:] = bytes(len(data))

    def _read_register(self, offset: int) -> int:
        queue = self._selected_queue()
        match offset:
            case spec.VIRTIO_MMIO_MAGIC_VALUE:
                return spec.VIRTIO_MMIO_MAGIC
            case spec.VIRTIO_MMIO_VERSION:
                return spec.VIRTIO_MMIO_VERSION_MODERN
            case spec.VIRTIO_MMIO_DEVICE_ID:
                return self.device.device_type
            case spec.VIRTIO_MMIO_VENDOR_ID:
                return 0
            case spec.VIRTIO_MMIO_DEVICE_FEATURES:
                return self.device.avail_features_by_page(self.features_select)
            case spec.VIRTIO_MMIO_QUEUE_NUM_MAX:
                return queue.max_size if queue is not None else 0  # 0: "queue not available"
            case spec.VIRTIO_MMIO_QUEUE_READY:
                return int(queue.ready) if queue is not None else 0
            case spec.VIRTIO_MMIO_INTERRUPT_STATUS:
                return self.interrupt.irq_status
            case spec.VIRTIO_MMIO_STATUS:
                return self.status
            case spec.VIRTIO_MMIO_CONFIG_GENERATION:
                return self.device.config_generation
            case _:
                return 0

    def write(self, offset: int, data: bytes) -> None:
        with self.device.lock:
            if 0 <= offset < spec.VIRTIO_MMIO_CONFIG:
                if len(data) == 4:
                    self._write_register(offset, _U32.unpack(data)[0])
            elif spec.VIRTIO_MMIO_CONFIG <= offset < spec.VIRTIO_MMIO_SIZE:
                if self._check_status(S_DRIVER, S_FAILED):
                    self.device.write_config(offset - spec.VIRTIO_MMIO_CONFIG, bytes(data))

    def _write_register(self, offset: int, value: int) -> None:
        match offset:
            case spec.VIRTIO_MMIO_DEVICE_FEATURES_SEL:
                self.features_select = value
            case spec.VIRTIO_MMIO_DRIVER_FEATURES:
                if self._check_status(S_DRIVER, S_FEATURES_OK | S_FAILED) and self.driver_features_select in (0, 1):
                    shift = 32 * self.driver_features_select
                    self.driver_features = (self.driver_features & ~(0xFFFF_FFFF << shift)) | (value << shift)
            case spec.VIRTIO_MMIO_DRIVER_FEATURES_SEL:
                self.driver_features_select = value
            case spec.VIRTIO_MMIO_QUEUE_SEL:
                self.queue_select = value
            case spec.VIRTIO_MMIO_QUEUE_NUM:
                if (queue := self._writable_queue()) is not None:
                    queue.size = value
            case spec.VIRTIO_MMIO_QUEUE_READY:
                if (queue := self._writable_queue()) is not None:
                    queue.ready = value == 1
            case spec.VIRTIO_MMIO_QUEUE_NOTIFY:
                if self._check_status(S_DRIVER_OK, 0):
                    self.device.queue_notify(value)
            case spec.VIRTIO_MMIO_INTERRUPT_ACK:
                if self._check_status(S_DRIVER_OK, 0):
                    self.interrupt.ack(value)
            case spec.VIRTIO_MMIO_STATUS:
                self._set_status(value)
            case _ if offset in _QUEUE_ADDRESS_REGISTERS:
                if (queue := self._writable_queue()) is not None:
                    name, shift = _QUEUE_ADDRESS_REGISTERS[offset]
                    old = getattr(queue, name)
                    setattr(queue, name, (old & ~(0xFFFF_FFFF << shift)) | (value << shift))
            case _:
                pass

    def _writable_queue(self) -> Queue | None:
        if not self._check_status(S_FEATURES_OK, S_DRIVER_OK | S_FAILED):
            return None
        return self._selected_queue()

    # --- device status ------------------------------------------------------------------------------
    def _set_status(self, value: int) -> None:
        if value == 0:
            self.reset()
            return
        new_bits = value & ~self.device_status
        if new_bits in _STEPS and self.device_status == _STEPS[new_bits]:
            if new_bits == S_FEATURES_OK and not self._accept_features():
                return
            self.device_status = value
            if new_bits == S_DRIVER_OK:
                self._activate()
        elif value & S_FAILED:
            self.device_status |= S_FAILED
        # else: an invalid transition (skips a step or clears bits): ignored, as Firecracker.

    def _accept_features(self) -> bool:
        offered = self.device.avail_features
        features = self.driver_features
        if features & ~offered or not features >> spec.VIRTIO_F_VERSION_1 & 1:
            return False
        self.device.ack_features(features)
        return True

    def _activate(self) -> None:
        if self.device.is_activated:
            return
        try:
            self.device.activate(self.memory, self.interrupt)
        except GuestFault as fault:
            self.device.mark_broken(f"activation failed: {fault}")
            self.interrupt.trigger_config()

    def reset(self) -> None:
        """Status 0 (spec 2.4): device and transport back to their initial state."""
        self.device.reset()
        self.interrupt.reset()
        self._reset_registers()
