/*
 * probe.net=serve: a polling virtio-net driver for the first virtio-net device on the command line,
 * serving a tiny network stack for the address probe.net_ip (dotted quad) so host-side tests can run
 * real exchanges through the tap:
 *   - ARP requests for net_ip are answered with the device's MAC (from config space, VIRTIO_NET_F_MAC);
 *   - ICMP echo requests to net_ip are answered (host `ping` works);
 *   - TCP to port 7: a one-connection echo responder (SYN -> SYN|ACK, in-order data echoed back, FIN
 *     answered with FIN|ACK, anything else RST);
 *   - with probe.net_mmds=1, first an MMDS client: ARP for 169.254.169.254, then HTTP over TCP port 80
 *     (PUT /latest/api/token, GET with the token, without it, with a bad one, GET /latest as JSON),
 *     each answer printed as "INFO mmds_<what> status=N body=\"...\"";
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

/* --- probe.net_mmds=1: an HTTP client for the MMDS (before serving) ------------------------------ */
static const u8 mmds_ip[4] = {169, 254, 169, 254};
static u8 mmds_mac[6];
static char http_resp[4096];
static u32 http_len;
static struct {
    u16 port;
    u32 snd_nxt, rcv_nxt;
    int state; /* 0 closed, 1 syn sent, 2 established, 3 done */
} cli;

/* build and send a TCP segment from the client to the MMDS */
static void cli_send(u8 flags, const u8 *data, u32 n)
{
    u8 *o = tx_frame();
    memcpy(o, mmds_mac, 6);
    memcpy(o + 6, my_mac, 6);
    put16(o + 12, ETHERTYPE_IP);
    u8 *ip = o + ETH_HLEN;
    u8 fake_in[20];
    memcpy(fake_in + 12, mmds_ip, 4); /* ip_reply sends to the "sender" of fake_in */
    ip_reply(ip, fake_in, 6, 20 + n);
    u8 *t = ip + 20;
    put16(t, cli.port);
    put16(t + 2, 80);
    put32(t + 4, cli.snd_nxt);
    put32(t + 8, cli.rcv_nxt);
    t[12] = 5 << 4;
    t[13] = flags;
    put16(t + 14, 4096);
    put16(t + 16, 0);
    put16(t + 18, 0);
    if (n)
        memcpy(t + 20, data, n);
    u8 pseudo[12];
    memcpy(pseudo, ip + 12, 8);
    pseudo[8] = 0;
    pseudo[9] = 6;
    put16(pseudo + 10, (u16)(20 + n));
    put16(t + 16, fold(sum_of(pseudo, 12) + sum_of(t, 20 + n)));
    tx_send(ETH_HLEN + 40 + n);
}

/* one received frame while a client exchange runs */
static void cli_frame(const u8 *f, u32 len)
{
    if (len < ETH_HLEN + 20)
        return;
    u16 type = get16(f + 12);
    const u8 *p = f + ETH_HLEN;
    if (type == ETHERTYPE_ARP && len >= ETH_HLEN + 28 && get16(p + 6) == 2 && same(p + 14, mmds_ip, 4)) {
        memcpy(mmds_mac, p + 8, 6);
        return;
    }
    if (type != ETHERTYPE_IP || p[9] != 6 || !same(p + 12, mmds_ip, 4))
        return;
    u32 ihl = (u32)(p[0] & 15) * 4, total = get16(p + 2);
    if (total < ihl + 20 || ETH_HLEN + total > len)
        return;
    const u8 *t = p + ihl;
    u32 off = (u32)(t[12] >> 4) * 4;
    if (get16(t + 2) != cli.port || total < ihl + off)
        return;
    u8 flags = t[13];
    u32 seq = get32(t + 4), n = total - ihl - off;
    if (flags & TCP_RST) {
        cli.state = 3;
        return;
    }
    if (cli.state == 1 && (flags & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK)) {
        cli.rcv_nxt = seq + 1;
        cli.state = 2;
        return;
    }
    if (cli.state != 2)
        return;
    if (n && seq == cli.rcv_nxt) {
        u32 room = sizeof(http_resp) - 1 - http_len, take = n < room ? n : room;
        memcpy(http_resp + http_len, t + off, take);
        http_len += take;
        http_resp[http_len] = 0;
        cli.rcv_nxt += n;
        cli_send(TCP_ACK, 0, 0);
    }
    if (flags & TCP_FIN) {
        cli.rcv_nxt++;
        cli_send(TCP_ACK | TCP_FIN, 0, 0);
        cli.state = 3;
    }
}

/* serve RX frames to cli_frame until `done()` or `ms` pass; returns done() */
static int cli_wait(int (*done)(void), u32 ms)
{
    u32 start = clock_now();
    u64 spins = 0;
    while (!done()) {
        u32 id, len;
        if (vq_poll(&rxq, &id, &len)) {
            if (id < NET_QSIZE && len >= NET_HDR && len <= NET_BUF)
                cli_frame(rx_bufs[id] + NET_HDR, len - NET_HDR);
            if (id < NET_QSIZE) {
                rx_post((u16)id);
                vq_kick(&rxq);
            }
            tx_reclaim();
            continue;
        }
        cpu_relax();
        if ((++spins & 255) == 0 && ms_since(start) > ms)
            return 0;
    }
    return 1;
}

static int have_mac(void) { return mmds_mac[0] | mmds_mac[1] | mmds_mac[2] | mmds_mac[3] | mmds_mac[4] | mmds_mac[5]; }
static int established(void) { return cli.state >= 2; }

static const char *find(const char *hay, const char *needle)
{
    for (; *hay; hay++) {
        u32 i = 0;
        while (needle[i] && hay[i] && (hay[i] | 0x20) == (needle[i] | 0x20))
            i++;
        if (!needle[i])
            return hay;
    }
    return 0;
}

static int response_complete(void)
{
    if (cli.state == 3)
        return 1;
    const char *end = find(http_resp, "\r\n\r\n");
    if (!end)
        return 0;
    const char *cl = find(http_resp, "content-length:");
    u64 want = 0;
    if (cl) {
        cl += 15;
        while (*cl == ' ')
            cl++;
        while (*cl >= '0' && *cl <= '9')
            want = want * 10 + (u64)(*cl++ - '0');
    }
    return (u64)(http_resp + http_len - (end + 4)) >= want;
}

/* one HTTP request on a fresh connection; returns the status code (0: no answer) and leaves the
 * body in *body */
static u32 http_request(const char *request, const char **body)
{
    static u16 next_port = 40000;
    cli.port = next_port++;
    cli.snd_nxt = 0x20000000u + cli.port;
    cli.rcv_nxt = 0;
    cli.state = 1;
    http_len = 0;
    http_resp[0] = 0;
    cli_send(TCP_SYN, 0, 0);
    cli.snd_nxt++;
    if (!cli_wait(established, 5000))
        return 0;
    cli_send(TCP_ACK, 0, 0);
    u32 n = (u32)strlen_(request);
    cli_send(TCP_ACK | TCP_PSH, (const u8 *)request, n);
    cli.snd_nxt += n;
    cli_wait(response_complete, 5000);
    cli_send(TCP_RST | TCP_ACK, 0, 0);
    cli.state = 0;
    const char *end = find(http_resp, "\r\n\r\n");
    *body = end ? end + 4 : "";
    u32 status = 0;
    if (http_len > 12 && http_resp[0] == 'H')
        for (u32 i = 9; i < 12; i++)
            status = status * 10 + (u32)(http_resp[i] - '0');
    return status;
}

/* print a body as a quoted report value (newlines become '|', quotes dropped) */
static void print_body(const char *name, u32 status, const char *body)
{
    static char clean[256];
    u32 i = 0;
    for (; body[i] && i < sizeof(clean) - 1; i++)
        clean[i] = body[i] == '\n' ? '|' : body[i] == '"' ? '\'' : body[i];
    clean[i] = 0;
    print("INFO %s status=%u body=\"%s\"\n", name, status, clean);
}

static void mmds_client(void)
{
    /* who-has 169.254.169.254 */
    u8 *o = tx_frame();
    memset(o, 0xff, 6);
    memcpy(o + 6, my_mac, 6);
    put16(o + 12, ETHERTYPE_ARP);
    u8 *a = o + ETH_HLEN;
    put16(a, 1);
    put16(a + 2, ETHERTYPE_IP);
    a[4] = 6;
    a[5] = 4;
    put16(a + 6, 1);
    memcpy(a + 8, my_mac, 6);
    memcpy(a + 14, my_ip, 4);
    memset(a + 18, 0, 6);
    memcpy(a + 24, mmds_ip, 4);
    tx_send(ETH_HLEN + 28);
    if (!cli_wait(have_mac, 5000)) {
        fail("mmds_arp what=no_reply\n");
        return;
    }
    print("PASS mmds_arp mac=%x:%x:%x:%x:%x:%x\n", mmds_mac[0], mmds_mac[1], mmds_mac[2], mmds_mac[3],
          mmds_mac[4], mmds_mac[5]);
    const char *body;
    static char token[128];
    u32 st_tok = http_request("PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n", &body);
    u32 i = 0;
    for (; body[i] && body[i] != '\r' && body[i] != '\n' && i < sizeof(token) - 1; i++)
        token[i] = body[i];
    token[i] = 0;
    print("INFO mmds_token status=%u len=%u\n", st_tok, i);
    static char req[512];
    const char *get = "GET /latest/meta-data/ami-id HTTP/1.1\r\nHost: 169.254.169.254\r\nAccept: text/plain\r\n";
    u32 n = (u32)strlen_(get);
    memcpy(req, get, n);
    memcpy(req + n, "X-metadata-token: ", 18);
    n += 18;
    memcpy(req + n, token, i);
    n += i;
    memcpy(req + n, "\r\n\r\n", 5);
    u32 status = http_request(req, &body);
    print_body("mmds_get_token", status, body);
    status = http_request("GET /latest/meta-data/ami-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n", &body);
    print_body("mmds_get_no_token", status, body);
    status = http_request(
        "GET /latest/meta-data/ami-id HTTP/1.1\r\nHost: 169.254.169.254\r\nX-metadata-token: bogus\r\n\r\n", &body);
    print_body("mmds_get_bad_token", status, body);
    status = http_request("GET /latest HTTP/1.1\r\nHost: 169.254.169.254\r\nAccept: application/json\r\n"
                          "X-metadata-token: bogus\r\n\r\n",
                          &body);
    print_body("mmds_get_json", status, body);
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
    if (cmd_is("net_mmds", "1"))
        mmds_client();
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
