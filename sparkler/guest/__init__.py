"""Linux guest artifacts built from Debian packages (``sparkler guest build``).

``kernel``  the microVM vmlinux from ``linux-source-6.1`` + our config fragment (``microvm.config``);
``rootfs``  the busybox initramfs and ext4 root image with ``init.sh`` as init;
``build``   cache keys, atomic publish, Debian package checks, the build driver;
``cli``     ``sparkler guest build|path``.
"""
