"""Property: whatever a hostile guest puts in the vsock queues, the VMM does not crash.

Every chain is either served, counted as a bad packet, or breaks the device (DEVICE_NEEDS_RESET,
for ring corruption the queue detects); no other exception escapes, and per-connection buffering
stays within the credit we granted.
"""

from __future__ import annotations

import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparkler.devices.virtio.vsock import packet as P
from sparkler.devices.virtio.vsock.connection import CONN_TX_BUF_SIZE
from sparkler.devices.virtio.vsock.device import RX_QUEUE, TX_QUEUE
from sparkler.testing.mock_driver import Buffer
from tests.devices.virtio.vsock.helpers import GUEST_CID, HOST_CID, MEM_SIZE, VsockRig

ports = st.sampled_from([0, 1, 52, 1234, 0xFFFF_FFFF, 1 << 30])
headers = st.builds(
    P.Header,
    src_cid=st.sampled_from([GUEST_CID, GUEST_CID, 0, 2, 1 << 40]),
    dst_cid=st.sampled_from([HOST_CID, HOST_CID, 3, 0xFFFF_FFFF]),
    src_port=ports,
    dst_port=ports,
    len=st.sampled_from([0, 1, 44, 4096, 65536, 65537, 0xFFFF_FFFF]),
    type=st.sampled_from([1, 1, 2, 0, 0xFFFF]),
    op=st.integers(0, 9),
    flags=st.integers(0, 0xFFFF_FFFF),
    buf_alloc=st.sampled_from([0, 1, 4096, 0xFFFF_FFFF]),
    fwd_cnt=st.sampled_from([0, 1, 0xFFFF_FFFF]),
)
buffers = st.builds(
    Buffer,
    addr=st.sampled_from([0x900000, 0x900000 + 40, MEM_SIZE - 10, MEM_SIZE + 0x1000, 0]),
    length=st.sampled_from([0, 1, 43, 44, 100, 70000, 1 << 31]),
    writable=st.booleans(),
)
actions = st.one_of(
    st.tuples(st.just("packet"), headers, st.binary(max_size=64)),
    st.tuples(st.just("chain"), st.sampled_from([RX_QUEUE, TX_QUEUE]), st.lists(buffers, min_size=1, max_size=4)),
    st.tuples(st.just("rx"), st.integers(1, 4)),
    st.tuples(st.just("avail_idx"), st.sampled_from([RX_QUEUE, TX_QUEUE]), st.integers(0, 0xFFFF)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(actions, min_size=1, max_size=12))
def test_hostile_guest_never_crashes_the_vmm(script):
    with tempfile.TemporaryDirectory() as d:
        rig = VsockRig(f"{d}/v.sock")
        try:
            for action in script:
                if rig.device.broken:
                    break
                match action:
                    case ("packet", header, payload):
                        rig.memory.write(0x900000, header.pack() + payload)
                        rig.send_raw([Buffer(0x900000, P.HDR_SIZE + len(payload))])
                    case ("chain", queue, bufs):
                        rig.queues[queue].add_chain(bufs)
                        rig.mmio.kick(queue)
                    case ("rx", count):
                        rig.post_rx(count)
                    case ("avail_idx", queue, value):
                        rig.queues[queue].set_avail_idx(value)
                        rig.mmio.kick(queue)
                rig.pump(0.002)
                for conn in rig.device.muxer.conns.values():
                    assert len(conn.tx_buf) <= CONN_TX_BUF_SIZE
        finally:
            rig.close()
