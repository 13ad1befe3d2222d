"""Host-side networking helpers (``sparkler net``): taps, network namespaces, NAT."""
