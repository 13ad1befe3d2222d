/* virtio-mmio discovery, negotiation and a polling split virtqueue for probe drivers. */
#include "virtio.h"

/* parse "<size>[K|M]@0x<addr>:<irq>" (the value of a virtio_mmio.device= token) */
static int parse_mmio_token(const char *p, u64 *addr, u32 *irq)
{
    while (*p && *p != '@' && *p != ' ')
        p++;
    if (*p != '@')
        return 0;
    p++;
    u64 a = 0, i = 0;
    if (!parse_u64(p, &a))
        return 0;
    while (*p && *p != ':' && *p != ' ')
        p++;
    if (*p != ':' || !parse_u64(p + 1, &i))
        return 0;
    *addr = a;
    *irq = (u32)i;
    return 1;
}

int virtio_find(u32 device_id, u32 nth, struct virtio_dev *d)
{
    static const char key[] = "virtio_mmio.device=";
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *tok = p;
        u32 i = 0;
        while (key[i] && tok[i] == key[i])
            i++;
        u64 addr;
        u32 irq;
        if (!key[i] && parse_mmio_token(tok + i, &addr, &irq) && is_mapped(addr, 0x200) &&
            mmio_read32(addr + VIRTIO_MMIO_MAGIC) == 0x74726976 && mmio_read32(addr + VIRTIO_MMIO_DEVICE_ID) == device_id) {
            if (nth == 0) {
                d->base = addr;
                d->irq = irq;
                d->device_id = device_id;
                d->features = 0;
                return 1;
            }
            nth--;
        }
        while (*p && *p != ' ')
            p++;
    }
    return 0;
}

int virtio_negotiate(struct virtio_dev *d, u64 wanted, const char *name)
{
    if (virtio_r(d, VIRTIO_MMIO_VERSION) != 2) {
        fail("%s_probe version=%u\n", name, virtio_r(d, VIRTIO_MMIO_VERSION));
        return 0;
    }
    virtio_w(d, VIRTIO_MMIO_STATUS, 0);
    virtio_w(d, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
    virtio_w(d, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    virtio_w(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    u64 offered = (u64)virtio_r(d, VIRTIO_MMIO_DEVICE_FEATURES) << 32;
    virtio_w(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    offered |= virtio_r(d, VIRTIO_MMIO_DEVICE_FEATURES);
    if (!(offered & VIRTIO_F_VERSION_1)) {
        fail("%s_features no VERSION_1 offered=0x%lx\n", name, offered);
        return 0;
    }
    u64 accept = (offered & wanted) | VIRTIO_F_VERSION_1;
    virtio_w(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    virtio_w(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)(accept >> 32));
    virtio_w(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    virtio_w(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)accept);
    virtio_w(d, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
    if (!(virtio_r(d, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK)) {
        fail("%s_features features_ok refused offered=0x%lx accepted=0x%lx\n", name, offered, accept);
        return 0;
    }
    d->features = accept;
    return 1;
}

int vq_setup(struct virtio_dev *d, u32 index, struct vq *q, void *mem, u16 size, const char *name)
{
    u64 base = (u64)mem;
    if ((base & 4095) || (size & (size - 1)) || size == 0) {
        fail("%s_queue what=bad_setup index=%u size=%u\n", name, index, size);
        return 0;
    }
    virtio_w(d, VIRTIO_MMIO_QUEUE_SEL, index);
    u32 qmax = virtio_r(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
    if (qmax < size) {
        fail("%s_queue index=%u max=%u wanted=%u\n", name, index, qmax, size);
        return 0;
    }
    u64 desc_bytes = ((u64)size * 16 + 4095) & ~4095ul;
    memset(mem, 0, VQ_MEM_SIZE(size));
    q->dev = d;
    q->index = index;
    q->size = size;
    q->last_used = 0;
    q->avail_idx = 0;
    q->desc = (struct vq_desc *)base;
    q->avail = (volatile u16 *)(base + desc_bytes);
    q->used = (volatile u16 *)(base + desc_bytes + 4096);
    virtio_w(d, VIRTIO_MMIO_QUEUE_NUM, size);
    virtio_w(d, VIRTIO_MMIO_QUEUE_DESC, (u32)(u64)q->desc);
    virtio_w(d, VIRTIO_MMIO_QUEUE_DESC + 4, (u32)((u64)q->desc >> 32));
    virtio_w(d, VIRTIO_MMIO_QUEUE_AVAIL, (u32)(u64)q->avail);
    virtio_w(d, VIRTIO_MMIO_QUEUE_AVAIL + 4, (u32)((u64)q->avail >> 32));
    virtio_w(d, VIRTIO_MMIO_QUEUE_USED, (u32)(u64)q->used);
    virtio_w(d, VIRTIO_MMIO_QUEUE_USED + 4, (u32)((u64)q->used >> 32));
    virtio_w(d, VIRTIO_MMIO_QUEUE_READY, 1);
    return 1;
}

int virtio_driver_ok(struct virtio_dev *d, const char *name)
{
    u32 want = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK;
    virtio_w(d, VIRTIO_MMIO_STATUS, want);
    u32 status = virtio_r(d, VIRTIO_MMIO_STATUS);
    if (status != want) {
        fail("%s_init status=0x%x\n", name, status);
        return 0;
    }
    return 1;
}

void vq_push(struct vq *q, u16 head)
{
    q->avail[2 + (q->avail_idx & (q->size - 1))] = head;
    mb();
    q->avail_idx++;
    q->avail[1] = q->avail_idx;
    mb();
}

int vq_poll(struct vq *q, u32 *id, u32 *len)
{
    if (q->used[1] == q->last_used)
        return 0;
    mb();
    const volatile struct vq_used_elem *ring = (const volatile struct vq_used_elem *)(q->used + 2);
    const volatile struct vq_used_elem *e = &ring[q->last_used & (q->size - 1)];
    *id = e->id;
    *len = e->len;
    q->last_used++;
    return 1;
}

int vq_wait(struct vq *q, u32 *id, u32 *len, u64 spins)
{
    for (u64 spin = 0; spin < spins; spin++) {
        if (vq_poll(q, id, len))
            return 1;
        cpu_relax();
    }
    return 0;
}
