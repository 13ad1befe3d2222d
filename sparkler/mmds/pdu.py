"""Ethernet II, ARP (Ethernet/IPv4), IPv4 and TCP headers: parse and build, pure functions.

Every parser takes untrusted bytes (a frame the guest sent), checks each length and field it
relies on, and raises ``PduError`` for anything malformed; nothing else is raised. Builders write
complete frames with correct IPv4 header and TCP checksums (RFC 791, RFC 793, RFC 1071).

Field layouts (network byte order)::

    Ethernet  dst[6] src[6] ethertype u16                                        14 bytes
    ARP       htype u16=1 ptype u16=0x0800 hlen u8=6 plen u8=4 oper u16
              sha[6] spa[4] tha[6] tpa[4]                                        28 bytes
    IPv4      ver/ihl u8 tos u8 total_len u16 id u16 flags/frag u16 ttl u8
              proto u8 csum u16 src[4] dst[4] [options]                          20..60 bytes
    TCP       sport u16 dport u16 seq u32 ack u32 off/flags u16 window u16
              csum u16 urg u16 [options]                                         20..60 bytes
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ETH_HLEN = 14
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ARP_LEN = 28
ARP_REQUEST = 1
ARP_REPLY = 2
IPV4_HLEN = 20
TCP_HLEN = 20
PROTO_TCP = 6
BROADCAST_MAC = b"\xff" * 6

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20

TCP_OPT_EOL = 0
TCP_OPT_NOP = 1
TCP_OPT_MSS = 2

_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")


class PduError(ValueError):
    """Malformed or unsupported bytes."""


# --- checksums ----------------------------------------------------------------------------------
def ones_complement_sum(data: bytes | memoryview, initial: int = 0) -> int:
    """The folded 16-bit one's complement sum of ``data`` (padded with a zero byte if odd).

    2**16 = 1 (mod 0xFFFF), so the sum of the big-endian 16-bit words is congruent to the whole
    buffer read as one big-endian integer: one C-level conversion and one modulo instead of a loop.
    The folded sum is that residue, except that a non-zero multiple of 0xFFFF folds to 0xFFFF.
    """
    data = bytes(data)
    if len(data) % 2:
        data += b"\0"
    value = int.from_bytes(data, "big") + initial
    if value == 0:
        return 0
    return value % 0xFFFF or 0xFFFF


def internet_checksum(data: bytes | memoryview, initial: int = 0) -> int:
    return ~ones_complement_sum(data, initial) & 0xFFFF


def tcp_checksum(src_ip: bytes, dst_ip: bytes, segment: bytes | memoryview) -> int:
    pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, PROTO_TCP, len(segment))
    return internet_checksum(segment, ones_complement_sum(pseudo))


# --- parsed views -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ethernet:
    dst: bytes
    src: bytes
    ethertype: int
    payload: memoryview


@dataclass(frozen=True)
class Arp:
    oper: int
    sha: bytes
    spa: bytes
    tha: bytes
    tpa: bytes


@dataclass(frozen=True)
class Ipv4:
    src: bytes
    dst: bytes
    protocol: int
    fragmented: bool
    payload: memoryview


@dataclass(frozen=True)
class Tcp:
    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    mss: int | None
    payload: memoryview

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies: data plus one for SYN and for FIN."""
        return len(self.payload) + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)


def parse_ethernet(frame: bytes | memoryview) -> Ethernet:
    view = memoryview(frame).cast("B") if not isinstance(frame, memoryview) else frame.cast("B")
    if len(view) < ETH_HLEN:
        raise PduError("frame shorter than an Ethernet header")
    dst, src, ethertype = _ETH.unpack_from(view)
    return Ethernet(dst, src, ethertype, view[ETH_HLEN:])


def parse_arp(payload: memoryview) -> Arp:
    if len(payload) < ARP_LEN:
        raise PduError("ARP packet too short")
    htype, ptype, hlen, plen, oper, sha, spa, tha, tpa = _ARP.unpack_from(payload)
    if (htype, ptype, hlen, plen) != (1, ETHERTYPE_IPV4, 6, 4):
        raise PduError("not an Ethernet/IPv4 ARP packet")
    return Arp(oper, sha, spa, tha, tpa)


def arp_target(payload: memoryview) -> bytes | None:
    """The target protocol address of an ARP packet, without validating the rest."""
    if len(payload) < ARP_LEN:
        return None
    return bytes(payload[24:28])


def ipv4_destination(payload: memoryview) -> bytes | None:
    """The destination address of an IPv4 packet, without validating the rest."""
    if len(payload) < IPV4_HLEN or payload[0] >> 4 != 4:
        return None
    return bytes(payload[16:20])


def parse_ipv4(payload: memoryview) -> Ipv4:
    """IPv4 header checks; the header checksum is not verified (the guest may offload it)."""
    if len(payload) < IPV4_HLEN:
        raise PduError("IPv4 packet too short")
    ver_ihl, _tos, total_len, _ident, flags_frag, _ttl, proto, _csum, src, dst = _IPV4.unpack_from(payload)
    if ver_ihl >> 4 != 4:
        raise PduError("not IPv4")
    ihl = (ver_ihl & 0x0F) * 4
    if ihl < IPV4_HLEN or total_len < ihl or total_len > len(payload):
        raise PduError("bad IPv4 header or total length")
    fragmented = bool(flags_frag & 0x2000) or (flags_frag & 0x1FFF) != 0
    return Ipv4(src, dst, proto, fragmented, payload[ihl:total_len])


def parse_tcp(segment: memoryview) -> Tcp:
    """TCP header and options (MSS only); the checksum is not verified (the guest may offload it)."""
    if len(segment) < TCP_HLEN:
        raise PduError("TCP segment too short")
    sport, dport, seq, ack, offset, flags, window, _csum, _urg = _TCP.unpack_from(segment)
    hlen = (offset >> 4) * 4
    if hlen < TCP_HLEN or hlen > len(segment):
        raise PduError("bad TCP data offset")
    mss = None
    options = segment[TCP_HLEN:hlen]
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == TCP_OPT_EOL:
            break
        if kind == TCP_OPT_NOP:
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2 or i + options[i + 1] > len(options):
            raise PduError("bad TCP option")
        length = options[i + 1]
        if kind == TCP_OPT_MSS:
            if length != 4:
                raise PduError("bad TCP MSS option")
            mss = (options[i + 2] << 8) | options[i + 3]
        i += length
    return Tcp(sport, dport, seq, ack, flags & 0x3F, window, mss, segment[hlen:])


# --- builders -----------------------------------------------------------------------------------
def write_ethernet(buf: memoryview, dst: bytes, src: bytes, ethertype: int) -> None:
    _ETH.pack_into(buf, 0, dst, src, ethertype)


def arp_reply_frame(our_mac: bytes, our_ip: bytes, their_mac: bytes, their_ip: bytes) -> bytes:
    frame = bytearray(ETH_HLEN + ARP_LEN)
    view = memoryview(frame)
    write_ethernet(view, their_mac, our_mac, ETHERTYPE_ARP)
    _ARP.pack_into(view, ETH_HLEN, 1, ETHERTYPE_IPV4, 6, 4, ARP_REPLY, our_mac, our_ip, their_mac, their_ip)
    return bytes(frame)


@dataclass(frozen=True)
class TcpHeader:
    """What a segment we send says (addresses and MACs are the stack's and the peer's)."""

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    mss: int | None = None


def tcp_frame(
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: bytes,
    dst_ip: bytes,
    header: TcpHeader,
    payload: bytes | memoryview = b"",
    ident: int = 0,
) -> bytes:
    """A complete Ethernet/IPv4/TCP frame with both checksums filled in."""
    options = struct.pack("!BBH", TCP_OPT_MSS, 4, header.mss) if header.mss is not None else b""
    tcp_len = TCP_HLEN + len(options) + len(payload)
    frame = bytearray(ETH_HLEN + IPV4_HLEN + tcp_len)
    view = memoryview(frame)
    write_ethernet(view, dst_mac, src_mac, ETHERTYPE_IPV4)
    ip = view[ETH_HLEN : ETH_HLEN + IPV4_HLEN]
    # Don't Fragment, TTL 64.
    _IPV4.pack_into(ip, 0, 0x45, 0, IPV4_HLEN + tcp_len, ident & 0xFFFF, 0x4000, 64, PROTO_TCP, 0, src_ip, dst_ip)
    struct.pack_into("!H", ip, 10, internet_checksum(ip))
    seg = view[ETH_HLEN + IPV4_HLEN :]
    offset_words = (TCP_HLEN + len(options)) // 4
    _TCP.pack_into(
        seg, 0, header.src_port, header.dst_port, header.seq & 0xFFFFFFFF, header.ack & 0xFFFFFFFF,
        offset_words << 4, header.flags, header.window, 0, 0,
    )
    seg[TCP_HLEN : TCP_HLEN + len(options)] = options
    seg[TCP_HLEN + len(options) :] = payload
    struct.pack_into("!H", seg, 16, tcp_checksum(src_ip, dst_ip, seg))
    return bytes(frame)


__all__ = [
    "ACK",
    "ARP_REQUEST",
    "Arp",
    "ETHERTYPE_ARP",
    "ETHERTYPE_IPV4",
    "Ethernet",
    "FIN",
    "Ipv4",
    "PROTO_TCP",
    "PSH",
    "PduError",
    "RST",
    "SYN",
    "Tcp",
    "TcpHeader",
    "arp_reply_frame",
    "arp_target",
    "internet_checksum",
    "ipv4_destination",
    "parse_arp",
    "parse_ethernet",
    "parse_ipv4",
    "parse_tcp",
    "tcp_checksum",
    "tcp_frame",
]
