"""pytest side of sparkler.testing.netns."""

import pytest

from sparkler.testing.netns import in_netns, netns_available, netns_with_tap

needs_netns = pytest.mark.skipif(
    not netns_available(), reason="network namespaces and taps need root, iproute2 and /dev/net/tun"
)

__all__ = ["in_netns", "needs_netns", "netns_with_tap"]
