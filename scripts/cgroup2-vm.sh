#!/bin/sh
# Runs a Node script as root on a pure cgroup v2 host: boots a Debian kernel under qemu (TCG, no
# KVM needed) with cgroup_no_v1=all, shares this machine's root read-only over 9p and runs the
# script in a chroot of it (so dist/ and node are this machine's). The guest has a 256 MiB RAM
# disk /dev/ram0 and a null_blk device for real io.max limits. test/polite/cgroup2-vm.test.ts uses
# it to check the cgroup v2 box detection against a real kernel.
# Usage: scripts/cgroup2-vm.sh /abs/path/to/script.mjs   (that script's folder is shared read-write)
# Exit 0 when the guest script exits 0. Needs root, apt (qemu-system-x86, busybox-static, a
# linux-image package). The first run installs and fetches them (a few minutes); the kernel is
# cached in $W (default /tmp/cg2vm); a run then takes 20 s to a few minutes (TCG).
set -eu
TEST=${1:?node test script}; SHARE=$(dirname "$TEST")
W=${W:-/tmp/cg2vm}; mkdir -p "$W" && cd "$W"
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends qemu-system-x86 busybox-static >/dev/null
KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-6/{print $2; exit}')
[ -d k ] || { apt-get download "$KPKG" >/dev/null 2>&1; dpkg-deb -x ./"$KPKG"_*.deb k; }
M=$(echo k/lib/modules/*/kernel)
rm -rf ir && mkdir -p ir/bin ir/proc ir/sys ir/dev ir/newroot && cp /bin/busybox ir/bin/
MODS="fs/configfs/configfs drivers/block/null_blk/null_blk drivers/block/brd drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci fs/netfs/netfs fs/fscache/fscache net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p"
for m in $MODS; do cp "$M/$m.ko" ir/; done
cat > ir/init <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(for m in $MODS; do basename $m; done | tr '\n' ' '); do
  case \$m in null_blk) insmod /\$m.ko nr_devices=1 gb=1;; brd) insmod /\$m.ko rd_nr=1 rd_size=262144;; *) insmod /\$m.ko;; esac
done
R=/newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro hostroot \$R
mount -t proc proc \$R/proc; mount -t sysfs sys \$R/sys; mount -t devtmpfs dev \$R/dev
mount -t cgroup2 none \$R/sys/fs/cgroup
# /tmp stays the host's (read-only): a checkout under /tmp must stay visible. The shared folder
# (it exists on the host, so its mount point does too) is the writable place, and HOME.
mount -t 9p -o trans=virtio,version=9p2000.L share \$R$SHARE
chroot \$R /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=$SHARE /usr/bin/node $TEST
echo "GUEST_EXIT=\$?"
sync; poweroff -f
INIT
chmod +x ir/init
(cd ir && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > ../initrd.gz)
timeout 600 qemu-system-x86_64 -machine q35 -cpu max -smp 2 -m 2048 -nographic -no-reboot \
  -kernel k/boot/vmlinuz-* -initrd initrd.gz -append "console=ttyS0 quiet panic=-1 cgroup_no_v1=all" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$SHARE",mount_tag=share,security_model=none | tee qemu.log | sed -n '/^\[/!p' | grep -v -e SeaBIOS -e iPXE -e 'Booting from' -e '^\s*$' -e 'Press Ctrl' || true
# The lines shown are only for the reader: grep -v ends with 1 when it shows none (the guest's
# line can share the firmware's "Booting from ROM.." line), which set -e made the script's exit.
# The verdict is the log's. The console may put escape sequences before the line.
grep -aq 'GUEST_EXIT=0' qemu.log
