"""virtio-rng (entropy): one queue filled from the host kernel's CSPRNG (device.py)."""
