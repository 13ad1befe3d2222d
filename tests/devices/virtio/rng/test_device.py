"""virtio-rng through the virtio-mmio transport, with real guest memory and /dev/urandom."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.mmio import MmioTransport
from sparkler.devices.virtio.rng.device import MAX_ENTROPY_BYTES, EntropyDevice
from sparkler.ratelimit import RateLimiter
from sparkler.testing.fake_memory import guest_memory
from sparkler.testing.mock_driver import MmioDriver, MockDriver, readable, writable
from tests.devices.virtio.helpers import counting_irq

RING = 0x1000
DATA = 0x100000


class Rig:
    def __init__(self, rate_limiter=None, source=None) -> None:
        self.memory = guest_memory(4 << 20)
        self.device = EntropyDevice(rate_limiter, source)
        self.irq, self.line = counting_irq()
        self.transport = MmioTransport(self.device, self.memory, self.irq)
        self.mmio = MmioDriver(self.transport)
        self.queue = MockDriver(self.memory, RING, 256)
        assert self.mmio.probe([self.queue]) & spec.VIRTIO_CONFIG_S_DRIVER_OK

    def request(self, buffers) -> list[tuple[int, int]]:
        self.queue.add_chain(buffers)
        self.mmio.kick(0)
        return self.queue.take_used()

    def close(self) -> None:
        self.device.close()
        self.memory.close()


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def test_rng_offers_version_1_only_and_has_no_config(rig):
    assert rig.mmio.device_features() == 1 << spec.VIRTIO_F_VERSION_1
    assert rig.mmio.read32(spec.VIRTIO_MMIO_DEVICE_ID) == spec.VIRTIO_ID_RNG
    assert rig.mmio.read_config(0, 8) == bytes(8)


def test_rng_fills_writable_buffers_with_random_bytes(rig):
    used = rig.request([writable(DATA, 4096), writable(DATA + 8192, 100)])
    assert used == [(0, 4196)]
    first, second = rig.memory.read(DATA, 4096), rig.memory.read(DATA + 8192, 100)
    assert len(set(first)) > 200 and first != bytes(4096)  # not constant: 4096 random bytes
    assert second != bytes(100)
    assert rig.memory.read(DATA + 4096, 4096) == bytes(4096)  # nothing outside the buffers
    assert rig.line.count == 1
    stats = rig.device.statistics()
    assert stats.entropy_bytes == 4196 and stats.entropy_event_count == 1


def test_rng_two_requests_differ(rig):
    rig.request([writable(DATA, 64)])
    a = rig.memory.read(DATA, 64)
    rig.request([writable(DATA, 64)])
    assert rig.memory.read(DATA, 64) != a


def test_rng_caps_a_request_at_64_kib(rig):
    used = rig.request([writable(DATA, MAX_ENTROPY_BYTES + 4096)])
    assert used == [(0, MAX_ENTROPY_BYTES)]
    assert rig.memory.read(DATA + MAX_ENTROPY_BYTES, 4096) == bytes(4096)


def test_rng_readable_buffer_is_refused_without_breaking_the_device(rig):
    rig.memory.write(DATA, b"\x11" * 16)
    used = rig.request([readable(DATA, 16)])
    assert used == [(0, 0)]
    assert rig.memory.read(DATA, 16) == b"\x11" * 16
    assert rig.device.statistics().entropy_event_fails == 1
    assert not rig.device.broken
    assert rig.request([writable(DATA, 8)]) == [(1, 8)]


def test_rng_zero_length_request(rig):
    assert rig.request([writable(DATA, 0)]) == [(0, 0)]


def test_rng_buffer_outside_ram_breaks_the_device_not_the_vmm(rig):
    rig.queue.add_chain([writable(64 << 20, 16)])
    rig.mmio.kick(0)
    assert rig.device.broken
    assert rig.mmio.read32(spec.VIRTIO_MMIO_STATUS) & spec.VIRTIO_CONFIG_S_NEEDS_RESET
    assert rig.device.statistics().entropy_event_fails == 1


class FailingSource:
    def fill(self, views):
        raise OSError(5, "EIO")

    def close(self):
        pass


def test_rng_host_failure_returns_zero_bytes():
    r = Rig(source=FailingSource())
    assert r.request([writable(DATA, 32)]) == [(0, 0)]
    assert r.device.statistics().host_rng_fails == 1
    r.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now


def test_rng_rate_limiter_blocks_then_resumes_on_timer():
    clock = Clock()
    limiter = RateLimiter.from_limits(bandwidth=(1000, 0, 100), clock=clock)  # 1000 B per 100 ms
    r = Rig(rate_limiter=limiter)
    assert r.request([writable(DATA, 600)]) == [(0, 600)]
    assert r.request([writable(DATA, 600)]) == []  # 400 left: throttled, chain stays queued
    assert r.device.timer_deadline_ns() is not None
    assert r.device.statistics().entropy_rate_limiter_throttled == 1
    clock.now += 100_000_000
    r.device.process_rate_limiter_event()
    assert r.queue.take_used() == [(1, 600)]
    stats = r.device.statistics()
    assert stats.rate_limiter_event_count == 1 and stats.entropy_event_count == 2
    r.close()


def test_rng_ops_limiter_refunds_nothing_it_did_not_take():
    clock = Clock()
    limiter = RateLimiter.from_limits(bandwidth=(100, 0, 1000), ops=(10, 0, 1000), clock=clock)
    r = Rig(rate_limiter=limiter)
    assert r.request([writable(DATA, 50)]) == [(0, 50)]
    assert r.request([writable(DATA, 80)]) == []  # bytes refused: the op goes back
    assert limiter.ops.budget == 9
    r.close()


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(st.lists(st.tuples(st.integers(DATA, 0x3F_FFFF), st.integers(0, 70_000), st.booleans()), min_size=1, max_size=4))
def test_rng_random_chains_never_escape(chain):
    """Any chain (buffers above the ring): a used entry with a sane length or a broken device."""
    r = Rig()
    try:
        buffers = [writable(a, n) if w else readable(a, n) for a, n, w in chain]
        r.queue.add_chain(buffers)
        r.mmio.kick(0)
        used = r.queue.take_used()
        if r.device.broken:
            assert used == []
        else:
            (head, length), = used
            total = sum(n for _, n, _ in chain)
            assert length == (0 if not all(w for *_, w in chain) else min(total, MAX_ENTROPY_BYTES))
    finally:
        r.close()


def test_rng_getrandom_source_fills_like_urandom():
    from sparkler.devices.virtio.rng.device import GetrandomSource, default_source

    r = Rig(source=GetrandomSource())
    assert r.request([writable(DATA, 3000), writable(DATA + 8192, 5000)]) == [(0, 8000)]
    assert r.memory.read(DATA, 3000) != bytes(3000) and r.memory.read(DATA + 8192, 5000) != bytes(5000)
    r.close()
    source = default_source()
    assert hasattr(source, "fd")  # /dev/urandom exists here
    source.close()
