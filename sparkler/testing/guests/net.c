/*
 * probe.net=serve: a polling virtio-net driver for the first virtio-net device on the command line,
 * serving a tiny network stack for the address probe.net_ip (dotted quad) so host-side tests can run
 * real exchanges through the tap:
 *   - ARP requests for net_ip are answered with the device's MAC (from config space, VIRTIO_NET_F_MAC);
 *   - ICMP echo requests to net_ip are answered (host `ping` works);
 *   - TCP to port 7: a one-connection echo responder (SYN -> SYN|ACK, in-order data echoed back, FIN
 *     answered with FIN|ACK, anything else RST);
 *   - frames of the local experimental ethertype 0x88b5 are echoed back byte for byte with the MAC
 *     addresses swapped (raw frames both ways, intact); one whose payload starts "STOP" ends serving.
 * Serving also ends after probe.net_ms milliseconds (default 30000). Prints
 * "INFO net_ready mac=.. ip=.." once the queues are live and "PASS net_serve rx=.. tx=.. arp=.. icmp=..
 * tcp=.. echo=.." at the end. Only VERSION_1 and MAC are negotiated (no offloads, no merged
 * buffers: each 2 KiB RX buffer takes one frame). Checksums are computed at CPL3 (call_user).
 */
#include "virtio.h"

#define NET_QSIZE 16
#define NET_BUF 2048
#define NET_HDR 12
#define VIRTIO_NET_F_MAC (1ul << 5)
#define ETH_HLEN 14
#define ETHERTYPE_IP 0x0800
#define ETHERTYPE_ARP 0x0806
#define ETHERTYPE_PROBE 0x88b5
#define TCP_ECHO_PORT 7
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_FIN 0x01
#define TCP_ISN 0x10000000u

static u8 rx_qmem[VQ_MEM_SIZE(NET_QSIZE)] __attribute__((aligned(4096)));
static u8 tx_qmem[VQ_MEM_SIZE(NET_QSIZE)] __attribute__((aligned(4096)));
static u8 rx_bufs[NET_QSIZE][NET_BUF] __attribute__((aligned(64)));
static u8 tx_bufs[NET_QSIZE][NET_BUF] __attribute__((aligned(64)));
static struct virtio_dev net_dev;
static struct vq rxq, txq;
static u8 my_mac[6], my_ip[4];
static u16 tx_slot;
static u32 tx_inflight;
static struct {
    u32 rx, tx, arp, icmp, tcp, echo, dropped;
} st;
static struct {
    int active;
    u8 peer_ip[4];
    u16 peer_port;
    u32 rcv_nxt, snd_nxt;
} conn;

static u16 get16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static u32 get32(const u8 *p) { return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3]; }
static void put16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static void put32(u8 *p, u32 v) { p[0] = (u8)(v >> 24); p[1] = (u8)(v >> 16); p[2] = (u8)(v >> 8); p[3] = (u8)v; }
static int same(const u8 *a, const u8 *b, u32 n)
{
    for (u32 i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

/* ones' complement sum of [addr, addr+size) at CPL3, folded by the caller */
static u64 user_sum(u64 arg)
{
    const struct span *sp = (const struct span *)arg;
    const u8 *p = (const u8 *)sp->addr;
    u64 sum = 0, n = sp->size, i = 0;
    for (; i + 1 < n; i += 2)
        sum += (u64)(p[i] << 8 | p[i + 1]);
    if (i < n)
        sum += (u64)p[i] << 8;
    return sum;
}
static u64 sum_of(const u8 *p, u64 n)
{
    struct span sp = {(u64)p, n};
    return call_user(user_sum, (u64)&sp);
}
static u16 fold(u64 sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (u16)~sum;
}

static void rx_post(u16 i)
{
    rxq.desc[i] = (struct vq_desc){(u64)rx_bufs[i], NET_BUF, VRING_DESC_F_WRITE, 0};
    vq_push(&rxq, i);
}

static void tx_reclaim(void)
{
    u32 id, len;
    while (vq_poll(&txq, &id, &len))
        tx_inflight--;
}

/* the next TX buffer (the frame starts after the 12-byte vnet header) */
static u8 *tx_frame(void)
{
    while (tx_inflight >= NET_QSIZE)
        tx_reclaim();
    u8 *b = tx_bufs[tx_slot];
    memset(b, 0, NET_HDR);
    return b + NET_HDR;
}

static void tx_send(u32 frame_len)
{
    u16 i = tx_slot;
    txq.desc[i] = (struct vq_desc){(u64)tx_bufs[i], NET_HDR + frame_len, 0, 0};
    vq_push(&txq, i);
    vq_kick(&txq);
    tx_slot = (u16)((tx_slot + 1) % NET_QSIZE);
    tx_inflight++;
    st.tx++;
}

static void eth_reply(u8 *out, const u8 *in, u16 type)
{
    memcpy(out, in + 6, 6);
    memcpy(out + 6, my_mac, 6);
    put16(out + 12, type);
}

static void on_arp(const u8 *f, u32 len)
{
    const u8 *a = f + ETH_HLEN;
    if (len < ETH_HLEN + 28 || get16(a + 6) != 1 || !same(a + 24, my_ip, 4))
        return;
    u8 *o = tx_frame();
    eth_reply(o, f, ETHERTYPE_ARP);
    u8 *r = o + ETH_HLEN;
    memcpy(r, a, 6);   /* htype, ptype, hlen, plen */
    put16(r + 6, 2);   /* reply */
    memcpy(r + 8, my_mac, 6);
    memcpy(r + 14, my_ip, 4);
    memcpy(r + 18, a + 8, 10); /* sender hw + ip become the target */
    tx_send(ETH_HLEN + 28);
    st.arp++;
}

/* an IPv4 header (20 bytes, no options) for a reply to `ip_in` carrying `payload` bytes */
static void ip_reply(u8 *ip, const u8 *ip_in, u8 proto, u32 payload)
{
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip + 2, (u16)(20 + payload));
    put16(ip + 4, 0);
    put16(ip + 6, 0x4000); /* DF */
    ip[8] = 64;
    ip[9] = proto;
    put16(ip + 10, 0);
    memcpy(ip + 12, my_ip, 4);
    memcpy(ip + 16, ip_in + 12, 4);
    put16(ip + 10, fold(sum_of(ip, 20)));
}

static void on_icmp(const u8 *f, const u8 *ip, u32 ihl, u32 total)
{
    const u8 *icmp = ip + ihl;
    u32 n = total - ihl;
    if (n < 8 || icmp[0] != 8 || ETH_HLEN + 20 + n > NET_BUF - NET_HDR)
        return;
    u8 *o = tx_frame();
    eth_reply(o, f, ETHERTYPE_IP);
    u8 *oip = o + ETH_HLEN;
    ip_reply(oip, ip, 1, n);
    u8 *oi = oip + 20;
    memcpy(oi, icmp, n);
    oi[0] = 0; /* echo reply */
    put16(oi + 2, 0);
    put16(oi + 2, fold(sum_of(oi, n)));
    tx_send(ETH_HLEN + 20 + n);
    st.icmp++;
}

static void tcp_send(const u8 *f, const u8 *ip, const u8 *tcp_in, u8 flags, u32 seq, u32 ack, const u8 *data, u32 n)
{
    u8 *o = tx_frame();
    eth_reply(o, f, ETHERTYPE_IP);
    u8 *oip = o + ETH_HLEN;
    ip_reply(oip, ip, 6, 20 + n);
    u8 *t = oip + 20;
    put16(t, get16(tcp_in + 2));
    put16(t + 2, get16(tcp_in));
    put32(t + 4, seq);
    put32(t + 8, ack);
    t[12] = 5 << 4;
    t[13] = flags;
    put16(t + 14, 8192);
    put16(t + 16, 0);
    put16(t + 18, 0);
    if (n)
        memcpy(t + 20, data, n);
    u8 pseudo[12];
    memcpy(pseudo, oip + 12, 8);
    pseudo[8] = 0;
    pseudo[9] = 6;
    put16(pseudo + 10, (u16)(20 + n));
    put16(t + 16, fold(sum_of(pseudo, 12) + sum_of(t, 20 + n)));
    tx_send(ETH_HLEN + 20 + 20 + n);
}

static void on_tcp(const u8 *f, const u8 *ip, u32 ihl, u32 total)
{
    const u8 *t = ip + ihl;
    if (total < ihl + 20)
        return;
    u32 off = (u32)(t[12] >> 4) * 4;
    if (off < 20 || total < ihl + off)
        return;
    u8 flags = t[13];
    u32 seq = get32(t + 4), n = total - ihl - off;
    const u8 *data = t + off;
    u16 sport = get16(t), dport = get16(t + 2);
    st.tcp++;
    if (flags & TCP_RST) {
        if (conn.active && conn.peer_port == sport)
            conn.active = 0;
        return;
    }
    if (dport != TCP_ECHO_PORT) {
        tcp_send(f, ip, t, TCP_RST | TCP_ACK, 0, seq + n + ((flags & TCP_SYN) ? 1 : 0), 0, 0);
        return;
    }
    if ((flags & TCP_SYN) && !(flags & TCP_ACK)) {
        conn.active = 1;
        memcpy(conn.peer_ip, ip + 12, 4);
        conn.peer_port = sport;
        conn.rcv_nxt = seq + 1;
        conn.snd_nxt = TCP_ISN;
        tcp_send(f, ip, t, TCP_SYN | TCP_ACK, conn.snd_nxt, conn.rcv_nxt, 0, 0);
        conn.snd_nxt++;
        return;
    }
    if (!conn.active || conn.peer_port != sport || !same(conn.peer_ip, ip + 12, 4)) {
        tcp_send(f, ip, t, TCP_RST, get32(t + 8), 0, 0, 0);
        return;
    }
    if (n) {
        if (seq == conn.rcv_nxt) {
            conn.rcv_nxt += n;
            tcp_send(f, ip, t, TCP_ACK | TCP_PSH, conn.snd_nxt, conn.rcv_nxt, data, n);
            conn.snd_nxt += n;
        } else {
            tcp_send(f, ip, t, TCP_ACK, conn.snd_nxt, conn.rcv_nxt, 0, 0);
        }
    }
    if ((flags & TCP_FIN) && seq + n == conn.rcv_nxt) {
        conn.rcv_nxt++;
        tcp_send(f, ip, t, TCP_FIN | TCP_ACK, conn.snd_nxt, conn.rcv_nxt, 0, 0);
        conn.snd_nxt++;
        conn.active = 0;
    }
}

static void on_ip(const u8 *f, u32 len)
{
    const u8 *ip = f + ETH_HLEN;
    if (len < ETH_HLEN + 20 || (ip[0] >> 4) != 4)
        return;
    u32 ihl = (u32)(ip[0] & 15) * 4, total = get16(ip + 2);
    if (ihl < 20 || total < ihl || ETH_HLEN + total > len || !same(ip + 16, my_ip, 4))
        return;
    if (get16(ip + 6) & 0x3fff) /* fragments are not for us */
        return;
    if (ip[9] == 1)
        on_icmp(f, ip, ihl, total);
    else if (ip[9] == 6)
        on_tcp(f, ip, ihl, total);
}

/* returns 1 when the frame asks to stop */
static int on_frame(const u8 *f, u32 len)
{
    if (len < ETH_HLEN)
        return 0;
    u16 type = get16(f + 12);
    if (type == ETHERTYPE_ARP) {
        on_arp(f, len);
    } else if (type == ETHERTYPE_IP) {
        on_ip(f, len);
    } else if (type == ETHERTYPE_PROBE) {
        if (len >= ETH_HLEN + 4 && same(f + ETH_HLEN, (const u8 *)"STOP", 4))
            return 1;
        if (len <= NET_BUF - NET_HDR) {
            u8 *o = tx_frame();
            memcpy(o, f, len);
            memcpy(o, f + 6, 6);
            memcpy(o + 6, f, 6);
            tx_send(len);
            st.echo++;
        }
    } else {
        st.dropped++;
    }
    return 0;
}

static int parse_ip(const char *s, u8 out[4])
{
    if (!s)
        return 0;
    for (int i = 0; i < 4; i++) {
        u32 v = 0, digits = 0;
        while (*s >= '0' && *s <= '9' && digits < 4) {
            v = v * 10 + (u32)(*s++ - '0');
            digits++;
        }
        if (!digits || v > 255 || (i < 3 && *s++ != '.'))
            return 0;
        out[i] = (u8)v;
    }
    return 1;
}

static void serve_net(const char *mode)
{
    if (!cmd_is("net", "serve")) {
        fail("net what=bad_mode value=%s\n", mode);
        return;
    }
    if (!parse_ip(cmd_get("net_ip"), my_ip)) {
        fail("net what=bad_ip\n");
        return;
    }
    if (!virtio_find(VIRTIO_ID_NET, 0, &net_dev)) {
        fail("net_probe what=no_device\n");
        return;
    }
    if (!virtio_negotiate(&net_dev, VIRTIO_NET_F_MAC, "net"))
        return;
    if (!vq_setup(&net_dev, 0, &rxq, rx_qmem, NET_QSIZE, "net") ||
        !vq_setup(&net_dev, 1, &txq, tx_qmem, NET_QSIZE, "net") || !virtio_driver_ok(&net_dev, "net"))
        return;
    for (u32 i = 0; i < 6; i++)
        my_mac[i] = (u8)(virtio_r(&net_dev, VIRTIO_MMIO_CONFIG + (i & ~3u)) >> (8 * (i & 3)));
    for (u16 i = 0; i < NET_QSIZE; i++)
        rx_post(i);
    vq_kick(&rxq);
    print("INFO net_ready mac=%x:%x:%x:%x:%x:%x ip=%u.%u.%u.%u features=0x%lx\n", my_mac[0], my_mac[1],
          my_mac[2], my_mac[3], my_mac[4], my_mac[5], my_ip[0], my_ip[1], my_ip[2], my_ip[3],
          net_dev.features);

    u32 limit_ms = (u32)cmd_u64_or("net_ms", 30000);
    u32 start = clock_now();
    u64 spins = 0;
    for (;;) {
        u32 id, len;
        if (vq_poll(&rxq, &id, &len)) {
            st.rx++;
            int stop = 0;
            if (id < NET_QSIZE && len >= NET_HDR && len <= NET_BUF)
                stop = on_frame(rx_bufs[id] + NET_HDR, len - NET_HDR);
            if (id < NET_QSIZE) {
                rx_post((u16)id);
                vq_kick(&rxq);
            }
            tx_reclaim();
            if (stop)
                break;
            continue;
        }
        cpu_relax();
        if ((++spins & 255) == 0 && ms_since(start) > limit_ms)
            break;
    }
    print("PASS net_serve rx=%u tx=%u arp=%u icmp=%u tcp=%u echo=%u dropped=%u\n", st.rx, st.tx, st.arp,
          st.icmp, st.tcp, st.echo, st.dropped);
}

PROBE_TEST("net", serve_net);
