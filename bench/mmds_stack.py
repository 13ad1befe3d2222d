"""MMDS guest-side cost: requests per second through MmdsNetworkStack (ARP + TCP + h11 + store), in
process, with a scripted guest (frames built with struct, no KVM). Prints, asserts nothing.

Each request is a GET on a kept-alive connection: one guest data segment in, the answer segments
out, one guest ACK in. A second figure opens a connection per request (SYN, GET, FIN) as
``curl`` does. This is the Python cost per request on the VMM thread; a guest adds its own.

Usage: .venv/bin/python bench/mmds_stack.py [--requests 2000] [--answer-bytes 2000]
"""

from __future__ import annotations

import argparse
import struct
import time

from sparkler.mmds.imds import Mmds
from sparkler.mmds.ns import DEFAULT_MAC, MmdsNetworkStack

GUEST_MAC = bytes.fromhex("02aabbccddee")
GUEST_IP = bytes([169, 254, 0, 2])
MMDS_IP = bytes([169, 254, 169, 254])
FIN, SYN, PSH, ACK = 0x01, 0x02, 0x08, 0x10


def frame(sport: int, seq: int, ack: int, flags: int, payload: bytes = b"", mss: int | None = None) -> bytes:
    """A guest frame (a Linux guest announces MSS 1460 on its SYN)."""
    options = struct.pack("!BBH", 2, 4, mss) if mss else b""
    words = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", sport, 80, seq % 2**32, ack % 2**32, words << 4, flags, 65535, 0, 0)
    tcp += options + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, GUEST_IP, MMDS_IP)
    return DEFAULT_MAC + GUEST_MAC + b"\x08\x00" + ip + tcp


def drain(stack: MmdsNetworkStack, buf: memoryview) -> tuple[int, int, bool]:
    """(last seq + len seen, bytes, fin) of what the stack sends now."""
    end, total, fin = 0, 0, False
    while stack.has_pending():
        n = stack.write_next_frame(buf)
        if n is None:
            break
        seq = struct.unpack_from("!I", buf, 14 + 20 + 4)[0]
        flags = buf[14 + 20 + 13]
        payload = n - 14 - 20 - (buf[14 + 20 + 12] >> 4) * 4  # minus Ethernet, IPv4, TCP (+ options)
        end = (seq + payload + (1 if flags & (SYN | FIN) else 0)) % 2**32
        total += payload
        fin = fin or bool(flags & FIN)
    return end, total, fin


def _check(received: int, expected: int) -> None:
    if received < expected:
        raise SystemExit(f"bench: the stack sent {received} bytes, the answer has {expected}")


def keep_alive(stack: MmdsNetworkStack, requests: int, answer: int) -> float:
    buf = memoryview(bytearray(2048))
    request = b"GET /latest/meta-data/blob HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
    stack.detour_frame(frame(40000, 1000, 0, SYN, mss=1460))
    ack, _, _ = drain(stack, buf)
    seq = 1001
    stack.detour_frame(frame(40000, seq, ack, ACK))
    start = time.perf_counter()
    for _ in range(requests):
        stack.detour_frame(frame(40000, seq, ack, ACK | PSH, request))
        seq += len(request)
        ack, sent, _ = drain(stack, buf)
        _check(sent, answer)
        stack.detour_frame(frame(40000, seq, ack, ACK))
    return time.perf_counter() - start


def per_connection(stack: MmdsNetworkStack, requests: int, answer: int) -> float:
    buf = memoryview(bytearray(2048))
    request = b"GET /latest/meta-data/blob HTTP/1.0\r\nHost: 169.254.169.254\r\n\r\n"
    start = time.perf_counter()
    for i in range(requests):
        port = 20000 + i % 30000
        stack.detour_frame(frame(port, 1000, 0, SYN, mss=1460))
        ack, _, _ = drain(stack, buf)
        stack.detour_frame(frame(port, 1001, ack, ACK | PSH, request))
        ack, sent, _ = drain(stack, buf)
        _check(sent, answer)
        stack.detour_frame(frame(port, 1001 + len(request), ack, ACK | FIN))
        drain(stack, buf)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--answer-bytes", type=int, default=2000)
    args = parser.parse_args()
    mmds = Mmds()
    mmds.store.put({"latest": {"meta-data": {"blob": "x" * args.answer_bytes}}})
    stack = MmdsNetworkStack(DEFAULT_MAC, "169.254.169.254", mmds)
    seconds = keep_alive(stack, args.requests, args.answer_bytes)
    print(f"mmds keep-alive GET ({args.answer_bytes} B answer): {args.requests / seconds:,.0f} requests/s, "
          f"{seconds / args.requests * 1e6:.0f} us/request")
    seconds = per_connection(MmdsNetworkStack(DEFAULT_MAC, "169.254.169.254", mmds), args.requests, args.answer_bytes)
    print(f"mmds connection per GET (SYN..FIN): {args.requests / seconds:,.0f} requests/s, "
          f"{seconds / args.requests * 1e6:.0f} us/request")


if __name__ == "__main__":
    main()
