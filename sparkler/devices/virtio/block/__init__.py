"""virtio-blk: request parser (request.py), host I/O executor (io.py) and the device (device.py)."""
