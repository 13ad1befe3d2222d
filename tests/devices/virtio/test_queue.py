"""Split virtqueue (virtio 1.2 section 2.7): the device side, played against MockDriver.

Tests that pin a spec rule are named after the clause: ``test_spec_2_7_5_...`` is section 2.7.5
(the virtqueue descriptor table), 2.7.6 the available ring, 2.7.7 used buffer notification
suppression, 2.7.8 the used ring, 2.7.10 available buffer notification suppression.
"""

from __future__ import annotations

import pytest

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.queue import Descriptor, Queue
from sparkler.errors import GuestFault
from sparkler.testing.fake_memory import guest_memory
from sparkler.testing.mock_driver import MockDriver, readable, writable

RING_BASE = 0x1000
DATA = 0x10000  # buffers live from here on
MEM_SIZE = 1 << 20


@pytest.fixture
def memory():
    mem = guest_memory(MEM_SIZE)
    yield mem
    mem.close()


def make(memory, size=16, event_idx=False):
    driver = MockDriver(memory, RING_BASE, size)
    queue = driver.configure(Queue(256))
    queue.initialize(memory, event_idx=event_idx)
    return driver, queue


def test_queue_empty_ring_pops_nothing(memory):
    _, queue = make(memory)
    assert queue.pop() is None


def test_queue_pop_returns_chain_in_order_with_directions(memory):
    driver, queue = make(memory)
    head = driver.add_chain([readable(DATA, 16), readable(DATA + 16, 512), writable(DATA + 1024, 1)])
    chain = queue.pop()
    assert chain is not None
    assert chain.head == head
    assert chain.descriptors == (
        Descriptor(DATA, 16, spec.VRING_DESC_F_NEXT),
        Descriptor(DATA + 16, 512, spec.VRING_DESC_F_NEXT),
        Descriptor(DATA + 1024, 1, spec.VRING_DESC_F_WRITE),
    )
    assert [d.addr for d in chain.readable()] == [DATA, DATA + 16]
    assert [d.addr for d in chain.writable()] == [DATA + 1024]
    assert queue.pop() is None


def test_queue_add_used_is_seen_by_driver(memory):
    driver, queue = make(memory)
    head = driver.add_chain([writable(DATA, 64)])
    chain = queue.pop()
    queue.add_used(chain.head, 64)
    assert driver.take_used() == [(head, 64)]
    assert driver.used_idx() == 1


def test_queue_undo_pop_returns_the_same_chain(memory):
    driver, queue = make(memory)
    driver.add_chain([readable(DATA, 8)])
    first = queue.pop()
    queue.undo_pop()
    assert queue.pop() == first


def test_spec_2_7_6_avail_idx_wraps_at_2_pow_16(memory):
    driver, queue = make(memory, size=4)
    for _ in range(70000 // 4):  # many laps of the 16-bit indices
        for _ in range(4):
            driver.add_chain([readable(DATA, 4)])
        for _ in range(4):
            queue.add_used(queue.pop().head, 0)
        assert queue.pop() is None
    assert driver.used_idx() == (70000 // 4 * 4) & 0xFFFF


def test_spec_2_7_6_avail_idx_more_than_size_ahead_is_guest_fault(memory):
    driver, queue = make(memory, size=8)
    driver.set_avail_idx(9)
    with pytest.raises(GuestFault, match="ahead"):
        queue.pop()


def test_spec_2_7_6_avail_idx_exactly_size_ahead_is_fine(memory):
    driver, queue = make(memory, size=8)
    for _ in range(8):
        driver.add_chain([readable(DATA, 1)])
    assert sum(1 for _ in iter(queue.pop, None)) == 8


def test_spec_2_7_5_head_index_out_of_range_is_guest_fault(memory):
    driver, queue = make(memory, size=8)
    driver.publish_head(8)
    with pytest.raises(GuestFault, match="out of range"):
        queue.pop()


def test_spec_2_7_5_next_index_out_of_range_is_guest_fault(memory):
    driver, queue = make(memory, size=8)
    driver.write_descriptor(0, DATA, 4, spec.VRING_DESC_F_NEXT, 200)
    driver.publish_head(0)
    with pytest.raises(GuestFault, match="out of range"):
        queue.pop()


def test_spec_2_7_5_descriptor_loop_is_guest_fault(memory):
    driver, queue = make(memory, size=8)
    driver.write_descriptor(0, DATA, 4, spec.VRING_DESC_F_NEXT, 1)
    driver.write_descriptor(1, DATA, 4, spec.VRING_DESC_F_NEXT, 0)
    driver.publish_head(0)
    with pytest.raises(GuestFault, match="longer than the queue"):
        queue.pop()


def test_spec_2_7_5_chain_of_exactly_queue_size_is_fine(memory):
    driver, queue = make(memory, size=8)
    driver.add_chain([readable(DATA + i, 1) for i in range(8)])
    assert len(queue.pop()) == 8


def test_spec_2_7_5_3_indirect_descriptor_without_feature_is_guest_fault(memory):
    driver, queue = make(memory)
    driver.write_descriptor(0, DATA, 16, spec.VRING_DESC_F_INDIRECT)
    driver.publish_head(0)
    with pytest.raises(GuestFault, match="indirect"):
        queue.pop()


@pytest.mark.parametrize(
    "addr,length",
    [
        (MEM_SIZE - 4, 8),  # runs off the end of RAM
        (MEM_SIZE, 1),  # starts past RAM
        (2**64 - 1, 2),  # wraps around the address space
    ],
)
def test_spec_2_7_5_buffer_outside_guest_ram_is_guest_fault(memory, addr, length):
    driver, queue = make(memory)
    driver.add_chain([readable(addr, length)])
    with pytest.raises(GuestFault, match="outside guest RAM"):
        queue.pop()


def test_queue_buffer_straddling_a_ram_hole_is_guest_fault():
    memory = guest_memory(MEM_SIZE, gap_at=0x80000)
    driver = MockDriver(memory, RING_BASE, 16)
    queue = driver.configure(Queue())
    queue.initialize(memory)
    driver.add_chain([readable(0x80000 - 8, 16)])
    with pytest.raises(GuestFault):
        queue.pop()
    memory.close()


def test_spec_2_7_5_chain_longer_than_4_gib_is_guest_fault():
    big = 512 << 20  # MAP_NORESERVE: untouched guest RAM costs nothing
    memory = guest_memory(big)
    driver = MockDriver(memory, RING_BASE, 16)
    queue = driver.configure(Queue())
    queue.initialize(memory)
    driver.add_chain([readable(0, big)] * 8)  # exactly 4 GiB: allowed
    assert queue.pop() is not None
    driver.add_chain([readable(0, big)] * 8 + [readable(0, 1)])  # one byte more
    with pytest.raises(GuestFault, match="2\\*\\*32"):
        queue.pop()
    memory.close()


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("ready", False, "not ready"),
        ("size", 0, "size"),
        ("size", 12, "size"),
        ("size", 512, "size"),
        ("desc_table", RING_BASE + 8, "aligned"),
        ("avail_ring", RING_BASE + 16 * 16 + 1, "aligned"),
        ("used_ring", RING_BASE + 0x802, "aligned"),
        ("desc_table", MEM_SIZE - 16, "outside guest RAM"),
        ("used_ring", MEM_SIZE - 8, "outside guest RAM"),
    ],
)
def test_spec_4_2_3_2_invalid_queue_configuration_is_refused(memory, field, value, message):
    driver = MockDriver(memory, RING_BASE, 16)
    queue = driver.configure(Queue(256))
    setattr(queue, field, value)
    assert not queue.is_valid(memory)
    with pytest.raises(GuestFault, match=message):
        queue.initialize(memory)


def test_queue_max_size_must_be_power_of_two():
    with pytest.raises(ValueError):
        Queue(100)


def test_spec_2_7_7_2_no_interrupt_flag_suppresses_notification(memory):
    driver, queue = make(memory)
    driver.add_chain([readable(DATA, 1)])
    queue.add_used(queue.pop().head, 0)
    driver.set_avail_flags(spec.VRING_AVAIL_F_NO_INTERRUPT)
    assert queue.prepare_kick() is False


def test_spec_2_7_7_2_without_event_idx_every_batch_notifies(memory):
    driver, queue = make(memory)
    driver.add_chain([readable(DATA, 1)])
    queue.add_used(queue.pop().head, 0)
    assert queue.prepare_kick() is True
    assert queue.prepare_kick() is False  # nothing new added


def test_spec_2_7_7_2_event_idx_notifies_when_used_event_is_crossed(memory):
    driver, queue = make(memory, event_idx=True)
    driver.set_used_event(2)  # "interrupt me when used.idx passes 2", i.e. after the 3rd entry
    for _ in range(3):
        driver.add_chain([readable(DATA, 1)])
    queue.add_used(queue.pop().head, 0)
    queue.add_used(queue.pop().head, 0)
    assert queue.prepare_kick() is False  # used idx 0 -> 2 does not cross event 2
    queue.add_used(queue.pop().head, 0)
    assert queue.prepare_kick() is True  # 2 -> 3 crosses it


def test_spec_2_7_7_2_event_idx_ignores_no_interrupt_flag(memory):
    driver, queue = make(memory, event_idx=True)
    driver.set_avail_flags(spec.VRING_AVAIL_F_NO_INTERRUPT)
    driver.set_used_event(0)
    driver.add_chain([readable(DATA, 1)])
    queue.add_used(queue.pop().head, 0)
    assert queue.prepare_kick() is True


def test_spec_2_7_10_event_idx_empty_ring_publishes_avail_event(memory):
    driver, queue = make(memory, event_idx=True)
    driver.add_chain([readable(DATA, 1)])
    driver.add_chain([readable(DATA, 1)])
    assert queue.pop_or_enable_notification() is not None
    assert queue.pop_or_enable_notification() is not None
    assert queue.pop_or_enable_notification() is None
    assert driver.avail_event() == 2  # "kick me when you add entry 2"


def test_spec_2_7_10_event_idx_chain_added_during_enable_is_not_lost(memory):
    driver, queue = make(memory, event_idx=True)
    assert queue.try_enable_notification() is True
    driver.add_chain([readable(DATA, 1)])
    assert queue.try_enable_notification() is False
    assert queue.pop_or_enable_notification() is not None


def test_spec_vring_need_event_matches_kernel_formula():
    # vring_need_event(event, new, old) = (u16)(new - event - 1) < (u16)(new - old)
    assert spec.vring_need_event(5, 6, 5) is True
    assert spec.vring_need_event(5, 5, 4) is False
    assert spec.vring_need_event(0xFFFF, 1, 0xFFFE) is True  # wraps


def test_queue_reset_forgets_configuration(memory):
    _, queue = make(memory)
    queue.reset()
    assert not queue.ready and queue.desc_table == 0 and not queue.initialized
