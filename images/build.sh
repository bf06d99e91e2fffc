#!/usr/bin/env bash
# Builds the edge box's arm64 system image: Debian 12 (bookworm) with systemd, the cross-built
# release edge-agent under its systemd unit, lavapipe for Vulkan and BlueZ's libraries. Boots in
# qemu-system-aarch64 (images/boot.sh); tested by images/test.sh.
#
#   images/build.sh [OUT]      # default target/image: disk.raw (ext4 root), vmlinuz, initrd.img
#
# No account can log in: root is locked and there is no SSH. The device's identity key and its
# pairing setup code are made by the agent on first boot, on the device, never in the image.
# Needs root, mmdebstrap, qemu-user-static (binfmt) and the aarch64 cross toolchain (cross/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-target/image}")
SIZE=${IMAGE_SIZE:-2G}
MIRROR=${IMAGE_MIRROR:-http://deb.debian.org/debian}

say() { printf '\n== %s\n' "$*"; }

say "edge-agent for aarch64 (release)"
bash cross/build.sh >/dev/null
AGENT=$PWD/target/aarch64-unknown-linux-gnu/release/edge-agent

say "root filesystem (mmdebstrap, arm64, bookworm)"
mkdir -p "$OUT"
ROOT=$(mktemp -d "$OUT/root.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT
# update-initramfs is a no-op while packages install (under emulation it would run three times,
# some 15 minutes) and runs once at the end with only the modules a virtio machine needs.
mmdebstrap --mode=root --variant=apt --architectures=arm64 \
    --include=systemd-sysv,udev,kmod,e2fsprogs,linux-image-arm64,initramfs-tools,libvulkan1,mesa-vulkan-drivers,libdbus-1-3,bluez,iproute2,ca-certificates,systemd-timesyncd,polkitd \
    --essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs && ln -sf /bin/true "$1/usr/sbin/update-initramfs"' \
    --customize-hook='rm "$1/usr/sbin/update-initramfs" && chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs' \
    --customize-hook="$PWD/images/rootfs/customize.sh \"\$1\" \"$AGENT\"" \
    bookworm "$ROOT" "$MIRROR"

say "kernel, initrd and disk"
cp "$ROOT"/boot/vmlinuz-* "$OUT/vmlinuz"
cp "$ROOT"/boot/initrd.img-* "$OUT/initrd.img"
rm -f "$OUT/disk.raw"
mkfs.ext4 -q -F -L rootfs -d "$ROOT" "$OUT/disk.raw" "$SIZE"
ls -l "$OUT"/{disk.raw,vmlinuz,initrd.img}
