"""Property tests: whatever the guest puts in the rings and whatever the host's tap hands in, the
net device either serves (frames intact) or breaks itself (DEVICE_NEEDS_RESET); nothing escapes."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparkler.devices.virtio import spec
from sparkler.testing.mock_driver import Buffer
from tests.devices.virtio.net.helpers import HDR, MEM_SIZE, RX_BUFS, TX_BUFS, NetRig, frame
from tests.devices.virtio.net.test_device import FC_FEATURES, SIMPLE, FakeMmds

lengths = st.one_of(st.sampled_from([0, 1, HDR, HDR + 14, 1526, 65562, 65563]), st.integers(0, 1 << 17))
addresses = st.one_of(
    st.integers(TX_BUFS, TX_BUFS + 0x40000),
    st.integers(RX_BUFS, RX_BUFS + 0x40000),
    st.sampled_from([MEM_SIZE - 1, MEM_SIZE, 2**64 - 8, 0]),
)
buffers = st.builds(Buffer, addresses, lengths, st.booleans())
chains = st.lists(st.lists(buffers, min_size=1, max_size=4), max_size=6)
raw_descs = st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF), st.integers(0, 300)), max_size=8)
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


@SETTINGS
@given(
    features=st.sampled_from([SIMPLE, FC_FEATURES]),
    rx=chains,
    tx=chains,
    raw=raw_descs,
    avail_jump=st.integers(0, 2**16 - 1),
    host_frames=st.lists(st.binary(max_size=3000), max_size=4),
    mmds=st.booleans(),
)
def test_any_rings_and_frames_never_crash(features, rx, tx, raw, avail_jump, host_frames, mmds):
    r = NetRig(features=features, mmds_stack=FakeMmds() if mmds else None)
    try:
        for bufs in rx:
            r.rx.add_chain(bufs)
        for bufs in tx:
            r.tx.add_chain(bufs)
        for i, (addr, length, flags, nxt) in enumerate(raw):
            r.tx.write_descriptor(200 + i, addr, length, flags, nxt)
            r.tx.publish_head(200 + i)
        if avail_jump % 7 == 0:
            r.rx.set_avail_idx(avail_jump)
        for data in host_frames:
            r.tap.host_send(data)
        r.device.queue_notify(1)
        r.device.queue_notify(0)
        r.pump_tap()
        r.device.process_rate_limiter_event()
        # the device returned no more chains than were published, each with a sane length
        assert len(r.rx.take_used()) <= len(rx) + (avail_jump if avail_jump % 7 == 0 else 0)
        assert len(r.tx.take_used()) <= len(tx) + len(raw)
    finally:
        r.close()


@SETTINGS
@given(payloads=st.lists(st.binary(min_size=0, max_size=2000), min_size=1, max_size=8), split=st.integers(1, 40))
def test_tx_frames_reach_the_tap_byte_for_byte(payloads, split):
    r = NetRig(features=SIMPLE)
    try:
        sent = []
        for p in payloads:
            hdr = struct.pack("<BBHHHHH", 0, 0, 0, 0, 0, 0, 0)
            r.send(frame(p), hdr=hdr, split=min(split, HDR + 14 + len(p) - 1), kick=False)
            sent.append(hdr + frame(p))
        r.device.queue_notify(1)
        assert r.tap.host_recv_all() == sent
    finally:
        r.close()


@SETTINGS
@given(sizes=st.lists(st.integers(HDR, 9000), min_size=1, max_size=6), buf=st.sampled_from([1526, 2048, 4096]))
def test_rx_frames_reach_the_guest_byte_for_byte(sizes, buf):
    r = NetRig(features=FC_FEATURES)
    try:
        r.add_rx(buf, 200 if buf < 4096 else 120)
        sent = []
        for i, n in enumerate(sizes):
            data = bytes([i + 1]) * n
            r.tap.host_send(data)
            sent.append(data)
        r.pump_tap()
        got = r.received()
        assert [g[HDR:] for g in got] == [s[HDR:] for s in sent]
        assert not r.device.broken
        assert spec.VIRTIO_NET_HDR_V1_SIZE == HDR
    finally:
        r.close()
