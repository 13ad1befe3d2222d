"""Property tests: whatever the guest writes into a virtqueue, the device side either gets a valid
chain or a GuestFault, never another exception, and every chain it gets lies inside guest RAM."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.queue import Queue
from sparkler.errors import GuestFault
from sparkler.testing.fake_memory import guest_memory
from sparkler.testing.mock_driver import MockDriver

MEM_SIZE = 256 << 10
GAP_AT = 128 << 10  # a RAM hole at 128 KiB (16 KiB long) to catch straddling buffers
RING_BASE = 0x1000
MEMORY = guest_memory(MEM_SIZE, gap_at=GAP_AT)

FLAG_BITS = spec.VRING_DESC_F_NEXT | spec.VRING_DESC_F_WRITE | spec.VRING_DESC_F_INDIRECT

addresses = st.one_of(
    st.integers(0, MEM_SIZE + 0x8000),  # mostly inside RAM, sometimes in the hole or past the end
    st.sampled_from([GAP_AT - 1, GAP_AT, MEM_SIZE + 0x4000 - 1, 2**64 - 1, 2**63]),
    st.integers(0, 2**64 - 1),
)
lengths = st.one_of(st.integers(0, 0x2000), st.sampled_from([0xFFFF_FFFF, GAP_AT]), st.integers(0, 2**32 - 1))


def descriptor(size):
    return st.tuples(
        addresses,
        lengths,
        st.one_of(st.integers(0, FLAG_BITS), st.integers(0, 0xFFFF)),
        st.one_of(st.integers(0, size - 1), st.integers(0, 0xFFFF)),
    )


@st.composite
def rings(draw):
    size = draw(st.sampled_from([1, 2, 4, 8, 16]))
    table = draw(st.lists(descriptor(size), min_size=size, max_size=size))
    avail = draw(st.lists(st.one_of(st.integers(0, size - 1), st.integers(0, 0xFFFF)), min_size=size, max_size=size))
    avail_idx = draw(st.one_of(st.integers(0, size), st.integers(0, 0xFFFF)))
    used_event = draw(st.integers(0, 0xFFFF))
    event_idx = draw(st.booleans())
    return size, table, avail, avail_idx, used_event, event_idx


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rings())
def test_queue_arbitrary_rings_yield_valid_chains_or_guest_fault(ring):
    size, table, avail, avail_idx, used_event, event_idx = ring
    driver = MockDriver(MEMORY, RING_BASE, size)
    for i, (addr, length, flags, nxt) in enumerate(table):
        driver.write_descriptor(i, addr, length, flags, nxt)
    for slot, head in enumerate(avail):
        MEMORY.write(driver.avail_ring + 4 + 2 * slot, struct.pack("<H", head))
    driver.set_avail_idx(avail_idx)
    driver.set_used_event(used_event)
    queue = driver.configure(Queue())
    queue.initialize(MEMORY, event_idx=event_idx)
    try:
        for _ in range(2 * size + 1):
            chain = queue.pop_or_enable_notification()
            if chain is None:
                break
            assert 1 <= len(chain) <= size
            assert 0 <= chain.head < size
            for d in chain.descriptors:
                assert MEMORY.contains(d.addr, d.len)
                assert not d.flags & spec.VRING_DESC_F_INDIRECT
            queue.add_used(chain.head, 0)
            queue.prepare_kick()
    except GuestFault:
        pass
    # A well-formed avail.idx (at most size ahead) never yields more than avail_idx chains.
    assert driver.used_idx() <= max(avail_idx, 0) or avail_idx > size
