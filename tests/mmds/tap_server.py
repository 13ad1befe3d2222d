"""Test helper, run inside a network namespace: serve MMDS on a fresh tap with MmdsNetworkStack.

    python tap_server.py TAP VERSION SECONDS < store.json

The namespace's own Linux TCP/IP stack plays the guest: frames the kernel sends out of the tap
are handed to ``detour_frame``; the stack's replies are written back into the tap. Prints
``ready`` once the tap exists, then serves for SECONDS and prints the MMDS statistics as JSON.
"""

import fcntl
import json
import os
import select
import struct
import sys
import time

from sparkler.config.mmds import MmdsConfig
from sparkler.mmds.imds import Mmds
from sparkler.mmds.ns import DEFAULT_MAC, MmdsNetworkStack

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def main() -> None:
    name, version, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    mmds = Mmds(instance_id="tap-test")
    mmds.configure(MmdsConfig(network_interfaces=["eth0"], version=version))
    mmds.store.put(json.load(sys.stdin))
    stack = MmdsNetworkStack(DEFAULT_MAC, "169.254.169.254", mmds)
    print("ready", flush=True)
    rx = bytearray(65536)
    tx = memoryview(bytearray(2048))
    passed_on = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], 0.02)
        if readable:
            n = os.readv(fd, [rx])
            if not stack.detour_frame(memoryview(rx)[:n]):
                passed_on += 1  # IPv6 neighbour discovery and the like: would go to the tap
        while stack.has_pending():
            n = stack.write_next_frame(tx)
            if n is None:
                break
            os.write(fd, tx[:n])
    print(json.dumps({**mmds.statistics(), "passed_on": passed_on}), flush=True)


if __name__ == "__main__":
    main()
