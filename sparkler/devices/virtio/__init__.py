"""virtio: the split virtqueue, the device base, the virtio-mmio transport and the devices."""
