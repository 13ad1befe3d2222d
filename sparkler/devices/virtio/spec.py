"""Constants of the virtio 1.2 specification, with the Linux UAPI headers' names.

From <linux/virtio_ring.h>, <linux/virtio_mmio.h>, <linux/virtio_ids.h>, <linux/virtio_config.h> and
<linux/virtio_blk.h>, <linux/virtio_net.h>; ``tests/devices/virtio/test_spec_header.py`` compiles them against the installed
headers. Layout sizes of the split virtqueue (spec 2.7) are derived here too, so no other module
does ring arithmetic with magic numbers. Imports nothing.
"""

# --- <linux/virtio_config.h>: device status (spec 2.1) -------------------------------------------
VIRTIO_CONFIG_S_ACKNOWLEDGE = 1
VIRTIO_CONFIG_S_DRIVER = 2
VIRTIO_CONFIG_S_DRIVER_OK = 4
VIRTIO_CONFIG_S_FEATURES_OK = 8
VIRTIO_CONFIG_S_NEEDS_RESET = 0x40
VIRTIO_CONFIG_S_FAILED = 0x80

# --- <linux/virtio_config.h>: reserved feature bits (spec 6) -------------------------------------
VIRTIO_F_NOTIFY_ON_EMPTY = 24
VIRTIO_F_ANY_LAYOUT = 27
VIRTIO_F_VERSION_1 = 32
VIRTIO_F_ACCESS_PLATFORM = 33
VIRTIO_F_RING_PACKED = 34
VIRTIO_F_IN_ORDER = 35
VIRTIO_F_ORDER_PLATFORM = 36
VIRTIO_F_SR_IOV = 37
VIRTIO_F_NOTIFICATION_DATA = 38

# --- <linux/virtio_ring.h>: split virtqueue (spec 2.7) -------------------------------------------
VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_USED_F_NO_NOTIFY = 1
VRING_AVAIL_F_NO_INTERRUPT = 1
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29

VRING_DESC_SIZE = 16  # struct vring_desc { le64 addr; le32 len; le16 flags; le16 next; }
VRING_USED_ELEM_SIZE = 8  # struct vring_used_elem { le32 id; le32 len; }
VRING_DESC_ALIGN_SIZE = 16
VRING_AVAIL_ALIGN_SIZE = 2
VRING_USED_ALIGN_SIZE = 4
VIRTQUEUE_MAX_SIZE = 32768  # spec 2.7: "The maximum Queue Size value is 32768"


def vring_desc_table_size(num: int) -> int:
    return VRING_DESC_SIZE * num


def vring_avail_size(num: int) -> int:
    """flags, idx, ring[num], used_event (spec 2.7 "Queue Part sizes": 6 + 2 * Queue Size)."""
    return 6 + 2 * num


def vring_used_size(num: int) -> int:
    """flags, idx, ring[num], avail_event (spec 2.7: 6 + 8 * Queue Size)."""
    return 6 + VRING_USED_ELEM_SIZE * num


def vring_need_event(event_idx: int, new_idx: int, old: int) -> bool:
    """<linux/virtio_ring.h> vring_need_event(): did [old, new_idx) cross event_idx (mod 2**16)?"""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old) & 0xFFFF)


# --- <linux/virtio_mmio.h>: register offsets (spec 4.2.2) ----------------------------------------
VIRTIO_MMIO_MAGIC_VALUE = 0x000
VIRTIO_MMIO_VERSION = 0x004
VIRTIO_MMIO_DEVICE_ID = 0x008
VIRTIO_MMIO_VENDOR_ID = 0x00C
VIRTIO_MMIO_DEVICE_FEATURES = 0x010
VIRTIO_MMIO_DEVICE_FEATURES_SEL = 0x014
VIRTIO_MMIO_DRIVER_FEATURES = 0x020
VIRTIO_MMIO_DRIVER_FEATURES_SEL = 0x024
VIRTIO_MMIO_QUEUE_SEL = 0x030
VIRTIO_MMIO_QUEUE_NUM_MAX = 0x034
VIRTIO_MMIO_QUEUE_NUM = 0x038
VIRTIO_MMIO_QUEUE_READY = 0x044
VIRTIO_MMIO_QUEUE_NOTIFY = 0x050
VIRTIO_MMIO_INTERRUPT_STATUS = 0x060
VIRTIO_MMIO_INTERRUPT_ACK = 0x064
VIRTIO_MMIO_STATUS = 0x070
VIRTIO_MMIO_QUEUE_DESC_LOW = 0x080
VIRTIO_MMIO_QUEUE_DESC_HIGH = 0x084
VIRTIO_MMIO_QUEUE_AVAIL_LOW = 0x090
VIRTIO_MMIO_QUEUE_AVAIL_HIGH = 0x094
VIRTIO_MMIO_QUEUE_USED_LOW = 0x0A0
VIRTIO_MMIO_QUEUE_USED_HIGH = 0x0A4
VIRTIO_MMIO_CONFIG_GENERATION = 0x0FC
VIRTIO_MMIO_CONFIG = 0x100
VIRTIO_MMIO_INT_VRING = 1 << 0
VIRTIO_MMIO_INT_CONFIG = 1 << 1

VIRTIO_MMIO_MAGIC = 0x74726976  # "virt" little-endian (not a kernel macro; spec 4.2.2)
VIRTIO_MMIO_VERSION_MODERN = 2
VIRTIO_MMIO_SIZE = 0x1000  # one 4 KiB window per device (Firecracker's MMIO_LEN)

# --- <linux/virtio_ids.h> --------------------------------------------------------------------------
VIRTIO_ID_NET = 1
VIRTIO_ID_BLOCK = 2
VIRTIO_ID_CONSOLE = 3
VIRTIO_ID_RNG = 4
VIRTIO_ID_BALLOON = 5
VIRTIO_ID_VSOCK = 19
VIRTIO_ID_MEM = 24
VIRTIO_ID_PMEM = 27

# --- <linux/virtio_blk.h> (spec 5.2) ---------------------------------------------------------------
VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_GEOMETRY = 4
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_TOPOLOGY = 10
VIRTIO_BLK_F_MQ = 12
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14

VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13

VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

VIRTIO_BLK_ID_BYTES = 20
SECTOR_SHIFT = 9
SECTOR_SIZE = 1 << SECTOR_SHIFT  # virtio-blk sectors are always 512 bytes (spec 5.2.6)
VIRTIO_BLK_OUTHDR_SIZE = 16  # struct virtio_blk_outhdr { le32 type; le32 ioprio; le64 sector; }

# --- <linux/virtio_net.h> (spec 5.1) ---------------------------------------------------------------
VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 2
VIRTIO_NET_F_MTU = 3
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_GUEST_ECN = 9
VIRTIO_NET_F_GUEST_UFO = 10
VIRTIO_NET_F_HOST_TSO4 = 11
VIRTIO_NET_F_HOST_TSO6 = 12
VIRTIO_NET_F_HOST_ECN = 13
VIRTIO_NET_F_HOST_UFO = 14
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_STATUS = 16
VIRTIO_NET_F_CTRL_VQ = 17
VIRTIO_NET_F_MQ = 22
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_ECN = 0x80
VIRTIO_NET_HDR_V1_SIZE = 12  # struct virtio_net_hdr_v1 { u8 flags, gso_type; le16 hdr_len, gso_size,
#                                  csum_start, csum_offset, num_buffers; }
