"""virtio-blk Sync executor: zero-copy preadv/pwritev, short transfers, errors -> IOERR."""

from __future__ import annotations

import os

import pytest

from sparkler.devices.virtio import spec
from sparkler.devices.virtio.block.io import DiskBackend, _advance
from sparkler.devices.virtio.block.request import Request, RequestType
from sparkler.errors import HostError
from sparkler.testing.fake_memory import guest_memory
from tests.devices.virtio.block.helpers import make_disk


@pytest.fixture
def memory():
    mem = guest_memory(1 << 20)
    yield mem
    mem.close()


def test_io_read_into_guest_memory(tmp_path, memory):
    path = tmp_path / "d.img"
    content = make_disk(path, 8)
    backend = DiskBackend.open(str(path))
    out = backend.execute(Request(0, RequestType.IN, 1, ((0x1000, 512), (0x3000, 512)), 0x5000), memory)
    assert out.status == spec.VIRTIO_BLK_S_OK and out.bytes_to_guest == 1024
    assert memory.read(0x1000, 512) + memory.read(0x3000, 512) == content[512:1536]
    backend.close()


def test_io_file_shrunk_under_device_is_ioerr(tmp_path, memory):
    path = tmp_path / "d.img"
    make_disk(path, 8)
    backend = DiskBackend.open(str(path))
    os.truncate(path, 512)
    out = backend.execute(Request(0, RequestType.IN, 4, ((0x1000, 512),), 0x5000), memory)
    assert out.status == spec.VIRTIO_BLK_S_IOERR
    backend.close()


def test_io_write_on_read_only_file_is_ioerr_without_io(tmp_path, memory):
    path = tmp_path / "d.img"
    content = make_disk(path, 8)
    backend = DiskBackend.open(str(path), read_only=True)
    out = backend.execute(Request(0, RequestType.OUT, 0, ((0x1000, 512),), 0x5000), memory)
    assert out.status == spec.VIRTIO_BLK_S_IOERR
    assert path.read_bytes() == content
    backend.close()


def test_io_host_error_is_ioerr(tmp_path, memory):
    path = tmp_path / "d.img"
    make_disk(path, 8)
    backend = DiskBackend.open(str(path))
    os.close(backend.fd)  # the fd goes bad under the engine
    out = backend.execute(Request(0, RequestType.IN, 0, ((0x1000, 512),), 0x5000), memory)
    assert out.status == spec.VIRTIO_BLK_S_IOERR
    backend.fd = -1


def test_io_get_id_spread_over_segments(tmp_path, memory):
    path = tmp_path / "d.img"
    make_disk(path, 1)
    backend = DiskBackend.open(str(path))
    out = backend.execute(Request(0, RequestType.GET_ID, 0, ((0x1000, 7), (0x2000, 64)), 0x5000), memory)
    assert out.bytes_to_guest == 20
    assert memory.read(0x1000, 7) + memory.read(0x2000, 13) == backend.disk_id
    backend.close()


def test_io_open_missing_file_is_host_error(tmp_path):
    with pytest.raises(HostError, match="Cannot open block device file"):
        DiskBackend.open(str(tmp_path / "missing.img"))


def test_io_advance_drops_consumed_bytes():
    views = [memoryview(b"abc"), memoryview(b"defg"), memoryview(b"h")]
    assert [bytes(v) for v in _advance(views, 4)] == [b"efg", b"h"]
    assert [bytes(v) for v in _advance(views, 3)] == [b"defg", b"h"]
    assert _advance(views, 8) == []
