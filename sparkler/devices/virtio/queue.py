"""The split virtqueue (virtio 1.2 section 2.7), sans-I/O.

A queue is three areas of guest RAM the driver allocates and the device only reads or writes
through :class:`~sparkler.memory.GuestMemory` views:

* the **descriptor table**: ``size`` 16-byte ``vring_desc {addr, len, flags, next}`` entries;
* the **available ring** (driver area): ``flags, idx, ring[size], used_event``;
* the **used ring** (device area): ``flags, idx, ring[size] of {id, len}, avail_event``.

The driver publishes a descriptor chain by writing its head index into ``avail.ring[idx % size]``
and then incrementing ``avail.idx``; the device pops heads in order (``next_avail``), walks each
chain, and returns it with ``add_used(head, written_len)``.

Everything here is under the guest's control, so :meth:`Queue.pop` validates it all before any
device sees a chain: each descriptor index is ``< size``, a chain has at most ``size`` descriptors
(this also catches loops), ``VRING_DESC_F_INDIRECT`` is refused (the device never offers
``VIRTIO_RING_F_INDIRECT_DESC``, as Firecracker), each buffer lies wholly inside one guest RAM
region, the total length of a chain fits in 32 bits, and ``avail.idx`` is never more than ``size``
entries ahead of the device (Firecracker's ``InvalidAvailIdx``). Any violation raises
:class:`~sparkler.errors.GuestFault`; the queue raises nothing else for anything the guest wrote.
The device that owns the queue then marks itself broken (``DEVICE_NEEDS_RESET``).

Notification suppression (spec 2.7.7, 2.7.10): without ``VIRTIO_RING_F_EVENT_IDX`` the device
honours ``VRING_AVAIL_F_NO_INTERRUPT``; with it, ``used_event`` decides whether a batch of used
entries needs an interrupt (:meth:`Queue.prepare_kick`) and the device publishes ``avail_event`` when
its ring is empty (:meth:`Queue.try_enable_notification`) so the driver kicks only when needed.

Ring indexes are shared with a driver running concurrently on another CPU, so every 16-bit ring
field (``avail.idx``, ``used.idx``, the event indexes, ring entries) is read and written with one
2-byte access through a native ``'H'`` memoryview: ``struct``'s little-endian (``'<H'``) codecs move
one byte at a time, and a driver polling ``used.idx`` while it went from 0x00ff to 0x0100 could see
0x01ff (and we could read a half-updated ``avail.idx`` as far ahead). Virtio rings are little-endian,
like every host KVM on x86 runs on.

The queue knows nothing of devices, eventfds, threads or KVM; it receives the memory object in
:meth:`Queue.initialize` when the device is activated.
"""

from __future__ import annotations

import struct
import sys
import threading
from dataclasses import dataclass
from typing import NamedTuple

from sparkler.devices.virtio import spec
from sparkler.errors import GuestFault
from sparkler.memory import GuestMemory

FIRECRACKER_QUEUE_MAX_SIZE = 256  # every Firecracker queue offers QueueNumMax 256

_DESC = struct.Struct("<QIHH")
_USED_ELEM = struct.Struct("<II")
_MAX_CHAIN_BYTES = 1 << 32  # spec 2.7.5: a chain is at most 2**32 bytes long in total

_fence_lock = threading.Lock()

if sys.byteorder != "little":  # pragma: no cover - x86 only
    raise ImportError("the virtqueue reads little-endian ring fields with native 16-bit accesses")


def full_barrier() -> None:
    """A full memory barrier between our ring stores and the loads that follow them.

    x86 may reorder a store with a later load (store buffer). CPython has no fence primitive, but
    acquiring a lock is an atomic read-modify-write (a ``lock``-prefixed instruction on x86),
    which orders all earlier stores before all later loads -- Firecracker's ``fence(SeqCst)``.
    """
    with _fence_lock:
        pass


class Descriptor(NamedTuple):
    """One validated buffer of a chain: ``len`` bytes at guest address ``addr``.

    A NamedTuple (immutable, and about 3x cheaper to build than a frozen dataclass: one is built
    per buffer of every request on the VMM thread)."""

    addr: int
    len: int
    flags: int

    @property
    def is_write_only(self) -> bool:
        return bool(self.flags & spec.VRING_DESC_F_WRITE)


@dataclass(frozen=True, slots=True)
class DescriptorChain:
    """A validated chain: its head index (to return with add_used) and its buffers in order."""

    head: int
    descriptors: tuple[Descriptor, ...]

    def readable(self) -> tuple[Descriptor, ...]:
        return tuple(d for d in self.descriptors if not d.is_write_only)

    def writable(self) -> tuple[Descriptor, ...]:
        return tuple(d for d in self.descriptors if d.is_write_only)

    def __len__(self) -> int:
        return len(self.descriptors)


class Queue:
    """One split virtqueue: the registers the transport sets, plus the device's ring cursors."""

    def __init__(self, max_size: int = FIRECRACKER_QUEUE_MAX_SIZE) -> None:
        if not 0 < max_size <= spec.VIRTQUEUE_MAX_SIZE or max_size & (max_size - 1):
            raise ValueError(f"queue max size {max_size} is not a power of two in 1..32768")
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        """Back to the state after a device reset (spec 2.4): not ready, no addresses."""
        # Registers written by the driver through the transport.
        self.size = self.max_size
        self.ready = False
        self.desc_table = 0
        self.avail_ring = 0
        self.used_ring = 0
        # Device-side state, valid once initialize() succeeded.
        self.next_avail = 0
        self.next_used = 0
        self.num_added = 0
        self.event_idx = False
        self._desc: memoryview | None = None
        self._avail: memoryview | None = None
        self._used: memoryview | None = None
        # the same two areas as arrays of u16, for single 2-byte loads and stores (see module doc)
        self._avail16: memoryview | None = None
        self._used16: memoryview | None = None
        self._bounds: tuple[tuple[int, int], ...] = ()  # guest RAM regions as (start, end)
        self._memory: GuestMemory | None = None

    # --- configuration ----------------------------------------------------------------------------
    def size_is_valid(self) -> bool:
        """spec 2.7 + 4.2.2: a non-zero power of two no larger than QueueNumMax."""
        return 0 < self.size <= self.max_size and not self.size & (self.size - 1)

    def check(self, memory: GuestMemory) -> None:
        """Raise GuestFault unless the driver configured this queue completely and correctly."""
        if not self.ready:
            raise GuestFault("virtqueue is not ready")
        if not self.size_is_valid():
            raise GuestFault(f"virtqueue size {self.size} is invalid (max {self.max_size}, power of two)")
        parts = (
            ("descriptor table", self.desc_table, spec.vring_desc_table_size(self.size), spec.VRING_DESC_ALIGN_SIZE),
            ("available ring", self.avail_ring, spec.vring_avail_size(self.size), spec.VRING_AVAIL_ALIGN_SIZE),
            ("used ring", self.used_ring, spec.vring_used_size(self.size), spec.VRING_USED_ALIGN_SIZE),
        )
        for name, gpa, length, align in parts:
            if gpa % align:
                raise GuestFault(f"virtqueue {name} at {gpa:#x} is not {align}-byte aligned")
            if not memory.contains(gpa, length):
                raise GuestFault(f"virtqueue {name} at {gpa:#x}+{length:#x} is outside guest RAM")

    def is_valid(self, memory: GuestMemory) -> bool:
        try:
            self.check(memory)
        except GuestFault:
            return False
        return True

    def initialize(self, memory: GuestMemory, *, event_idx: bool = False) -> None:
        """Validate the configuration and map the three areas (GuestFault if invalid)."""
        self.check(memory)
        self._memory = memory
        self.event_idx = event_idx
        self._desc = memory.slice(self.desc_table, spec.vring_desc_table_size(self.size))
        self._avail = memory.slice(self.avail_ring, spec.vring_avail_size(self.size))
        self._used = memory.slice(self.used_ring, spec.vring_used_size(self.size))
        self._bounds = tuple((r.gpa, r.gpa + r.size) for r in memory.regions)
        self._avail16 = self._avail.cast("B").cast("H")
        self._used16 = self._used.cast("B").cast("H")
        self.next_avail = 0
        self.next_used = 0
        self.num_added = 0

    @property
    def initialized(self) -> bool:
        return self._memory is not None

    def _areas(self) -> tuple[GuestMemory, memoryview, memoryview, memoryview]:
        if self._memory is None or self._desc is None or self._avail is None or self._used is None:
            raise RuntimeError("virtqueue used before initialize()")
        return self._memory, self._desc, self._avail, self._used

    # --- driver area ------------------------------------------------------------------------------
    def _avail_u16(self) -> memoryview:
        if self._avail16 is None:
            raise RuntimeError("virtqueue used before initialize()")
        return self._avail16

    def _used_u16(self) -> memoryview:
        if self._used16 is None:
            raise RuntimeError("virtqueue used before initialize()")
        return self._used16

    def avail_idx(self) -> int:
        return self._avail_u16()[1]

    def avail_flags(self) -> int:
        return self._avail_u16()[0]

    def used_event(self) -> int:
        return self._avail_u16()[2 + self.size]

    def pending(self) -> int:
        """How many heads the driver has made available that the device has not popped.

        GuestFault when ``avail.idx`` is more than ``size`` ahead: a driver never offers an entry
        twice, so such an index is garbage and trusting it would loop over stale heads.
        """
        count = (self.avail_idx() - self.next_avail) & 0xFFFF
        if count > self.size:
            raise GuestFault(
                f"virtqueue avail.idx is {count} entries ahead of the device (queue size {self.size})"
            )
        return count

    def is_empty(self) -> bool:
        return self.pending() == 0

    def pop(self) -> DescriptorChain | None:
        """The next available chain, validated; None when the ring is empty."""
        if self.pending() == 0:
            return None
        head = self._avail_u16()[2 + self.next_avail % self.size]
        self.next_avail = (self.next_avail + 1) & 0xFFFF
        return self._read_chain(head)

    def undo_pop(self) -> None:
        """Give the last popped head back (the device could not serve it yet, e.g. throttled)."""
        self.next_avail = (self.next_avail - 1) & 0xFFFF

    def pop_or_enable_notification(self) -> DescriptorChain | None:
        """pop(), but when the ring is empty re-enable driver notifications (EVENT_IDX) first.

        With EVENT_IDX the device publishes ``avail_event`` and then re-checks the ring, so a
        chain the driver added in between is not left without a kick (spec 2.7.10).
        """
        if self.event_idx and self.try_enable_notification():
            return None
        return self.pop()

    def _read_chain(self, head: int) -> DescriptorChain:
        desc_table = self._desc
        if desc_table is None:
            raise RuntimeError("virtqueue used before initialize()")
        bounds = self._bounds
        size = self.size
        unpack = _DESC.unpack_from
        descriptors: list[Descriptor] = []
        total = 0
        index = head
        while True:
            if index >= size:
                raise GuestFault(f"virtqueue descriptor index {index} is out of range (queue size {size})")
            if len(descriptors) >= size:
                raise GuestFault(f"virtqueue chain from head {head} is longer than the queue (loop?)")
            addr, length, flags, next_index = unpack(desc_table, 16 * index)
            if flags & spec.VRING_DESC_F_INDIRECT:
                raise GuestFault("virtqueue indirect descriptor, but VIRTIO_RING_F_INDIRECT_DESC is not offered")
            # inside one guest RAM region (GuestMemory.contains, inlined: this runs per buffer)
            end = addr + length
            for start, stop in bounds:
                if start <= addr and end <= stop:
                    break
            else:
                raise GuestFault(f"virtqueue descriptor {index} buffer {addr:#x}+{length:#x} is outside guest RAM")
            total += length
            if total > _MAX_CHAIN_BYTES:
                raise GuestFault(f"virtqueue chain from head {head} is longer than 2**32 bytes")
            descriptors.append(Descriptor(addr, length, flags))
            if not flags & spec.VRING_DESC_F_NEXT:
                return DescriptorChain(head, tuple(descriptors))
            index = next_index

    # --- device area ------------------------------------------------------------------------------
    def add_used(self, head: int, length: int) -> None:
        """Return chain ``head`` to the driver with ``length`` bytes written into its buffers."""
        if not 0 <= head < self.size:
            raise ValueError(f"used head {head} out of range")  # a device bug, never the guest's
        _, _, _, used = self._areas()
        slot = self.next_used % self.size
        _USED_ELEM.pack_into(used, 4 + spec.VRING_USED_ELEM_SIZE * slot, head, length)
        # x86 keeps stores in program order, so the element is visible before the index.
        self.next_used = (self.next_used + 1) & 0xFFFF
        self._used_u16()[1] = self.next_used  # one 2-byte store
        self.num_added += 1

    def set_avail_event(self, value: int) -> None:
        self._used_u16()[2 + (spec.VRING_USED_ELEM_SIZE // 2) * self.size] = value & 0xFFFF

    def try_enable_notification(self) -> bool:
        """Ask the driver to kick on its next chain; True when the ring is (still) empty.

        Without EVENT_IDX the driver always kicks (we never set VRING_USED_F_NO_NOTIFY), so this
        only reports emptiness. With it, ``avail_event = next_avail`` is published and the ring is
        re-read after a full barrier, closing the race with a driver adding a chain meanwhile.
        """
        if not self.event_idx:
            return self.pending() == 0
        if self.pending() != 0:
            return False
        self.set_avail_event(self.next_avail)
        full_barrier()
        return self.pending() == 0

    def prepare_kick(self) -> bool:
        """Whether the used entries added since the last call need an interrupt (spec 2.7.7.2)."""
        added = self.num_added
        self.num_added = 0
        if not self.event_idx:
            return added > 0 and not self.avail_flags() & spec.VRING_AVAIL_F_NO_INTERRUPT
        # Our used-ring stores must be visible before we read the driver's used_event.
        full_barrier()
        new = self.next_used
        old = (new - added) & 0xFFFF
        return added > 0 and (added >= 0x10000 or spec.vring_need_event(self.used_event(), new, old))
