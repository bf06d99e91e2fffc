#!/usr/bin/env bash
# Installs what building for and running on aarch64 needs, on Debian 12 x86_64. Safe to run twice.
#  - the cross linker and libc headers (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross);
#  - qemu-user (qemu-aarch64-static) and its binfmt_misc handler, so that an aarch64 test can
#    spawn the aarch64 agent binary as a child process;
#  - arm64 multiarch runtime libraries: libc6:arm64 (the loader qemu runs), libvulkan1:arm64 and
#    mesa-vulkan-drivers:arm64 (lavapipe), so GPU tests run for aarch64 too; libdbus-1-dev:arm64,
#    which the Bluetooth LE transport (bluer) links;
#  - the Rust target from rust-toolchain.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/env.sh

ensure_apt gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
    APT_UPDATED=""
fi
ensure_apt libc6:arm64 libvulkan1:arm64 mesa-vulkan-drivers:arm64 libdbus-1-dev:arm64
ensure_rust
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"

# binfmt_misc: without it an aarch64 process cannot exec another aarch64 program.
BINFMT=/proc/sys/fs/binfmt_misc
[ -e "$BINFMT/register" ] || $SUDO mount -t binfmt_misc binfmt_misc "$BINFMT"
if [ ! -e "$BINFMT/qemu-aarch64" ]; then
    $SUDO /usr/lib/systemd/systemd-binfmt /usr/lib/binfmt.d/qemu-aarch64.conf
fi
grep -qx enabled "$BINFMT/qemu-aarch64" || { echo "binfmt handler qemu-aarch64 is not enabled" >&2; exit 1; }
