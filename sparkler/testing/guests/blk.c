/*
 * probe.blk=rw|ro: a polling virtio-blk driver for the first virtio-blk device on the command line.
 * One 8-entry split queue; QueueNotify goes through the VMM's ioeventfd and completion is polled on
 * the used ring (no interrupts). probe.blk_sector=N picks the sector; probe.blk_resize=1 then waits
 * for a config change (the test PATCHes the drive).
 */
#include "virtio.h"

#define BLK_QSIZE 8
#define VIRTIO_BLK_F_RO (1ul << 5)
#define VIRTIO_BLK_F_FLUSH (1ul << 9)
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8

static u8 blk_qmem[VQ_MEM_SIZE(BLK_QSIZE)] __attribute__((aligned(4096)));
static struct virtio_dev blk_dev;
static struct vq blk_q;
static struct { u32 type, reserved; u64 sector; } blk_hdr __attribute__((aligned(16)));
static u8 blk_status __attribute__((aligned(16)));
static u8 blk_wbuf[512] __attribute__((aligned(512)));
static u8 blk_rbuf[512] __attribute__((aligned(512)));

/* One request; returns the status byte (0xff: no completion in time) and the used length. */
static u32 vblk_request(u32 type, u64 sector, u8 *buf, u32 len, u32 *used_len)
{
    blk_hdr.type = type;
    blk_hdr.reserved = 0;
    blk_hdr.sector = sector;
    blk_status = 0xff;
    u16 n = 0;
    blk_q.desc[n] = (struct vq_desc){(u64)&blk_hdr, 16, VRING_DESC_F_NEXT, (u16)(n + 1)};
    n++;
    if (len) {
        u16 fl = VRING_DESC_F_NEXT | ((type == VIRTIO_BLK_T_OUT) ? 0 : VRING_DESC_F_WRITE);
        blk_q.desc[n] = (struct vq_desc){(u64)buf, len, fl, (u16)(n + 1)};
        n++;
    }
    blk_q.desc[n] = (struct vq_desc){(u64)&blk_status, 1, VRING_DESC_F_WRITE, 0};
    vq_push(&blk_q, 0);
    vq_kick(&blk_q);
    u32 id;
    if (vq_wait(&blk_q, &id, used_len, 200000000ul))
        return *(volatile u8 *)&blk_status;
    *used_len = 0;
    return 0xff;
}

static u64 blk_capacity(void) { return virtio_r(&blk_dev, 0x100) | ((u64)virtio_r(&blk_dev, 0x104) << 32); }

static void check_blk(const char *mode)
{
    int read_only = cmd_is("blk", "ro");
    if (!read_only && !cmd_is("blk", "rw")) {
        fail("blk what=bad_mode value=%s\n", mode);
        return;
    }
    if (!virtio_find(VIRTIO_ID_BLOCK, 0, &blk_dev)) {
        fail("blk_probe what=no_device\n");
        return;
    }
    /* FLUSH and RO only: no EVENT_IDX, no indirect descriptors */
    if (!virtio_negotiate(&blk_dev, VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_RO, "blk"))
        return;
    if (!vq_setup(&blk_dev, 0, &blk_q, blk_qmem, BLK_QSIZE, "blk") || !virtio_driver_ok(&blk_dev, "blk"))
        return;
    u32 lo = (u32)blk_dev.features;
    u64 capacity = blk_capacity();
    print("PASS blk_init capacity=%lu features=0x%x ro=%u flush=%u\n", capacity, lo, (lo >> 5) & 1,
          (lo >> 9) & 1);

    u64 sector = cmd_u64_or("blk_sector", 2);
    u32 used, st;
    for (u32 i = 0; i < 512; i++)
        blk_wbuf[i] = (u8)(i * 7 + 0x5a);
    st = vblk_request(VIRTIO_BLK_T_OUT, sector, blk_wbuf, 512, &used);
    if (read_only) {
        if (st == 1)
            print("PASS blk_ro_write status=%u\n", st);
        else
            fail("blk_ro_write status=%u\n", st);
    } else if (st == 0 && used == 1) {
        print("PASS blk_write sector=%lu\n", sector);
    } else {
        fail("blk_write status=%u used=%u\n", st, used);
    }
    memset(blk_rbuf, 0, sizeof(blk_rbuf));
    st = vblk_request(VIRTIO_BLK_T_IN, sector, blk_rbuf, 512, &used);
    u32 diff = 0;
    for (u32 i = 0; i < 512; i++)
        diff += blk_rbuf[i] != blk_wbuf[i];
    if (st != 0 || used != 513)
        fail("blk_read status=%u used=%u\n", st, used);
    else if (!read_only && diff)
        fail("blk_read mismatches=%u\n", diff);
    else
        print("PASS blk_read sector=%lu first=0x%x mismatches=%u\n", sector, blk_rbuf[0], diff);
    if (lo & VIRTIO_BLK_F_FLUSH) {
        st = vblk_request(VIRTIO_BLK_T_FLUSH, 0, 0, 0, &used);
        if (st == 0)
            print("PASS blk_flush\n");
        else
            fail("blk_flush status=%u\n", st);
    }
    memset(blk_rbuf, 0, sizeof(blk_rbuf));
    st = vblk_request(VIRTIO_BLK_T_GET_ID, 0, blk_rbuf, 20, &used);
    blk_rbuf[20] = 0;
    if (st == 0 && used == 21)
        print("PASS blk_id id=%s\n", (const char *)blk_rbuf);
    else
        fail("blk_id status=%u used=%u\n", st, used);
    st = vblk_request(VIRTIO_BLK_T_IN, capacity, blk_rbuf, 512, &used);
    if (st == 1)
        print("PASS blk_range status=%u\n", st);
    else
        fail("blk_range status=%u\n", st);
    if (cmd_is("blk_resize", "1")) {
        /* The test PATCHes the drive now; the device bumps ConfigGeneration and raises a config
         * interrupt (InterruptStatus bit 1). */
        u32 gen = virtio_r(&blk_dev, VIRTIO_MMIO_CONFIG_GENERATION);
        print("INFO blk_waiting generation=%u\n", gen);
        u64 spin = 0;
        while (virtio_r(&blk_dev, VIRTIO_MMIO_CONFIG_GENERATION) == gen && spin++ < 2000000000ul)
            cpu_relax();
        u32 isr = virtio_r(&blk_dev, VIRTIO_MMIO_INTERRUPT_STATUS);
        virtio_w(&blk_dev, VIRTIO_MMIO_INTERRUPT_ACK, isr);
        u64 cap2 = blk_capacity();
        if (virtio_r(&blk_dev, VIRTIO_MMIO_CONFIG_GENERATION) != gen && (isr & 2))
            print("PASS blk_resize capacity=%lu isr=%u\n", cap2, isr);
        else
            fail("blk_resize capacity=%lu isr=%u\n", cap2, isr);
    }
}
PROBE_TEST("blk", check_blk);
