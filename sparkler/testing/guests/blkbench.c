/*
 * probe.blk_bench=read|write|randread|randwrite: drive the first virtio-blk device as fast as this
 * guest can, for benchmarks and the rate-limiter accuracy test.
 *
 *   probe.blk_bs=<bytes>     request size, a multiple of 512 (default 131072)
 *   probe.blk_n=<count>      requests in total (default 1024)
 *   probe.blk_depth=<count>  requests in flight, 1..64 (default 32)
 *   probe.blk_event_idx=0    do not negotiate VIRTIO_RING_F_EVENT_IDX (kick after every batch)
 *   probe.blk_mark=<k>       also report when the k-th request completed (mark_us), for rates
 *                            measured after a limiter's initial burst
 *
 * Guest CPL0 code is emulated on PVM hosts (~1 us per instruction), CPL3 runs natively. So the
 * queue, the descriptor chains (header, data, status: 3 descriptors per request, built once) and
 * the data buffers are set up at CPL0, and the whole submit/complete loop runs at CPL3 through
 * call_user(): it polls the used ring, refills each completed chain with the next sector and
 * re-offers it, and kicks (a QueueNotify write, the VMM's ioeventfd; pages are user pages here)
 * only when the device asks for it (EVENT_IDX avail_event) -- so the queue stays full and one kick
 * covers many requests. Interrupts are suppressed (used_event kept far ahead / NO_INTERRUPT).
 *
 * Reports, timed with the LAPIC clock at CPL0 around the loop:
 *   INFO blk_bench_start mode=... bs=... n=... depth=...
 *   PASS blk_bench mode=... n=... bs=... bytes=... us=... kicks=... errors=... event_idx=...
 * (FAIL with the same fields when a request failed or the loop timed out).
 *
 * probe.blk_bad=oob|loop|avail: offer one malformed chain (a buffer outside guest RAM, a descriptor
 * loop, or an avail.idx far ahead), kick, and report the device status the VMM then shows
 * (DEVICE_NEEDS_RESET, 0x40): "PASS blk_bad kind=... status=0x..".
 */
#include "virtio.h"

#define BB_QSIZE 256
#define BB_MAX_DEPTH 64
#define BB_BUF_BASE (32ul * MIB) /* data buffers live here (the probe image sits near 1 MiB) */
#define VIRTIO_RING_F_EVENT_IDX (1ul << 29)
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VIRTIO_STATUS_DEVICE_NEEDS_RESET 0x40

static u8 bb_qmem[VQ_MEM_SIZE(BB_QSIZE)] __attribute__((aligned(4096), section(".noinit")));
struct bb_hdr {
    u32 type, reserved;
    u64 sector;
};
static struct bb_hdr bb_hdrs[BB_MAX_DEPTH] __attribute__((aligned(64), section(".noinit")));
static u8 bb_status[BB_MAX_DEPTH] __attribute__((aligned(64), section(".noinit")));
static struct virtio_dev bb_dev;
static struct vq bb_q;

struct bb_job {
    struct vq *q;
    u64 n, depth, bs_sectors, span_sectors, random, event_idx, type;
    u64 mark;
    u32 t0, mark_ticks;
    u64 kicks, errors, done, timed_out;
};

static inline u64 bb_sector(struct bb_job *j, u64 i)
{
    if (!j->random)
        return (i * j->bs_sectors) % j->span_sectors;
    u64 x = i * 0x9e3779b97f4a7c15ul; /* a multiplicative hash: scattered, repeatable */
    x ^= x >> 29;
    return ((x % (j->span_sectors / j->bs_sectors)) * j->bs_sectors);
}

/* CPL3: the whole submit/complete loop. */
static u64 bb_user_loop(u64 arg)
{
    struct bb_job *j = (struct bb_job *)arg;
    struct vq *q = j->q;
    volatile u16 *avail = q->avail, *used = q->used;
    volatile u16 *used_event = &avail[2 + q->size];
    volatile u16 *avail_event = (volatile u16 *)((volatile u8 *)used + 4 + 8 * (u64)q->size);
    const volatile struct vq_used_elem *ring = (const volatile struct vq_used_elem *)(used + 2);
    u16 mask = (u16)(q->size - 1);
    u64 submitted = 0, done = 0, idle = 0;

    if (j->event_idx)
        *used_event = (u16)(q->last_used + 0x8000);
    else
        avail[0] = VRING_AVAIL_F_NO_INTERRUPT;
    for (u64 s = 0; s < j->depth && submitted < j->n; s++, submitted++) {
        bb_hdrs[s].sector = bb_sector(j, submitted);
        bb_status[s] = 0xff;
        avail[2 + (q->avail_idx & mask)] = (u16)(s * 3);
        q->avail_idx++;
    }
    mb();
    avail[1] = q->avail_idx;
    mb();
    virtio_w(q->dev, VIRTIO_MMIO_QUEUE_NOTIFY, q->index);
    j->kicks++;

    while (done < j->n) {
        u16 used_idx = used[1];
        if (used_idx == q->last_used) {
            if (++idle > 4000000000ul) {
                j->timed_out = 1;
                break;
            }
            cpu_relax();
            continue;
        }
        idle = 0;
        mb();
        u16 old_avail = q->avail_idx;
        while (q->last_used != used_idx) {
            u32 head = ring[q->last_used & mask].id;
            q->last_used++;
            u32 s = head / 3;
            if (s >= j->depth || bb_status[s] != 0)
                j->errors++;
            done++;
            if (done == j->mark)
                j->mark_ticks = clock_now() - j->t0; /* the LAPIC page is a user page here */
            if (submitted < j->n) {
                bb_hdrs[s].sector = bb_sector(j, submitted);
                bb_status[s] = 0xff;
                avail[2 + (q->avail_idx & mask)] = (u16)(s * 3);
                q->avail_idx++;
                submitted++;
            }
        }
        if (j->event_idx)
            *used_event = (u16)(q->last_used + 0x8000);
        if (q->avail_idx != old_avail) {
            mb();
            avail[1] = q->avail_idx;
            mb();
            int kick = 1;
            if (j->event_idx) {
                /* vring_need_event(avail_event, new, old) */
                u16 ev = *avail_event;
                kick = (u16)(q->avail_idx - ev - 1) < (u16)(q->avail_idx - old_avail);
            }
            if (kick) {
                virtio_w(q->dev, VIRTIO_MMIO_QUEUE_NOTIFY, q->index);
                j->kicks++;
            }
        }
    }
    j->done = done;
    return done;
}

static int bb_open(u64 want_features, const char *name)
{
    if (!virtio_find(VIRTIO_ID_BLOCK, 0, &bb_dev)) {
        fail("%s what=no_device\n", name);
        return 0;
    }
    if (!virtio_negotiate(&bb_dev, want_features, name))
        return 0;
    if (!vq_setup(&bb_dev, 0, &bb_q, bb_qmem, BB_QSIZE, name) || !virtio_driver_ok(&bb_dev, name))
        return 0;
    return 1;
}

static void run_blk_bench(const char *value)
{
    (void)value;
    static const char *const modes[] = {"read", "write", "randread", "randwrite"};
    const char *mode = 0;
    for (u32 i = 0; i < 4; i++)
        if (cmd_is("blk_bench", modes[i]))
            mode = modes[i];
    struct bb_job job;
    memset(&job, 0, sizeof(job));
    int write = cmd_is("blk_bench", "write") || cmd_is("blk_bench", "randwrite");
    job.random = cmd_is("blk_bench", "randread") || cmd_is("blk_bench", "randwrite");
    if (!mode) {
        fail("blk_bench what=bad_mode\n");
        return;
    }
    u64 bs = cmd_u64_or("blk_bs", 131072);
    job.n = cmd_u64_or("blk_n", 1024);
    job.depth = cmd_u64_or("blk_depth", 32);
    job.mark = cmd_u64_or("blk_mark", 0);
    if (bs == 0 || bs % 512 || bs > 4 * MIB || job.depth == 0 || job.depth > BB_MAX_DEPTH || job.n == 0) {
        fail("blk_bench what=bad_args bs=%lu depth=%lu n=%lu\n", bs, job.depth, job.n);
        return;
    }
    if (!e820_ram_contains(BB_BUF_BASE, job.depth * bs) || !is_mapped(BB_BUF_BASE, job.depth * bs)) {
        fail("blk_bench what=no_room bytes=%lu\n", job.depth * bs);
        return;
    }
    u64 want = cmd_is("blk_event_idx", "0") ? 0 : VIRTIO_RING_F_EVENT_IDX;
    if (!bb_open(want, "blk_bench"))
        return;
    job.event_idx = (bb_dev.features & VIRTIO_RING_F_EVENT_IDX) != 0;
    u64 capacity = virtio_r(&bb_dev, 0x100) | ((u64)virtio_r(&bb_dev, 0x104) << 32);
    job.bs_sectors = bs / 512;
    job.span_sectors = capacity - capacity % job.bs_sectors;
    if (job.span_sectors < job.bs_sectors) {
        fail("blk_bench what=disk_too_small capacity=%lu bs=%lu\n", capacity, bs);
        return;
    }
    job.q = &bb_q;
    job.type = write ? 1 : 0;
    /* request s: descriptors 3s (header), 3s+1 (data), 3s+2 (status); built once, reused */
    for (u64 s = 0; s < job.depth; s++) {
        bb_hdrs[s].type = (u32)job.type;
        bb_hdrs[s].reserved = 0;
        u16 d = (u16)(s * 3);
        bb_q.desc[d] = (struct vq_desc){(u64)&bb_hdrs[s], 16, VRING_DESC_F_NEXT, (u16)(d + 1)};
        bb_q.desc[d + 1] = (struct vq_desc){BB_BUF_BASE + s * bs, (u32)bs,
                                            (u16)(VRING_DESC_F_NEXT | (write ? 0 : VRING_DESC_F_WRITE)), (u16)(d + 2)};
        bb_q.desc[d + 2] = (struct vq_desc){(u64)&bb_status[s], 1, VRING_DESC_F_WRITE, 0};
    }
    print("INFO blk_bench_start mode=%s bs=%lu n=%lu depth=%lu\n", mode, bs, job.n, job.depth);
    u32 t0 = clock_now();
    job.t0 = t0;
    call_user(bb_user_loop, (u64)&job);
    u32 ticks = clock_now() - t0;
    u64 us = (u64)ticks * 1000 / LAPIC_TICKS_PER_MS;
    u64 mark_us = (u64)job.mark_ticks * 1000 / LAPIC_TICKS_PER_MS;
    int ok = !job.errors && !job.timed_out && job.done == job.n;
    print("%s blk_bench mode=%s n=%lu bs=%lu bytes=%lu us=%lu kicks=%lu errors=%lu event_idx=%lu timed_out=%lu "
          "mark=%lu mark_us=%lu\n",
          ok ? "PASS" : "FAIL", mode, job.done, bs, job.done * bs, us, job.kicks, job.errors, job.event_idx,
          job.timed_out, job.mark, mark_us);
    if (!ok)
        fail("blk_bench_summary errors=%lu\n", job.errors);
}
PROBE_TEST("blk_bench", run_blk_bench);

/* probe.blk_bad=oob|loop|avail: one malformed offer; the VMM must mark the device broken and live on */
static void run_blk_bad(const char *value)
{
    (void)value;
    static const char *const kinds[] = {"oob", "loop", "avail"};
    const char *kind = "?";
    for (u32 i = 0; i < 3; i++)
        if (cmd_is("blk_bad", kinds[i]))
            kind = kinds[i];
    if (!bb_open(0, "blk_bad"))
        return;
    bb_hdrs[0] = (struct bb_hdr){0, 0, 0};
    bb_status[0] = 0xff;
    if (cmd_is("blk_bad", "oob")) {
        /* a data buffer far beyond guest RAM (in the 64-bit hole) */
        bb_q.desc[0] = (struct vq_desc){(u64)&bb_hdrs[0], 16, VRING_DESC_F_NEXT, 1};
        bb_q.desc[1] = (struct vq_desc){0x7f0000000000ul, 4096, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2};
        bb_q.desc[2] = (struct vq_desc){(u64)&bb_status[0], 1, VRING_DESC_F_WRITE, 0};
        vq_push(&bb_q, 0);
    } else if (cmd_is("blk_bad", "loop")) {
        bb_q.desc[0] = (struct vq_desc){(u64)&bb_hdrs[0], 16, VRING_DESC_F_NEXT, 1};
        bb_q.desc[1] = (struct vq_desc){(u64)&bb_status[0], 1, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 0};
        vq_push(&bb_q, 0);
    } else if (cmd_is("blk_bad", "avail")) {
        bb_q.avail_idx = 1000; /* 1000 entries "available" in a 256-entry ring */
        bb_q.avail[1] = bb_q.avail_idx;
        mb();
    } else {
        fail("blk_bad what=bad_kind\n");
        return;
    }
    vq_kick(&bb_q);
    u32 status = 0;
    for (u64 spin = 0; spin < 2000000ul; spin++) {
        status = virtio_r(&bb_dev, VIRTIO_MMIO_STATUS);
        if (status & VIRTIO_STATUS_DEVICE_NEEDS_RESET)
            break;
        cpu_relax();
    }
    u32 isr = virtio_r(&bb_dev, VIRTIO_MMIO_INTERRUPT_STATUS);
    if (status & VIRTIO_STATUS_DEVICE_NEEDS_RESET)
        print("PASS blk_bad kind=%s status=0x%x isr=%u guest_status=0x%x\n", kind, status, isr, bb_status[0]);
    else
        fail("blk_bad kind=%s status=0x%x isr=%u\n", kind, status, isr);
}
PROBE_TEST("blk_bad", run_blk_bad);
