#!/usr/bin/env bash
# Boots the image built by images/build.sh in qemu-system-aarch64 (virt machine, Cortex-A76, 2
# cores, 2 GiB, TCG). The box's pairing port 7466 is forwarded to 127.0.0.1:$PAIRING_PORT; user
# networking is restricted, so the box reaches nothing outside QEMU but what NETDEV_EXTRA forwards
# (e.g. `,guestfwd=tcp:10.0.2.100:8443-tcp:127.0.0.1:18443`: a network service on the host). The serial console is this
# terminal (Ctrl-A X quits) unless extra QEMU arguments say otherwise. The NIC gets no option ROM
# (`romfile=`): the kernel is booted directly, and the ROM (efi-virtio.rom) comes only with
# ipxe-qemu, which qemu-system-arm merely recommends and the installer leaves out.
#
#   images/boot.sh [DISK] [QEMU ARGS...]     # DISK default target/image/disk.raw; kernel and
#                                            # initrd are taken from the image directory
set -euo pipefail
cd "$(dirname "$0")/.."
DISK=${1:-target/image/disk.raw}
shift || true
DIR=${IMAGE_DIR:-target/image}
PORT=${PAIRING_PORT:-7466}
[ -f "$DISK" ] || { echo "no image at $DISK: run images/build.sh first" >&2; exit 1; }
console=(-nographic)
[ $# -gt 0 ] && console=(-display none)
exec qemu-system-aarch64 -M virt -cpu cortex-a76 -smp 2 -m 2048 -accel tcg,thread=multi \
    "${console[@]}" \
    -kernel "$DIR/vmlinuz" -initrd "$DIR/initrd.img" \
    -append "root=/dev/vda rw console=ttyAMA0" \
    -drive "file=$DISK,format=raw,if=virtio" \
    -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$PORT-:7466${NETDEV_EXTRA:-}" \
    -device virtio-net-pci,netdev=n0,romfile= \
    "$@"
