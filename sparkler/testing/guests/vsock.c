/*
 * probe.vsock=<mode>: a polling virtio-vsock driver (virtio 1.2 section 5.10) for the first vsock
 * device on the command line. The whole protocol loop runs at CPL3 (call_user: native speed on a
 * PVM host, where CPL0 code is emulated); results are printed at CPL0 afterwards.
 *
 *   listen   accept host-initiated connections on probe.vsock_port (default 52) and echo every
 *            byte back; done after probe.vsock_conns (default 1) connections were closed by the
 *            host (SHUTDOWN from the device, answered with RST).
 *   connect  open probe.vsock_conns concurrent connections to host port probe.vsock_port, send
 *            probe.vsock_bytes of a pattern on each, check the echo byte for byte, then close
 *            (SHUTDOWN, wait for the RST). probe.vsock_refused=Q first connects to host port Q and
 *            expects an RST; probe.vsock_close_port=R connects to R, whose host end closes at once,
 *            and expects SHUTDOWN.
 *   garbage  send malformed packets and chains (short header, len beyond the buffer or 64 KiB,
 *            spoofed CIDs, SEQPACKET, unknown op, data for no connection, a device-writable TX
 *            buffer), check the device still answers a REQUEST, then hand it a descriptor outside
 *            RAM and expect DEVICE_NEEDS_RESET.
 *
 * probe.vsock_timeout_ms bounds every mode (default 60000); probe.vsock_echo=0 makes listen a sink and
 * connect a source (benchmarks); probe.vsock_mem is where the ~17 MiB of buffers go (default 64 MiB). Flow control: we advertise a 64 KiB
 * buffer per connection (the echo ring) and never send more than the host's credit
 * (buf_alloc - (tx_cnt - fwd_cnt)). Echo data is copied into a per-connection ring (native-speed
 * copies at CPL3) so RX buffers are re-posted at once and credit updates always get through.
 * The host test waits for "INFO vsock_ready" before it connects.
 */
#include "virtio.h"

#define VS_QSIZE 128
#define VS_EVQSIZE 8
#define NRX 64
#define NTX 64
#define HDR 44
#define PKT_MAX (64u * 1024u)
#define BUF_SIZE (HDR + PKT_MAX + 20) /* room past the payload, multiple of 4 */
#define RING (64u * 1024u)            /* per-connection echo ring = our buf_alloc */
#define MAXC 128
#define HOST_CID 2

#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7
#define SHUT_ALL 3

struct vs_hdr {
    u64 src_cid, dst_cid;
    u32 src_port, dst_port, len;
    u16 type, op;
    u32 flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

enum { C_FREE, C_CONNECTING, C_EST, C_CLOSING };
enum { K_ECHO, K_STREAM, K_REFUSED, K_PEERCLOSE, K_SINK };

struct vconn {
    u32 state, kind, lport, pport, index;
    u32 peer_buf_alloc, peer_fwd_cnt;
    u32 tx_cnt, fwd_cnt, last_fwd_sent;
    u32 head, tail; /* echo ring: bytes written / echoed */
    u64 to_send, sent, recvd, bad;
    int credit_req;
};

static u8 vs_rxq_mem[VQ_MEM_SIZE(VS_QSIZE)] __attribute__((aligned(4096)));
static u8 vs_txq_mem[VQ_MEM_SIZE(VS_QSIZE)] __attribute__((aligned(4096)));
static u8 vs_evq_mem[VQ_MEM_SIZE(VS_EVQSIZE)] __attribute__((aligned(4096)));
/* Packet buffers and echo rings (~17 MiB) live in guest RAM at probe.vsock_mem (default 64 MiB), not in
 * the image, so the probe still fits small guests that do not use vsock. */
#define VS_MEM_DEFAULT (64ul * MIB)
#define VS_MEM_SIZE ((u64)(NRX + NTX) * BUF_SIZE + 4096ul + (u64)MAXC * RING)
static u8 (*vs_rxbuf)[BUF_SIZE];
static u8 (*vs_txbuf)[BUF_SIZE];
static u8 (*vs_ring)[RING];
static u8 vs_evbuf[VS_EVQSIZE][8] __attribute__((aligned(8)));
static struct vconn conns[MAXC];
static struct virtio_dev vs_dev;
static struct vq rxq, txq, evq;
static u16 tx_free[NTX];
static u8 tx_busy[NTX];
static u32 n_tx_free;

static struct {
    u64 cid, port, nconns, bytes, timeout_ms, refused_port, close_port;
    int mode; /* 0 listen, 1 connect, 2 garbage */
    int echo; /* probe.vsock_echo=0: listen discards, connect expects no echo (throughput benches) */
    /* results */
    u64 accepted, closed, connected, refused, peer_closed, rx_bytes, tx_bytes, bad, rsts, unexpected, timed_out;
    u64 protocol_errors, ms, status;
    u32 next_lport;
    int tx_pushed, rx_pushed;
} vs;

static u8 pattern(u64 off, u32 k) { return (u8)(off ^ (off >> 8) ^ (k * 37u)); }

/* ---- CPL3 helpers (no port I/O here) --------------------------------------------------------- */
static void reclaim_tx(void)
{
    u32 id, len;
    while (vq_poll(&txq, &id, &len)) {
        if (id < NTX && n_tx_free < NTX && tx_busy[id]) {
            tx_busy[id] = 0;
            tx_free[n_tx_free++] = (u16)id;
        } else {
            vs.protocol_errors++; /* an id we did not post, or posted once and got back twice */
        }
    }
}

static void flush_kicks(void);

/* A free TX buffer; when all are in flight, kick and wait a little for the device to return some
 * (control packets such as RESPONSE must not be lost). -1 if none came back. */
static int tx_get(void)
{
    if (!n_tx_free)
        reclaim_tx();
    for (u32 spin = 0; !n_tx_free && spin < 2000000; spin++) {
        flush_kicks();
        cpu_relax();
        reclaim_tx();
    }
    if (!n_tx_free)
        return -1;
    return tx_free[--n_tx_free];
}

static void tx_push(int b, u32 total_len, u16 flags)
{
    tx_busy[b] = 1;
    txq.desc[b] = (struct vq_desc){(u64)vs_txbuf[b], total_len, flags, 0};
    vq_push(&txq, (u16)b);
    vs.tx_pushed = 1;
}

static void fill_hdr(struct vs_hdr *h, u32 src_port, u32 dst_port, u16 op, u32 len)
{
    h->src_cid = vs.cid;
    h->dst_cid = HOST_CID;
    h->src_port = src_port;
    h->dst_port = dst_port;
    h->len = len;
    h->type = 1;
    h->op = op;
    h->flags = 0;
    h->buf_alloc = RING;
    h->fwd_cnt = 0;
}

/* A control packet for connection c (or a bare one when c is 0). Returns 0 when no TX buffer. */
static int send_ctl(struct vconn *c, u32 lport, u32 pport, u16 op, u32 flags)
{
    int b = tx_get();
    if (b < 0)
        return 0;
    struct vs_hdr *h = (struct vs_hdr *)vs_txbuf[b];
    fill_hdr(h, c ? c->lport : lport, c ? c->pport : pport, op, 0);
    h->flags = flags;
    if (c) {
        h->fwd_cnt = c->fwd_cnt;
        c->last_fwd_sent = c->fwd_cnt;
    }
    tx_push(b, HDR, 0);
    return 1;
}

static u32 host_credit(struct vconn *c)
{
    u32 in_flight = c->tx_cnt - c->peer_fwd_cnt;
    return in_flight >= c->peer_buf_alloc ? 0 : c->peer_buf_alloc - in_flight;
}

static struct vconn *find(u32 lport, u32 pport)
{
    for (u32 i = 0; i < MAXC; i++)
        if (conns[i].state != C_FREE && conns[i].lport == lport && conns[i].pport == pport)
            return &conns[i];
    return 0;
}

static struct vconn *alloc_conn(void)
{
    for (u32 i = 0; i < MAXC; i++)
        if (conns[i].state == C_FREE) {
            memset(&conns[i], 0, sizeof(conns[i]));
            conns[i].index = i;
            return &conns[i];
        }
    return 0;
}

static void conn_done(struct vconn *c) { c->state = C_FREE; }

static void repost_rx(u16 b)
{
    rxq.desc[b] = (struct vq_desc){(u64)vs_rxbuf[b], BUF_SIZE, VRING_DESC_F_WRITE, 0};
    vq_push(&rxq, b);
    vs.rx_pushed = 1;
}

static void on_data(struct vconn *c, const u8 *p, u32 len)
{
    vs.rx_bytes += len;
    if (c->kind == K_ECHO) {
        u32 used = c->head - c->tail;
        if (len > RING - used) { /* the device sent beyond our credit */
            vs.protocol_errors++;
            return;
        }
        u8 *ring = vs_ring[c->index];
        for (u32 i = 0; i < len;) {
            u32 at = (c->head + i) % RING;
            u32 n = RING - at < len - i ? RING - at : len - i;
            memcpy(ring + at, p + i, n);
            i += n;
        }
        c->head += len;
    } else {
        if (c->kind == K_STREAM)
            for (u32 i = 0; i < len; i++)
                if (p[i] != pattern(c->recvd + i, c->index))
                    c->bad++;
        c->recvd += len;
        c->fwd_cnt += len;
    }
}

static void handle_rx(const struct vs_hdr *h, const u8 *payload, u32 used_len)
{
    if (used_len < HDR || h->len > used_len - HDR) {
        vs.protocol_errors++;
        return;
    }
    struct vconn *c = find(h->dst_port, h->src_port);
    if (h->op == OP_RST)
        vs.rsts++;
    if (!c) {
        if (h->op == OP_REQUEST && vs.mode == 0 && h->dst_port == vs.port) {
            c = alloc_conn();
            if (!c) {
                send_ctl(0, h->dst_port, h->src_port, OP_RST, 0);
                return;
            }
            c->state = C_EST;
            c->kind = vs.echo ? K_ECHO : K_SINK;
            c->lport = h->dst_port;
            c->pport = h->src_port;
            c->peer_buf_alloc = h->buf_alloc;
            c->peer_fwd_cnt = h->fwd_cnt;
            vs.accepted++;
            send_ctl(c, 0, 0, OP_RESPONSE, 0);
        } else if (h->op != OP_RST) {
            vs.unexpected++;
            send_ctl(0, h->dst_port, h->src_port, OP_RST, 0);
        }
        return;
    }
    c->peer_buf_alloc = h->buf_alloc;
    c->peer_fwd_cnt = h->fwd_cnt;
    switch (h->op) {
    case OP_RESPONSE:
        if (c->state == C_CONNECTING) {
            c->state = C_EST;
            vs.connected++;
        } else {
            vs.unexpected++;
        }
        break;
    case OP_RST:
        if (c->state == C_CONNECTING && c->kind == K_REFUSED)
            vs.refused++;
        else if (c->state == C_CLOSING || (c->kind == K_PEERCLOSE && c->state == C_EST))
            vs.closed++;
        else
            vs.unexpected++;
        conn_done(c);
        break;
    case OP_RW:
        on_data(c, payload, h->len);
        break;
    case OP_CREDIT_REQUEST:
        c->credit_req = 1;
        break;
    case OP_CREDIT_UPDATE:
        break;
    case OP_SHUTDOWN:
        /* the host end closed: answer RST and forget the connection */
        if (c->kind == K_PEERCLOSE)
            vs.peer_closed++;
        else if (c->kind == K_ECHO || c->kind == K_SINK)
            vs.closed++;
        else
            vs.unexpected++;
        send_ctl(c, 0, 0, OP_RST, 0);
        conn_done(c);
        break;
    default:
        vs.unexpected++;
    }
}

static void poll_rx(void)
{
    u32 id, len;
    while (vq_poll(&rxq, &id, &len)) {
        if (id >= NRX) {
            vs.protocol_errors++;
            continue;
        }
        const struct vs_hdr *h = (const struct vs_hdr *)vs_rxbuf[id];
        handle_rx(h, vs_rxbuf[id] + HDR, len);
        repost_rx((u16)id);
    }
}

/* Send what a connection has to send: echo data, stream data, credit updates. */
static void pump_conn(struct vconn *c)
{
    if (c->state != C_EST)
        return;
    for (;;) {
        u32 avail;
        if (c->kind == K_ECHO)
            avail = c->head - c->tail;
        else if (c->kind == K_STREAM)
            avail = c->to_send - c->sent > PKT_MAX ? PKT_MAX : (u32)(c->to_send - c->sent);
        else
            avail = 0;
        u32 credit = host_credit(c);
        u32 n = avail < credit ? avail : credit;
        if (n > PKT_MAX)
            n = PKT_MAX;
        if (n == 0)
            break;
        int b = tx_get();
        if (b < 0)
            return;
        struct vs_hdr *h = (struct vs_hdr *)vs_txbuf[b];
        u8 *p = vs_txbuf[b] + HDR;
        if (c->kind == K_ECHO) {
            u8 *ring = vs_ring[c->index];
            for (u32 i = 0; i < n;) {
                u32 at = (c->tail + i) % RING;
                u32 m = RING - at < n - i ? RING - at : n - i;
                memcpy(p + i, ring + at, m);
                i += m;
            }
            c->tail += n;
            c->fwd_cnt += n;
        } else {
            for (u32 i = 0; i < n; i++)
                p[i] = pattern(c->sent + i, c->index);
            c->sent += n;
        }
        fill_hdr(h, c->lport, c->pport, OP_RW, n);
        h->fwd_cnt = c->fwd_cnt;
        c->last_fwd_sent = c->fwd_cnt;
        c->tx_cnt += n;
        vs.tx_bytes += n;
        tx_push(b, HDR + n, 0);
    }
    if (c->credit_req || c->fwd_cnt - c->last_fwd_sent >= RING / 2) {
        if (send_ctl(c, 0, 0, OP_CREDIT_UPDATE, 0))
            c->credit_req = 0;
    }
    if (c->kind == K_STREAM && c->sent == c->to_send && (!vs.echo || c->recvd == c->to_send)) {
        if (send_ctl(c, 0, 0, OP_SHUTDOWN, SHUT_ALL))
            c->state = C_CLOSING;
    }
}

static struct vconn *open_conn(u32 port, u32 kind, u64 bytes)
{
    struct vconn *c = alloc_conn();
    if (!c)
        return 0;
    c->state = C_CONNECTING;
    c->kind = kind;
    c->lport = vs.next_lport++;
    c->pport = port;
    c->to_send = bytes;
    c->peer_buf_alloc = 0;
    if (!send_ctl(c, 0, 0, OP_REQUEST, 0)) {
        conn_done(c);
        return 0;
    }
    return c;
}

static int busy_conns(void)
{
    int n = 0;
    for (u32 i = 0; i < MAXC; i++)
        n += conns[i].state != C_FREE;
    return n;
}

static void flush_kicks(void)
{
    if (vs.tx_pushed) {
        vs.tx_pushed = 0;
        vq_kick(&txq);
    }
    if (vs.rx_pushed) {
        vs.rx_pushed = 0;
        vq_kick(&rxq);
    }
}

static u64 stream_opened, stream_goal;
static int open_more;

/* Run the poll loop until done() or the timeout. */
static void run_loop(int (*done)(void))
{
    u32 start = clock_now();
    u64 idle = 0;
    while (!done()) {
        poll_rx();
        reclaim_tx();
        while (open_more && stream_opened < stream_goal && open_conn((u32)vs.port, K_STREAM, vs.bytes))
            stream_opened++;
        for (u32 i = 0; i < MAXC; i++)
            pump_conn(&conns[i]);
        int active = vs.tx_pushed || vs.rx_pushed;
        flush_kicks();
        if (active) {
            idle = 0;
            continue;
        }
        cpu_relax();
        if ((++idle & 1023) == 0 && ms_since(start) > vs.timeout_ms) {
            vs.timed_out = 1;
            break;
        }
    }
    vs.ms = ms_since(start);
}

static int listen_done(void) { return vs.closed >= vs.nconns; }

static int connect_phase_done(void) { return vs.closed >= stream_goal && busy_conns() == 0; }
static int refused_done(void) { return vs.refused + vs.unexpected >= 1 && busy_conns() == 0; }
static int peerclose_done(void) { return vs.peer_closed + vs.unexpected >= 1 && busy_conns() == 0; }

static u64 user_listen(u64 arg)
{
    (void)arg;
    run_loop(listen_done);
    return 0;
}

static u64 user_connect(u64 arg)
{
    (void)arg;
    if (vs.refused_port) {
        open_conn((u32)vs.refused_port, K_REFUSED, 0);
        flush_kicks();
        run_loop(refused_done);
    }
    if (vs.close_port) {
        open_conn((u32)vs.close_port, K_PEERCLOSE, 0);
        flush_kicks();
        run_loop(peerclose_done);
    }
    stream_goal = vs.nconns;
    stream_opened = 0;
    open_more = 1;
    run_loop(connect_phase_done);
    open_more = 0;
    for (u32 i = 0; i < MAXC; i++)
        vs.bad += conns[i].bad;
    return 0;
}

/* ---- garbage: hostile packets ------------------------------------------------------------------ */
static void push_raw(u32 len_field, u32 desc_len, u64 src_cid, u64 dst_cid, u16 type, u16 op, u16 flags)
{
    int b = tx_get();
    if (b < 0)
        return;
    struct vs_hdr *h = (struct vs_hdr *)vs_txbuf[b];
    fill_hdr(h, 7000, 7001, op, len_field);
    h->src_cid = src_cid;
    h->dst_cid = dst_cid;
    h->type = type;
    tx_push(b, desc_len, flags);
}

static u64 garbage_rsts_expected;
static int garbage_done(void) { return vs.rsts >= garbage_rsts_expected && n_tx_free == NTX; }

static u64 user_garbage(u64 arg)
{
    (void)arg;
    push_raw(0, 20, vs.cid, HOST_CID, 1, OP_REQUEST, 0);                    /* header cut short */
    push_raw(100000, HDR + 100, vs.cid, HOST_CID, 1, OP_RW, 0);             /* len beyond 64 KiB */
    push_raw(4000, HDR + 100, vs.cid, HOST_CID, 1, OP_RW, 0);               /* len beyond the buffer */
    push_raw(0, HDR, vs.cid + 1, HOST_CID, 1, OP_REQUEST, 0);               /* spoofed source CID */
    push_raw(0, HDR, vs.cid, 5, 1, OP_REQUEST, 0);                          /* not the host */
    push_raw(0, HDR, vs.cid, HOST_CID, 1, OP_REQUEST, VRING_DESC_F_WRITE);  /* device-writable TX */
    push_raw(0, HDR, vs.cid, HOST_CID, 2, OP_REQUEST, 0);                   /* SEQPACKET -> RST */
    push_raw(0, HDR, vs.cid, HOST_CID, 1, 99, 0);                           /* unknown op -> RST */
    push_raw(16, HDR + 16, vs.cid, HOST_CID, 1, OP_RW, 0);                  /* data, no conn -> RST */
    garbage_rsts_expected = 3;
    flush_kicks();
    run_loop(garbage_done);
    /* still alive: a REQUEST to a port nobody listens on is refused */
    u64 before = vs.rsts;
    open_conn(7002, K_REFUSED, 0);
    flush_kicks();
    garbage_rsts_expected = before + 1;
    run_loop(refused_done);
    return 0;
}

static void check_vsock(const char *mode)
{
    vs.mode = cmd_is("vsock", "listen") ? 0 : cmd_is("vsock", "connect") ? 1 : cmd_is("vsock", "garbage") ? 2 : -1;
    if (vs.mode < 0) {
        fail("vsock what=bad_mode value=%s\n", mode);
        return;
    }
    if (!virtio_find(VIRTIO_ID_VSOCK, 0, &vs_dev)) {
        fail("vsock_probe what=no_device\n");
        return;
    }
    if (!virtio_negotiate(&vs_dev, 0, "vsock"))
        return;
    if (!vq_setup(&vs_dev, 0, &rxq, vs_rxq_mem, VS_QSIZE, "vsock") ||
        !vq_setup(&vs_dev, 1, &txq, vs_txq_mem, VS_QSIZE, "vsock") ||
        !vq_setup(&vs_dev, 2, &evq, vs_evq_mem, VS_EVQSIZE, "vsock") || !virtio_driver_ok(&vs_dev, "vsock"))
        return;
    u64 mem = cmd_u64_or("vsock_mem", VS_MEM_DEFAULT) & ~4095ul;
    if (!e820_ram_contains(mem, VS_MEM_SIZE) || !is_mapped(mem, VS_MEM_SIZE)) {
        fail("vsock what=no_room mem=0x%lx size=%lu\n", mem, VS_MEM_SIZE);
        return;
    }
    vs_rxbuf = (u8(*)[BUF_SIZE])mem;
    vs_txbuf = (u8(*)[BUF_SIZE])(mem + (u64)NRX * BUF_SIZE);
    vs_ring = (u8(*)[RING])((mem + (u64)(NRX + NTX) * BUF_SIZE + 4095ul) & ~4095ul);
    vs.cid = virtio_r(&vs_dev, 0x100) | ((u64)virtio_r(&vs_dev, 0x104) << 32);
    vs.port = cmd_u64_or("vsock_port", 52);
    vs.nconns = cmd_u64_or("vsock_conns", 1);
    vs.bytes = cmd_u64_or("vsock_bytes", 4096);
    vs.timeout_ms = cmd_u64_or("vsock_timeout_ms", 60000);
    vs.refused_port = cmd_u64_or("vsock_refused", 0);
    vs.close_port = cmd_u64_or("vsock_close_port", 0);
    vs.echo = cmd_u64_or("vsock_echo", 1) != 0;
    vs.next_lport = 40000;
    if (vs.mode == 1 && vs.nconns > MAXC) /* connect: all at once; listen: a total, served as they come */
        vs.nconns = MAXC;
    for (u32 i = 0; i < NTX; i++)
        tx_free[i] = (u16)(NTX - 1 - i);
    n_tx_free = NTX;
    for (u32 i = 0; i < VS_EVQSIZE; i++) {
        evq.desc[i] = (struct vq_desc){(u64)vs_evbuf[i], 8, VRING_DESC_F_WRITE, 0};
        vq_push(&evq, (u16)i);
    }
    vq_kick(&evq);
    for (u32 i = 0; i < NRX; i++)
        repost_rx((u16)i);
    flush_kicks();
    print("PASS vsock_init cid=%lu features=0x%lx\n", vs.cid, vs_dev.features);
    print("INFO vsock_ready mode=%d port=%lu conns=%lu\n", vs.mode, vs.port, vs.nconns);

    if (vs.mode == 0) {
        call_user(user_listen, 0);
        print("INFO vsock_stats accepted=%lu closed=%lu rx_bytes=%lu tx_bytes=%lu ms=%lu unexpected=%lu\n",
              vs.accepted, vs.closed, vs.rx_bytes, vs.tx_bytes, vs.ms, vs.unexpected);
        if (!vs.timed_out && vs.closed >= vs.nconns && (!vs.echo || vs.rx_bytes == vs.tx_bytes) && !vs.protocol_errors)
            print("PASS vsock_listen conns=%lu bytes=%lu ms=%lu\n", vs.closed, vs.rx_bytes, vs.ms);
        else
            fail("vsock_listen timed_out=%lu closed=%lu rx=%lu tx=%lu protocol_errors=%lu\n", vs.timed_out,
                 vs.closed, vs.rx_bytes, vs.tx_bytes, vs.protocol_errors);
    } else if (vs.mode == 1) {
        call_user(user_connect, 0);
        if (vs.refused_port) {
            if (vs.refused == 1)
                print("PASS vsock_refused port=%lu\n", vs.refused_port);
            else
                fail("vsock_refused port=%lu refused=%lu unexpected=%lu\n", vs.refused_port, vs.refused,
                     vs.unexpected);
        }
        if (vs.close_port) {
            if (vs.peer_closed == 1)
                print("PASS vsock_peer_close port=%lu\n", vs.close_port);
            else
                fail("vsock_peer_close port=%lu peer_closed=%lu\n", vs.close_port, vs.peer_closed);
        }
        u64 expect = vs.nconns * vs.bytes;
        print("INFO vsock_stats connected=%lu closed=%lu rx_bytes=%lu tx_bytes=%lu ms=%lu unexpected=%lu\n",
              vs.connected, vs.closed, vs.rx_bytes, vs.tx_bytes, vs.ms, vs.unexpected);
        if (!vs.timed_out && vs.closed == vs.nconns && vs.rx_bytes == (vs.echo ? expect : 0) && vs.tx_bytes == expect && !vs.bad &&
            !vs.protocol_errors)
            print("PASS vsock_connect conns=%lu bytes=%lu ms=%lu\n", vs.closed, expect, vs.ms);
        else
            fail("vsock_connect timed_out=%lu closed=%lu rx=%lu tx=%lu bad=%lu protocol_errors=%lu\n", vs.timed_out,
                 vs.closed, vs.rx_bytes, vs.tx_bytes, vs.bad, vs.protocol_errors);
    } else {
        call_user(user_garbage, 0);
        if (!vs.timed_out && vs.refused == 1)
            print("PASS vsock_garbage rsts=%lu\n", vs.rsts);
        else
            fail("vsock_garbage timed_out=%lu rsts=%lu refused=%lu\n", vs.timed_out, vs.rsts, vs.refused);
        /* ring corruption: a TX descriptor outside guest RAM -> DEVICE_NEEDS_RESET, VMM unharmed */
        int b = tx_get();
        if (b >= 0) {
            txq.desc[b] = (struct vq_desc){0x7f00000000ul, 64, 0, 0};
            vq_push(&txq, (u16)b);
            vq_kick(&txq);
        }
        u32 status = 0;
        for (u32 spin = 0; spin < 200000 && !(status & 0x40); spin++)
            status = virtio_r(&vs_dev, VIRTIO_MMIO_STATUS);
        if (status & 0x40)
            print("PASS vsock_broken status=0x%x\n", status);
        else
            fail("vsock_broken status=0x%x\n", status);
    }
}
PROBE_TEST("vsock", check_vsock);
