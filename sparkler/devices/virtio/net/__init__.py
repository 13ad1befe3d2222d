"""virtio-net: a tap-backed network device (virtio 1.2 section 5.1)."""
