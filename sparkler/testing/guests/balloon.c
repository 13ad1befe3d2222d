/*
 * probe.balloon=<touch_mib>: a polling virtio-balloon driver for the first balloon on the command line.
 *
 * Touches <touch_mib> MiB of RAM above the image at CPL3 (so the host's RSS grows), then follows the
 * device: whenever num_pages (config offset 0) exceeds the pages it holds it inflates, giving the
 * frames of the touched area back from its top down (chains of 256 le32 PFNs), and when num_pages
 * drops it deflates; each time it writes `actual` and reports "INFO balloon_actual pages=N".
 * With STATS_VQ it posts a statistics buffer at start-up and re-posts a fresh one whenever the
 * device hands the buffer back (total_memory = e820 RAM, available_memory = bytes held,
 * minor_faults = number of buffers sent), reporting "INFO balloon_stats n=...".
 * It finishes after the balloon went up and back to 0 (or probe.balloon_ms, default 60000, passed).
 *
 * probe.balloon_report=1 (FREE_PAGE_REPORTING): once num_pages first becomes non-zero (the test's
 * go signal) the lower half of the touched area is reported free on the reporting queue, in one
 * chain of BL_QSIZE device-writable ranges ("INFO balloon_reported mib=N"); the run then ends when
 * num_pages returns to 0.
 *
 * probe.balloon_bad=1 instead sends malformed requests (PFNs outside RAM, a length that is not a
 * multiple of 4, far too many PFNs, then a buffer outside RAM, which must break only the device) and
 * checks the device keeps answering / asks for a reset.
 */
#include "virtio.h"

#define BL_QSIZE 8
#define BL_PFNS 256
#define VIRTIO_BALLOON_F_STATS_VQ (1ul << 1)
#define VIRTIO_BALLOON_F_DEFLATE_ON_OOM (1ul << 2)
#define VIRTIO_BALLOON_F_FREE_PAGE_REPORTING (1ul << 5)
#define VIRTIO_STATUS_NEEDS_RESET 0x40

extern char __image_end[];

static u8 bl_qmem[4][VQ_MEM_SIZE(BL_QSIZE)] __attribute__((aligned(4096)));
static struct virtio_dev bl_dev;
static struct vq bl_inflate, bl_deflate, bl_stats, bl_report;
static u32 bl_pfns[BL_PFNS] __attribute__((aligned(64)));
static u8 bl_big[64 * 1024] __attribute__((aligned(4096)));

struct bl_stat {
    u16 tag;
    u64 val;
} __attribute__((packed));
static struct bl_stat bl_stat_buf[3] __attribute__((aligned(16)));

static u64 bl_area, bl_area_pages, bl_held, bl_stats_sent, bl_ram_total;

static u64 user_touch_pages(u64 arg)
{
    struct span *sp = (struct span *)arg;
    for (u64 a = sp->addr; a < sp->addr + sp->size; a += 4096)
        *(volatile u64 *)a = a | 1;
    return 0;
}

static u32 bl_target(void) { return virtio_r(&bl_dev, VIRTIO_MMIO_CONFIG); }

/* one chain of n PFNs on q; returns 1 when the device returned it */
static int bl_send(struct vq *q, u32 n)
{
    q->desc[0] = (struct vq_desc){(u64)bl_pfns, n * 4, 0, 0};
    vq_push(q, 0);
    vq_kick(q);
    u32 id, len;
    return vq_wait(q, &id, &len, 200000000ul);
}

static void bl_post_stats(void)
{
    bl_stats_sent++;
    bl_stat_buf[0] = (struct bl_stat){5, bl_ram_total};        /* total_memory */
    bl_stat_buf[1] = (struct bl_stat){6, bl_held * 4096};      /* available_memory */
    bl_stat_buf[2] = (struct bl_stat){3, bl_stats_sent};       /* minor_faults */
    bl_stats.desc[0] = (struct vq_desc){(u64)bl_stat_buf, sizeof(bl_stat_buf), 0, 0};
    vq_push(&bl_stats, 0);
    vq_kick(&bl_stats);
    print("INFO balloon_stats n=%lu total=%lu available=%lu\n", bl_stats_sent, bl_ram_total, bl_held * 4096);
}

static void bl_set_actual(void)
{
    virtio_w(&bl_dev, VIRTIO_MMIO_CONFIG + 4, (u32)bl_held);
    print("INFO balloon_actual pages=%lu\n", bl_held);
}

static int bl_follow(u32 target)
{
    if (target > bl_area_pages)
        target = (u32)bl_area_pages; /* cannot give more than the touched area */
    while (bl_held < target) {
        u32 n = 0;
        while (n < BL_PFNS && bl_held + n < target) {
            bl_pfns[n] = (u32)((bl_area + (bl_area_pages - 1 - (bl_held + n)) * 4096) >> 12);
            n++;
        }
        if (!bl_send(&bl_inflate, n)) {
            fail("balloon_inflate what=timeout held=%lu\n", bl_held);
            return 0;
        }
        bl_held += n;
    }
    while (bl_held > target) {
        u32 n = 0;
        while (n < BL_PFNS && bl_held - n > target) {
            bl_pfns[n] = (u32)((bl_area + (bl_area_pages - bl_held + n) * 4096) >> 12);
            n++;
        }
        if (!bl_send(&bl_deflate, n)) {
            fail("balloon_deflate what=timeout held=%lu\n", bl_held);
            return 0;
        }
        bl_held -= n;
    }
    bl_set_actual();
    return 1;
}

static void bl_bad(void)
{
    u32 id, len;
    /* PFNs outside RAM: the MMIO gap, far above RAM, the largest u32 */
    bl_pfns[0] = 0xc0000;
    bl_pfns[1] = 0xfffff;
    bl_pfns[2] = 0xffffffffu;
    if (bl_send(&bl_inflate, 3))
        print("PASS balloon_bad_pfns\n");
    else
        fail("balloon_bad_pfns what=no_answer\n");
    /* length not a multiple of 4 */
    bl_inflate.desc[0] = (struct vq_desc){(u64)bl_pfns, 6, 0, 0};
    vq_push(&bl_inflate, 0);
    vq_kick(&bl_inflate);
    if (vq_wait(&bl_inflate, &id, &len, 200000000ul))
        print("PASS balloon_bad_len\n");
    else
        fail("balloon_bad_len what=no_answer\n");
    /* 16384 PFNs in one chain (a huge count): refused as malformed; the buffer holds PFN 0 only */
    bl_inflate.desc[0] = (struct vq_desc){(u64)bl_big, sizeof(bl_big), 0, 0};
    vq_push(&bl_inflate, 0);
    vq_kick(&bl_inflate);
    if (vq_wait(&bl_inflate, &id, &len, 200000000ul))
        print("PASS balloon_bad_count\n");
    else
        fail("balloon_bad_count what=no_answer\n");
    /* a buffer outside guest RAM: the device must ask for a reset, the VMM must keep running */
    bl_inflate.desc[0] = (struct vq_desc){0xfff00000000ul, 64, 0, 0};
    vq_push(&bl_inflate, 0);
    vq_kick(&bl_inflate);
    u32 status = 0;
    for (u64 spin = 0; spin < 100000000ul && !(status & VIRTIO_STATUS_NEEDS_RESET); spin++)
        status = virtio_r(&bl_dev, VIRTIO_MMIO_STATUS);
    virtio_w(&bl_dev, VIRTIO_MMIO_STATUS, 0);
    u32 after = virtio_r(&bl_dev, VIRTIO_MMIO_STATUS);
    if ((status & VIRTIO_STATUS_NEEDS_RESET) && after == 0)
        print("PASS balloon_bad_buffer status=0x%x after_reset=0x%x\n", status, after);
    else
        fail("balloon_bad_buffer status=0x%x after_reset=0x%x\n", status, after);
}

static void bl_free_report(int reporting, u64 touch_mib)
{
    if (!reporting) {
        fail("balloon_report what=not_offered\n");
        return;
    }
    u64 limit_ms = cmd_u64_or("balloon_ms", 60000);
    u32 t0 = clock_now();
    while (bl_target() == 0 && ms_since(t0) < limit_ms)
        delay_us(2000);
    u64 half = touch_mib * MIB / 2, piece = half / BL_QSIZE;
    for (u32 i = 0; i < BL_QSIZE; i++) {
        u16 flags = VRING_DESC_F_WRITE | (i + 1 < BL_QSIZE ? VRING_DESC_F_NEXT : 0);
        bl_report.desc[i] = (struct vq_desc){bl_area + i * piece, (u32)piece, flags, (u16)(i + 1)};
    }
    vq_push(&bl_report, 0);
    vq_kick(&bl_report);
    u32 id, len;
    if (!vq_wait(&bl_report, &id, &len, 200000000ul)) {
        fail("balloon_report what=timeout\n");
        return;
    }
    print("INFO balloon_reported mib=%lu\n", half / MIB);
    while (bl_target() != 0 && ms_since(t0) < limit_ms)
        delay_us(2000);
    if (bl_target() == 0)
        print("PASS balloon_report mib=%lu\n", half / MIB);
    else
        fail("balloon_report what=timeout_waiting_for_0\n");
}

static void check_balloon(const char *value)
{
    (void)value;
    u64 touch_mib = 0;
    cmd_u64("balloon", &touch_mib);
    if (!virtio_find(VIRTIO_ID_BALLOON, 0, &bl_dev)) {
        fail("balloon_probe what=no_device\n");
        return;
    }
    u64 wanted = VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_DEFLATE_ON_OOM | VIRTIO_BALLOON_F_FREE_PAGE_REPORTING;
    if (!virtio_negotiate(&bl_dev, wanted, "balloon"))
        return;
    int stats = (bl_dev.features & VIRTIO_BALLOON_F_STATS_VQ) != 0;
    int reporting = (bl_dev.features & VIRTIO_BALLOON_F_FREE_PAGE_REPORTING) != 0;
    /* queues are numbered without the absent ones: inflate, deflate, [stats], [reporting] */
    if (!vq_setup(&bl_dev, 0, &bl_inflate, bl_qmem[0], BL_QSIZE, "balloon") ||
        !vq_setup(&bl_dev, 1, &bl_deflate, bl_qmem[1], BL_QSIZE, "balloon") ||
        (stats && !vq_setup(&bl_dev, 2, &bl_stats, bl_qmem[2], BL_QSIZE, "balloon")) ||
        (reporting && !vq_setup(&bl_dev, 2 + stats, &bl_report, bl_qmem[3], BL_QSIZE, "balloon")) ||
        !virtio_driver_ok(&bl_dev, "balloon"))
        return;
    print("PASS balloon_init features=0x%lx stats=%d reporting=%d target=%u\n", bl_dev.features, stats, reporting,
          bl_target());
    if (cmd_is("balloon_bad", "1")) {
        bl_bad();
        return;
    }

    bl_area = ((u64)__image_end + 4 * MIB - 1) & ~(2 * MIB - 1);
    bl_area_pages = touch_mib * MIB / 4096;
    for (u64 a = 0; a < 4 * GIB; a += 2 * MIB)
        if (e820_ram_contains(a, 2 * MIB))
            bl_ram_total += 2 * MIB;
    if (!e820_ram_contains(bl_area, touch_mib * MIB) || !is_mapped(bl_area, touch_mib * MIB)) {
        fail("balloon_touch what=not_ram start=0x%lx mib=%lu\n", bl_area, touch_mib);
        return;
    }
    struct span sp = {bl_area, touch_mib * MIB};
    call_user(user_touch_pages, (u64)&sp);
    print("INFO balloon_touched mib=%lu start=0x%lx\n", touch_mib, bl_area);
    if (stats)
        bl_post_stats();

    if (cmd_is("balloon_report", "1")) {
        bl_free_report(reporting, touch_mib);
        return;
    }
    u64 limit_ms = cmd_u64_or("balloon_ms", 60000);
    u32 t0 = clock_now();
    int went_up = 0;
    u32 last = 0xffffffffu;
    while (ms_since(t0) < limit_ms) {
        u32 target = bl_target();
        if (target != last) {
            print("INFO balloon_target pages=%u\n", target);
            if (!bl_follow(target))
                return;
            last = target;
            if (bl_held)
                went_up = 1;
            else if (went_up)
                break;
        }
        u32 id, len;
        if (stats && vq_poll(&bl_stats, &id, &len))
            bl_post_stats(); /* the device asked for fresh statistics */
        delay_us(2000);
    }
    if (went_up && bl_held == 0)
        print("PASS balloon held=%lu stats_sent=%lu\n", bl_held, bl_stats_sent);
    else
        fail("balloon what=timeout held=%lu went_up=%d\n", bl_held, went_up);
}
PROBE_TEST("balloon", check_balloon);
