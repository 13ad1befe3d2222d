/*
 * probe.rng=<bytes>: a polling virtio-rng driver for the first entropy device on the command line.
 * Sends probe.rng_count=N requests (default 4) of <bytes> each (split over two descriptors), checks
 * each used length (min(bytes, 64 KiB)) and that the bytes are neither all zero nor constant nor a
 * repeat of the previous request (the checks run at CPL3), and reports the elapsed time so a test
 * can compare it with a configured rate limit (probe.rng_marks=1: one "INFO rng_mark n= us=" line per
 * completed request, microseconds since the first request).
 */
#include "virtio.h"

#define RNG_QSIZE 8
#define RNG_MAX_REQUEST (64ul * KIB)
#define RNG_BUF_SIZE (RNG_MAX_REQUEST + 64ul * KIB)

static u8 rng_qmem[VQ_MEM_SIZE(RNG_QSIZE)] __attribute__((aligned(4096)));
static u8 rng_buf[RNG_BUF_SIZE] __attribute__((aligned(4096)));
static struct virtio_dev rng_dev;
static struct vq rng_q;

struct rng_check {
    u64 addr, size;
    u64 zeros, same_as_first, hash;
};

/* CPL3: count zero bytes and bytes equal to the first one, FNV-1a of the span */
static u64 user_rng_check(u64 arg)
{
    struct rng_check *c = (struct rng_check *)arg;
    const volatile u8 *p = (const volatile u8 *)c->addr;
    u64 zeros = 0, same = 0;
    u32 h = 0x811c9dc5u;
    for (u64 i = 0; i < c->size; i++) {
        u8 b = p[i];
        zeros += b == 0;
        same += b == p[0];
        h ^= b;
        h *= 0x01000193u;
    }
    c->zeros = zeros;
    c->same_as_first = same;
    c->hash = h;
    return 0;
}

/* CPL3: zero the buffer (so stale bytes from an earlier request cannot pass the checks) */
static u64 user_zero(u64 arg)
{
    struct span *sp = (struct span *)arg;
    volatile u64 *p = (volatile u64 *)sp->addr;
    for (u64 i = 0; i < sp->size / 8; i++)
        p[i] = 0;
    return 0;
}

static void check_rng(const char *value)
{
    (void)value;
    u64 size = 4096, count = cmd_u64_or("rng_count", 4);
    int marks = cmd_is("rng_marks", "1");
    cmd_u64("rng", &size);
    if (size == 0 || size > RNG_BUF_SIZE) {
        fail("rng what=bad_size size=%lu\n", size);
        return;
    }
    if (!virtio_find(VIRTIO_ID_RNG, 0, &rng_dev)) {
        fail("rng_probe what=no_device\n");
        return;
    }
    if (!virtio_negotiate(&rng_dev, 0, "rng"))
        return;
    if (!vq_setup(&rng_dev, 0, &rng_q, rng_qmem, RNG_QSIZE, "rng") || !virtio_driver_ok(&rng_dev, "rng"))
        return;
    print("PASS rng_init features=0x%lx\n", rng_dev.features);

    u64 expect = size < RNG_MAX_REQUEST ? size : RNG_MAX_REQUEST;
    u64 total = 0, prev_hash = 0, bad = 0;
    u32 t0 = clock_now();
    for (u64 n = 0; n < count; n++) {
        struct span sp = {(u64)rng_buf, (size + 7) & ~7ul};
        call_user(user_zero, (u64)&sp);
        u32 half = (u32)(size / 2);
        rng_q.desc[0] = (struct vq_desc){(u64)rng_buf, half, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1};
        rng_q.desc[1] = (struct vq_desc){(u64)rng_buf + half, (u32)(size - half), VRING_DESC_F_WRITE, 0};
        vq_push(&rng_q, 0);
        vq_kick(&rng_q);
        u32 id, used;
        if (!vq_wait(&rng_q, &id, &used, 2000000000ul)) {
            fail("rng_request n=%lu what=timeout\n", n);
            return;
        }
        struct rng_check c = {(u64)rng_buf, used, 0, 0, 0};
        call_user(user_rng_check, (u64)&c);
        if (used != expect || c.zeros == used || c.same_as_first == used || (n && c.hash == prev_hash)) {
            fail("rng_request n=%lu used=%u expected=%lu zeros=%lu same=%lu\n", n, used, expect, c.zeros,
                 c.same_as_first);
            bad++;
        }
        prev_hash = c.hash;
        total += used;
        if (marks)
            print("INFO rng_mark n=%lu us=%u\n", n, (clock_now() - t0) / (LAPIC_TICKS_PER_MS / 1000));
    }
    u32 ms = ms_since(t0);
    if (!bad)
        print("PASS rng requests=%lu bytes=%lu ms=%u used=%lu\n", count, total, ms, expect);
}
PROBE_TEST("rng", check_rng);
