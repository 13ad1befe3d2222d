"""virtio-mmio transport version 2 (virtio 1.2 section 4.2) with Firecracker's status rules."""

from __future__ import annotations

import pytest

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.device import DeviceState
from sparkler.devices.virtio.mmio import MmioTransport
from sparkler.testing.fake_memory import guest_memory
from sparkler.testing.mock_driver import MmioDriver, MockDriver, readable, writable
from tests.devices.virtio.helpers import EchoDevice, counting_irq

ACK = spec.VIRTIO_CONFIG_S_ACKNOWLEDGE
DRV = spec.VIRTIO_CONFIG_S_DRIVER
FOK = spec.VIRTIO_CONFIG_S_FEATURES_OK
DOK = spec.VIRTIO_CONFIG_S_DRIVER_OK
FAILED = spec.VIRTIO_CONFIG_S_FAILED
NEEDS_RESET = spec.VIRTIO_CONFIG_S_NEEDS_RESET
VERSION_1 = 1 << spec.VIRTIO_F_VERSION_1
EVENT_IDX = 1 << spec.VIRTIO_RING_F_EVENT_IDX
DATA = 0x20000


@pytest.fixture
def memory():
    mem = guest_memory(1 << 20)
    yield mem
    mem.close()


@pytest.fixture
def rig(memory):
    device = EchoDevice(features=EVENT_IDX)
    irq, line = counting_irq()
    transport = MmioTransport(device, memory, irq)
    return device, transport, MmioDriver(transport), MockDriver(memory, 0x1000, 16), line


def test_spec_4_2_2_identification_registers(rig):
    _, _, drv, _, _ = rig
    assert drv.read32(spec.VIRTIO_MMIO_MAGIC_VALUE) == 0x74726976
    assert drv.read32(spec.VIRTIO_MMIO_VERSION) == 2
    assert drv.read32(spec.VIRTIO_MMIO_DEVICE_ID) == 42
    assert drv.read32(spec.VIRTIO_MMIO_VENDOR_ID) == 0


def test_spec_4_2_2_feature_pages_offer_version_1_in_page_1(rig):
    _, _, drv, _, _ = rig
    assert drv.device_features() == VERSION_1 | EVENT_IDX
    drv.write32(spec.VIRTIO_MMIO_DEVICE_FEATURES_SEL, 7)
    assert drv.read32(spec.VIRTIO_MMIO_DEVICE_FEATURES) == 0


def test_mmio_probe_activates_device_with_negotiated_features(rig):
    device, _, drv, queue, _ = rig
    assert drv.probe([queue]) == ACK | DRV | FOK | DOK
    assert device.state is DeviceState.ACTIVATED
    assert device.acked_features == VERSION_1 | EVENT_IDX
    assert device.queues[0].event_idx is True


def test_mmio_kick_processes_queue_and_raises_vring_interrupt(rig):
    device, _, drv, queue, line = rig
    drv.probe([queue])
    head = queue.add_chain([readable(DATA, 16), writable(DATA + 16, 100)])
    drv.kick(0)
    assert queue.take_used() == [(head, 100)]
    assert line.count == 1
    assert drv.ack_interrupt() == spec.VIRTIO_MMIO_INT_VRING
    assert drv.interrupt_status() == 0


def test_spec_2_2_2_features_ok_refused_for_unoffered_feature(rig):
    device, _, drv, queue, _ = rig
    status = drv.probe([queue], features=VERSION_1 | (1 << 3))
    assert status == ACK | DRV  # FEATURES_OK did not stick
    assert device.state is DeviceState.INACTIVE


def test_spec_2_2_2_features_ok_refused_without_version_1(rig):
    _, _, drv, queue, _ = rig
    assert drv.probe([queue], features=EVENT_IDX) == ACK | DRV


def test_mmio_subset_of_features_is_accepted(rig):
    device, _, drv, queue, _ = rig
    assert drv.probe([queue], features=VERSION_1) & DOK
    assert device.queues[0].event_idx is False


@pytest.mark.parametrize(
    "sequence",
    [
        [DRV],  # skips ACKNOWLEDGE
        [ACK, ACK | FOK],  # skips DRIVER
        [ACK, ACK | DRV, ACK | DRV | DOK],  # skips FEATURES_OK
        [ACK, ACK | DRV, ACK],  # clears a bit
        [ACK, ACK | DRV | FOK],  # two bits at once
    ],
)
def test_spec_2_1_invalid_status_transitions_are_ignored(rig, sequence):
    _, _, drv, _, _ = rig
    *valid_steps, invalid = sequence
    for value in valid_steps:
        drv.write32(spec.VIRTIO_MMIO_STATUS, value)
    before = drv.read32(spec.VIRTIO_MMIO_STATUS)
    drv.write32(spec.VIRTIO_MMIO_STATUS, invalid)
    assert drv.read32(spec.VIRTIO_MMIO_STATUS) == before


def test_spec_2_1_failed_is_always_accepted(rig):
    _, _, drv, _, _ = rig
    drv.add_status(ACK)
    assert drv.add_status(FAILED) == ACK | FAILED


def test_spec_2_4_reset_returns_everything_to_initial_state(rig):
    device, transport, drv, queue, _ = rig
    drv.probe([queue])
    drv.write32(spec.VIRTIO_MMIO_QUEUE_SEL, 0)
    drv.write32(spec.VIRTIO_MMIO_STATUS, 0)
    assert drv.read32(spec.VIRTIO_MMIO_STATUS) == 0
    assert device.state is DeviceState.INACTIVE
    assert device.acked_features == 0
    assert drv.read32(spec.VIRTIO_MMIO_QUEUE_READY) == 0
    # and the device can be brought up again
    queue2 = MockDriver(transport.memory, 0x8000, 8)
    assert drv.probe([queue2]) == ACK | DRV | FOK | DOK


def test_mmio_queue_registers_only_writable_between_features_ok_and_driver_ok(rig):
    device, _, drv, queue, _ = rig
    drv.add_status(ACK)
    drv.add_status(DRV)
    drv.write32(spec.VIRTIO_MMIO_QUEUE_NUM, 8)  # before FEATURES_OK: ignored
    assert device.queues[0].size == 256
    drv.probe([queue])
    drv.write32(spec.VIRTIO_MMIO_QUEUE_NUM, 8)  # after DRIVER_OK: ignored
    assert device.queues[0].size == 16


def test_mmio_queue_address_halves_combine(rig):
    device, _, drv, _, _ = rig
    drv.add_status(ACK)
    drv.add_status(DRV)
    drv.write_features(VERSION_1)
    drv.add_status(FOK)
    drv.write32(spec.VIRTIO_MMIO_QUEUE_DESC_LOW, 0x89ABC000)
    drv.write32(spec.VIRTIO_MMIO_QUEUE_DESC_HIGH, 0x1)
    assert device.queues[0].desc_table == 0x1_89ABC000


def test_mmio_queue_num_max_is_256_and_zero_for_missing_queue(rig):
    _, _, drv, _, _ = rig
    assert drv.read32(spec.VIRTIO_MMIO_QUEUE_NUM_MAX) == 256
    drv.write32(spec.VIRTIO_MMIO_QUEUE_SEL, 5)
    assert drv.read32(spec.VIRTIO_MMIO_QUEUE_NUM_MAX) == 0


def test_spec_2_1_2_invalid_queue_at_driver_ok_sets_needs_reset_and_config_interrupt(rig, memory):
    device, _, drv, _, line = rig
    bad = MockDriver(memory, 0x1000, 16)
    bad.used_ring = (1 << 20) - 4  # outside RAM
    status = drv.probe([bad])
    assert status & NEEDS_RESET
    assert device.state is DeviceState.INACTIVE
    assert drv.interrupt_status() & spec.VIRTIO_MMIO_INT_CONFIG
    assert line.count == 1


def test_spec_2_1_2_guest_fault_in_queue_breaks_device_until_reset(rig):
    device, _, drv, queue, line = rig
    drv.probe([queue])
    queue.publish_head(200)  # out-of-range head index
    drv.kick(0)
    assert device.broken
    assert drv.read32(spec.VIRTIO_MMIO_STATUS) & NEEDS_RESET
    assert drv.interrupt_status() & spec.VIRTIO_MMIO_INT_CONFIG
    # A broken device ignores further kicks.
    queue.add_chain([readable(DATA, 1)])
    drv.kick(0)
    assert queue.take_used() == []
    drv.write32(spec.VIRTIO_MMIO_STATUS, 0)
    assert not device.broken and drv.read32(spec.VIRTIO_MMIO_STATUS) == 0


def test_mmio_config_space_reads_any_width_and_zero_past_end(rig):
    _, _, drv, _, _ = rig
    assert drv.read_config(0, 4) == b"\x11\x22\x33\x44"
    assert drv.read_config(1, 2) == b"\x22\x33"
    assert drv.read_config(2, 8) == b"\x33\x44" + bytes(6)
    assert drv.read_config(0xE00, 4) == bytes(4)


def test_mmio_register_access_not_4_bytes_is_ignored(rig):
    _, transport, drv, _, _ = rig
    buf = bytearray(b"\xff\xff")
    transport.read(spec.VIRTIO_MMIO_MAGIC_VALUE, memoryview(buf))
    assert buf == bytes(2)
    transport.write(spec.VIRTIO_MMIO_STATUS, b"\x01")
    assert drv.read32(spec.VIRTIO_MMIO_STATUS) == 0


def test_mmio_interrupt_ack_before_driver_ok_is_ignored(rig):
    _, transport, drv, _, _ = rig
    transport.interrupt.trigger_config()
    drv.write32(spec.VIRTIO_MMIO_INTERRUPT_ACK, 0xFF)
    assert drv.interrupt_status() == spec.VIRTIO_MMIO_INT_CONFIG


def test_mmio_config_change_bumps_generation_and_interrupts(rig):
    device, _, drv, queue, line = rig
    drv.probe([queue])
    before = drv.read32(spec.VIRTIO_MMIO_CONFIG_GENERATION)
    device.config_changed()
    assert drv.read32(spec.VIRTIO_MMIO_CONFIG_GENERATION) == before + 1
    assert drv.interrupt_status() == spec.VIRTIO_MMIO_INT_CONFIG
    assert line.count == 1


def test_mmio_driver_features_ignored_after_features_ok(rig):
    device, _, drv, queue, _ = rig
    drv.probe([queue], features=VERSION_1)
    drv.write_features(VERSION_1 | EVENT_IDX)
    assert device.acked_features == VERSION_1


def test_mmio_unknown_register_reads_zero_and_ignores_writes(rig):
    _, _, drv, _, _ = rig
    drv.write32(0x0C0, 1)
    assert drv.read32(0x0C0) == 0
    assert drv.read32(0x028) == 0
