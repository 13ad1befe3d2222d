/* virtio-mmio (version 2) for probe drivers: discovery from the command line, feature negotiation and
 * a polling split virtqueue. Interrupts are not used: completion is polled on the used ring. */
#ifndef SPARKLER_PROBE_VIRTIO_H
#define SPARKLER_PROBE_VIRTIO_H
#include "probe.h"

/* register offsets (virtio 1.2, 4.2.2) */
#define VIRTIO_MMIO_MAGIC 0x000
#define VIRTIO_MMIO_VERSION 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC 0x080
#define VIRTIO_MMIO_QUEUE_AVAIL 0x090
#define VIRTIO_MMIO_QUEUE_USED 0x0a0
#define VIRTIO_MMIO_CONFIG_GENERATION 0x0fc
#define VIRTIO_MMIO_CONFIG 0x100

#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_FAILED 0x80

#define VIRTIO_F_VERSION_1 (1ul << 32)

#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_RNG 4
#define VIRTIO_ID_BALLOON 5
#define VIRTIO_ID_VSOCK 19

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4

struct virtio_dev {
    u64 base;
    u32 irq;
    u32 device_id;
    u64 features; /* accepted by virtio_negotiate */
};

struct vq_desc {
    u64 addr;
    u32 len;
    u16 flags, next;
};
struct vq_used_elem {
    u32 id, len;
};

struct vq {
    struct virtio_dev *dev;
    u32 index;
    u16 size;          /* power of two */
    u16 last_used;     /* next used-ring index the driver reads */
    u16 avail_idx;     /* driver's copy of avail->idx */
    struct vq_desc *desc;
    volatile u16 *avail; /* flags, idx, ring[size], used_event */
    volatile u16 *used;  /* flags, idx, then struct vq_used_elem ring[size], avail_event */
};

static inline u32 virtio_r(const struct virtio_dev *d, u32 off) { return mmio_read32(d->base + off); }
static inline void virtio_w(const struct virtio_dev *d, u32 off, u32 v) { mmio_write32(d->base + off, v); }

/* The nth (0-based) device of the given type among the command line's virtio_mmio.device= entries.
 * Returns 1 and fills *d when found. */
int virtio_find(u32 device_id, u32 nth, struct virtio_dev *d);

/* Reset, ACKNOWLEDGE|DRIVER, offer `wanted & device features` (VERSION_1 always), FEATURES_OK.
 * Returns 1 on success (d->features set), 0 after reporting a failure under `name`. */
int virtio_negotiate(struct virtio_dev *d, u64 wanted, const char *name);

/* Bytes of memory a queue of `size` entries needs (descriptors, avail and used rings, 4 KiB aligned
 * parts); `mem` passed to vq_setup must be that large and 4096-aligned. */
#define VQ_MEM_SIZE(size)                                                                              \
    ((((u64)(size) * 16ul + 4095ul) & ~4095ul) + 4096ul + (((u64)(size) * 8ul + 6ul + 4095ul) & ~4095ul))
int vq_setup(struct virtio_dev *d, u32 index, struct vq *q, void *mem, u16 size, const char *name);

/* DRIVER_OK; returns 1 when the device accepted it. */
int virtio_driver_ok(struct virtio_dev *d, const char *name);

/* Make descriptor chain `head` available (does not notify). */
void vq_push(struct vq *q, u16 head);
/* QueueNotify with the queue index (the VMM's ioeventfd). */
static inline void vq_kick(struct vq *q) { virtio_w(q->dev, VIRTIO_MMIO_QUEUE_NOTIFY, q->index); }
/* Consume one used element if there is one: returns 1 and fills id/len. */
int vq_poll(struct vq *q, u32 *id, u32 *len);
/* vq_poll until an element arrives or `spins` pause loops pass; returns 0 on timeout. */
int vq_wait(struct vq *q, u32 *id, u32 *len, u64 spins);

#endif
