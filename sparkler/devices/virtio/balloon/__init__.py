"""virtio-balloon: inflate/deflate, statistics and free page reporting queues (device.py)."""
