"""Frames a guest would send to the MMDS, built by hand (struct), and checks for the replies."""

import ipaddress
import struct

GUEST_MAC = bytes.fromhex("02aabbccddee")
GUEST_IP = ipaddress.IPv4Address("169.254.0.2").packed
MMDS_IP = ipaddress.IPv4Address("169.254.169.254").packed
MMDS_MAC = bytes.fromhex("060123456701")

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def arp_request(target=MMDS_IP, sender_mac=GUEST_MAC, sender_ip=GUEST_IP, oper=1):
    eth = b"\xff" * 6 + sender_mac + b"\x08\x06"
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, oper, sender_mac, sender_ip, b"\0" * 6, target)
    return eth + arp


def tcp_segment(sport, dport, seq, ack, flags, payload=b"", window=65535, mss=None, src=GUEST_IP, dst=MMDS_IP):
    options = struct.pack("!BBH", 2, 4, mss) if mss is not None else b""
    hlen = 20 + len(options)
    seq, ack = seq % 2**32, ack % 2**32
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (hlen // 4) << 4, flags, window, 0, 0) + options
    pseudo = src + dst + struct.pack("!BBH", 0, 6, hlen + len(payload))
    checksum = csum(pseudo + header + payload)
    return header[:16] + struct.pack("!H", checksum) + header[18:] + payload


def ipv4_packet(payload, proto=6, src=GUEST_IP, dst=MMDS_IP, flags_frag=0x4000):
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, flags_frag, 64, proto, 0, src, dst)
    header = header[:10] + struct.pack("!H", csum(header)) + header[12:]
    return header + payload


def tcp_frame(sport, seq, ack, flags, payload=b"", dport=80, **kw):
    eth = MMDS_MAC + GUEST_MAC + b"\x08\x00"
    return eth + ipv4_packet(tcp_segment(sport, dport, seq, ack, flags, payload, **kw))


def parse_reply(frame: bytes):
    """(eth_dst, ethertype, ip_header, tcp fields dict, payload) of a frame the stack wrote,
    asserting both checksums and the lengths."""
    assert len(frame) >= 14
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == 0x0806:
        return frame[:6], ethertype, frame[14:42], None, b""
    ip = frame[14:]
    ihl = (ip[0] & 0xF) * 4
    total = int.from_bytes(ip[2:4], "big")
    assert total == len(ip), "IPv4 total length matches the frame"
    assert csum(ip[:ihl]) == 0, "IPv4 header checksum"
    seg = ip[ihl:total]
    pseudo = ip[12:16] + ip[16:20] + struct.pack("!BBH", 0, 6, len(seg))
    assert csum(pseudo + seg) == 0, "TCP checksum"
    sport, dport, seq, ack, off, flags, window = struct.unpack_from("!HHIIBBH", seg)
    hlen = (off >> 4) * 4
    fields = dict(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=window, hlen=hlen)
    return frame[:6], ethertype, ip[:ihl], fields, seg[hlen:]
