#!/bin/sh
# Sparkler guest /init (initramfs) and /sbin/init (ext4 rootfs): busybox only.
# Prints the marker line, pokes the boot timer, then powers off.  With `reboot=k` on the
# kernel command line the reset goes through the i8042, which ends the VMM with exit 0.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "SPARKLER-GUEST-UP $(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo)"
# Firecracker's boot timer: a 1-byte write of 123 at 0xc0000000 (only when the VMM maps it).
if [ -c /dev/mem ] && busybox devmem 0xc0000000 8 123 2>/dev/null; then
    echo "SPARKLER-BOOT-TIMER-WRITTEN"
fi
sync
reboot -f
# reboot -f returns only on failure: keep PID 1 alive rather than panic.
while true; do sleep 3600; done
