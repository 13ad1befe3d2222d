"""sparkler.devices.virtio.spec against the installed <linux/virtio_*.h> headers (rule R2)."""

from __future__ import annotations

from sparkler.devices.virtio import spec
from tests.kvm.cheader import Check, c_program, compile_and_run, mismatches

HEADERS = ["linux/virtio_config.h", "linux/virtio_ring.h", "linux/virtio_mmio.h", "linux/virtio_ids.h", "linux/virtio_blk.h", "linux/virtio_net.h"]

# Values of the spec that the headers do not define as macros, checked against C expressions instead.
DERIVED = {
    "VRING_DESC_SIZE": "sizeof(struct vring_desc)",
    "VRING_USED_ELEM_SIZE": "sizeof(struct vring_used_elem)",
    "VIRTIO_BLK_OUTHDR_SIZE": "sizeof(struct virtio_blk_outhdr)",
    "VIRTIO_NET_HDR_V1_SIZE": "sizeof(struct virtio_net_hdr_v1)",
}
NOT_IN_HEADERS = {
    "VIRTIO_MMIO_MAGIC", "VIRTIO_MMIO_VERSION_MODERN", "VIRTIO_MMIO_SIZE", "VIRTQUEUE_MAX_SIZE",
    "SECTOR_SHIFT", "SECTOR_SIZE",
}
# Newer than some installed headers: checked when the header has it.
OPTIONAL = {"VIRTIO_F_NOTIFICATION_DATA"}


def spec_constants() -> dict[str, int]:
    return {k: v for k, v in vars(spec).items() if k.isupper() and isinstance(v, int)}


def test_spec_constants_match_linux_headers(tmp_path):
    checks = []
    for name, value in spec_constants().items():
        if name in NOT_IN_HEADERS:
            continue
        checks.append(Check(name, value, DERIVED.get(name, name)))
    values = compile_and_run(c_program(HEADERS, checks, OPTIONAL), tmp_path)
    assert mismatches(checks, values) == []
    assert len(values) == len(checks)


def test_spec_ring_sizes_match_vring_size_formula(tmp_path):
    # vring_size(num, align) from <linux/virtio_ring.h> for align 4 is desc + avail, padded, + used.
    checks = [
        Check(f"vring_size({n})", _legacy_vring_size(n), f"vring_size({n}, 4)") for n in (1, 16, 256)
    ]
    values = compile_and_run(c_program(HEADERS, checks), tmp_path)
    assert mismatches(checks, values) == []


def _legacy_vring_size(num: int) -> int:
    head = spec.vring_desc_table_size(num) + spec.vring_avail_size(num)
    return ((head + 3) & ~3) + spec.vring_used_size(num)
