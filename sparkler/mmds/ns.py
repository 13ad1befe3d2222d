"""The MMDS network stack of one network interface: Ethernet frames in, Ethernet frames out.

The virtio-net device hands every frame the guest transmits to ``detour_frame`` first (without
the vnet header). A frame is for the MMDS when it is an ARP packet whose target address is the
MMDS IPv4 address, or an IPv4 packet to that address; such frames are consumed (``True``) and never
reach the tap, whether or not they make sense. Everything else returns ``False`` and goes on to
the tap unchanged.

* ARP requests for the MMDS address are answered with the stack's MAC (Firecracker's default is
  ``06:01:23:45:67:01``, ``DEFAULT_MAC``); other ARP packets for it are dropped.
* IPv4/TCP to port 80 goes to the TCP endpoint (``sparkler.mmds.tcp``), which serves HTTP from
  the shared ``Mmds``; other ports are refused with RST; other protocols and fragments are dropped.

The device asks ``has_pending()`` when it can deliver to the guest and then calls
``write_next_frame(buf)`` with a guest receive buffer (or a scratch buffer): the next frame is
written at its start and its length returned, or None when there is nothing to send (or ``buf``
is too small for it; the frame stays queued). ARP replies go first, then RSTs, then TCP.

Hostile input: any byte string makes ``detour_frame`` return True or False and nothing else;
every frame written is well formed with correct checksums. Memory is bounded: one pending ARP
reply, at most ``MAX_PENDING_RESETS`` RSTs and ``MAX_CONNECTIONS`` connections of bounded buffers.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

from sparkler.mmds import pdu
from sparkler.mmds.imds import Mmds
from sparkler.mmds.tcp import MAX_CONNECTIONS, MAX_PENDING_RESETS, TcpHandler

DEFAULT_MAC = bytes.fromhex("060123456701")
DEFAULT_IPV4 = "169.254.169.254"
MMDS_PORT = 80
_TCP_FRAME_OVERHEAD = pdu.ETH_HLEN + pdu.IPV4_HLEN + pdu.TCP_HLEN + 4  # room for the MSS option


class MmdsNetworkStack:
    def __init__(
        self,
        mac: bytes,
        ipv4: str,
        mmds: Mmds,
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_pending_resets: int = MAX_PENDING_RESETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(mac) != 6:
            raise ValueError("the MMDS MAC address has 6 bytes")
        self.mac = bytes(mac)
        self.ipv4 = ipaddress.IPv4Address(ipv4).packed
        self.mmds = mmds
        self.tcp = TcpHandler(
            mmds, MMDS_PORT, max_connections=max_connections, max_pending_resets=max_pending_resets, clock=clock
        )
        self._arp_reply: bytes | None = None
        self._ident = 0
        self.stats = mmds.stats  # shared by every interface's stack
        self._connections_seen = (0, 0)

    # --- guest -> MMDS ------------------------------------------------------------------------
    def detour_frame(self, frame: bytes | memoryview) -> bool:
        """True when the frame was for the MMDS (and is consumed), False to pass it on."""
        try:
            eth = pdu.parse_ethernet(frame)
        except (pdu.PduError, TypeError, ValueError):
            return False
        if eth.ethertype == pdu.ETHERTYPE_ARP:
            if pdu.arp_target(eth.payload) != self.ipv4:
                return False
            self.stats.rx_accepted += 1
            self._arp(eth)
            return True
        if eth.ethertype == pdu.ETHERTYPE_IPV4:
            if pdu.ipv4_destination(eth.payload) != self.ipv4:
                return False
            self.stats.rx_accepted += 1
            self._ipv4(eth)
            self._count_connections()
            return True
        return False

    def _arp(self, eth: pdu.Ethernet) -> None:
        try:
            arp = pdu.parse_arp(eth.payload)
        except pdu.PduError:
            self.stats.rx_bad_eth += 1
            return
        if arp.oper != pdu.ARP_REQUEST:
            self.stats.rx_accepted_unusual += 1
            return
        self._arp_reply = pdu.arp_reply_frame(self.mac, self.ipv4, arp.sha, arp.spa)

    def _ipv4(self, eth: pdu.Ethernet) -> None:
        try:
            ip = pdu.parse_ipv4(eth.payload)
            if ip.protocol != pdu.PROTO_TCP or ip.fragmented:
                self.stats.rx_accepted_unusual += 1
                return
            segment = pdu.parse_tcp(ip.payload)
        except pdu.PduError:
            self.stats.rx_bad_eth += 1
            return
        self.stats.rx_count += 1
        resets = len(self.tcp.resets)
        self.tcp.receive(eth.src, ip.src, segment)
        if len(self.tcp.resets) > resets:
            self.stats.rx_accepted_err += 1

    def _count_connections(self) -> None:
        created, destroyed = self.tcp.connections_created, self.tcp.connections_destroyed
        self.stats.connections_created += created - self._connections_seen[0]
        self.stats.connections_destroyed += destroyed - self._connections_seen[1]
        self._connections_seen = (created, destroyed)

    # --- MMDS -> guest ------------------------------------------------------------------------
    def has_pending(self) -> bool:
        return self._arp_reply is not None or self.tcp.has_pending()

    def write_next_frame(self, buf: memoryview) -> int | None:
        """Write the next frame at the start of ``buf``; its length, or None."""
        if self._arp_reply is not None:
            frame = self._arp_reply
            if len(buf) < len(frame):
                return None
            self._arp_reply = None
            return self._emit(buf, frame)
        room = len(buf) - _TCP_FRAME_OVERHEAD
        if room < 0:
            return None
        out = self.tcp.next_segment(room)
        if out is None:
            return None
        self._ident = (self._ident + 1) & 0xFFFF
        frame = pdu.tcp_frame(self.mac, out.mac, self.ipv4, out.ip, out.header, out.payload, self._ident)
        self._count_connections()
        return self._emit(buf, frame)

    def _emit(self, buf: memoryview, frame: bytes) -> int:
        buf[: len(frame)] = frame
        self.stats.tx_frames += 1
        self.stats.tx_count += 1
        self.stats.tx_bytes += len(frame)
        return len(frame)


__all__ = ["DEFAULT_IPV4", "DEFAULT_MAC", "MMDS_PORT", "MmdsNetworkStack"]
