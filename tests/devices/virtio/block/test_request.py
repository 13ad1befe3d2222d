"""virtio-blk request parsing (virtio 1.2 section 5.2.6), without I/O."""

from __future__ import annotations

import struct

import pytest

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.block.request import Rejected, Request, RequestType, parse
from sparkler.devices.virtio.queue import Descriptor, DescriptorChain
from sparkler.testing.fake_memory import guest_memory

R = 0  # readable
W = spec.VRING_DESC_F_WRITE
HDR = 0x1000
CAPACITY = 100  # sectors


@pytest.fixture
def memory():
    mem = guest_memory(1 << 20)
    yield mem
    mem.close()


def chain(*descs):
    return DescriptorChain(7, tuple(Descriptor(a, n, f) for a, n, f in descs))


def put_header(memory, kind, sector=0):
    memory.write(HDR, struct.pack("<IIQ", kind, 0, sector))


def test_request_read_parses_segments_and_status(memory):
    put_header(memory, spec.VIRTIO_BLK_T_IN, 3)
    req = parse(chain((HDR, 16, R), (0x2000, 512, W), (0x3000, 1024, W), (0x4000, 1, W)), memory, CAPACITY)
    assert req == Request(7, RequestType.IN, 3, ((0x2000, 512), (0x3000, 1024)), 0x4000)
    assert req.data_len == 1536 and req.offset == 3 * 512


def test_request_write_needs_readable_data(memory):
    put_header(memory, spec.VIRTIO_BLK_T_OUT)
    assert isinstance(parse(chain((HDR, 16, R), (0x2000, 512, R), (0x4000, 1, W)), memory, CAPACITY), Request)
    bad = parse(chain((HDR, 16, R), (0x2000, 512, W), (0x4000, 1, W)), memory, CAPACITY)
    assert isinstance(bad, Rejected) and bad.status == spec.VIRTIO_BLK_S_IOERR and bad.status_gpa == 0x4000


def test_request_read_with_readable_data_is_ioerr(memory):
    put_header(memory, spec.VIRTIO_BLK_T_IN)
    bad = parse(chain((HDR, 16, R), (0x2000, 512, R), (0x4000, 1, W)), memory, CAPACITY)
    assert isinstance(bad, Rejected) and bad.status == spec.VIRTIO_BLK_S_IOERR


def test_spec_5_2_6_1_unknown_type_is_unsupp(memory):
    put_header(memory, spec.VIRTIO_BLK_T_DISCARD)
    bad = parse(chain((HDR, 16, R), (0x2000, 16, R), (0x4000, 1, W)), memory, CAPACITY)
    assert isinstance(bad, Rejected) and bad.status == spec.VIRTIO_BLK_S_UNSUPP and bad.status_gpa == 0x4000


def test_spec_5_2_6_data_length_not_multiple_of_512_is_ioerr(memory):
    put_header(memory, spec.VIRTIO_BLK_T_IN)
    bad = parse(chain((HDR, 16, R), (0x2000, 500, W), (0x4000, 1, W)), memory, CAPACITY)
    assert isinstance(bad, Rejected) and "multiple" in bad.reason


@pytest.mark.parametrize("sector,sectors,ok", [(99, 1, True), (99, 2, False), (100, 1, False), (2**64 - 1, 1, False)])
def test_spec_5_2_6_1_request_beyond_capacity_is_ioerr(memory, sector, sectors, ok):
    put_header(memory, spec.VIRTIO_BLK_T_IN, sector)
    req = parse(chain((HDR, 16, R), (0x2000, 512 * sectors, W), (0x4000, 1, W)), memory, CAPACITY)
    assert isinstance(req, Request) is ok


def test_request_flush_without_data(memory):
    put_header(memory, spec.VIRTIO_BLK_T_FLUSH)
    req = parse(chain((HDR, 16, R), (0x4000, 1, W)), memory, CAPACITY)
    assert req == Request(7, RequestType.FLUSH, 0, (), 0x4000)


def test_request_read_without_data_is_ioerr(memory):
    put_header(memory, spec.VIRTIO_BLK_T_IN)
    assert isinstance(parse(chain((HDR, 16, R), (0x4000, 1, W)), memory, CAPACITY), Rejected)


def test_request_get_id_needs_20_writable_bytes(memory):
    put_header(memory, spec.VIRTIO_BLK_T_GET_ID)
    assert isinstance(parse(chain((HDR, 16, R), (0x2000, 20, W), (0x4000, 1, W)), memory, CAPACITY), Request)
    assert isinstance(parse(chain((HDR, 16, R), (0x2000, 19, W), (0x4000, 1, W)), memory, CAPACITY), Rejected)
    assert isinstance(parse(chain((HDR, 16, R), (0x2000, 20, R), (0x4000, 1, W)), memory, CAPACITY), Rejected)


def test_request_readonly_status_has_no_status_address(memory):
    put_header(memory, spec.VIRTIO_BLK_T_IN)
    bad = parse(chain((HDR, 16, R), (0x2000, 512, W), (0x4000, 1, R)), memory, CAPACITY)
    assert isinstance(bad, Rejected) and bad.status_gpa is None


def test_request_zero_length_status_has_no_status_address(memory):
    put_header(memory, spec.VIRTIO_BLK_T_FLUSH)
    bad = parse(chain((HDR, 16, R), (0x4000, 0, W)), memory, CAPACITY)
    assert isinstance(bad, Rejected) and bad.status_gpa is None


def test_request_single_descriptor_is_rejected_without_status(memory):
    bad = parse(chain((HDR, 16, W)), memory, CAPACITY)
    assert isinstance(bad, Rejected) and bad.status_gpa is None


@pytest.mark.parametrize("length,flags", [(15, R), (16, W)])
def test_request_bad_header_is_ioerr(memory, length, flags):
    put_header(memory, spec.VIRTIO_BLK_T_IN)
    bad = parse(chain((HDR, length, flags), (0x2000, 512, W), (0x4000, 1, W)), memory, CAPACITY)
    assert isinstance(bad, Rejected) and bad.status == spec.VIRTIO_BLK_S_IOERR and bad.status_gpa == 0x4000
