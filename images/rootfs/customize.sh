#!/usr/bin/env bash
# mmdebstrap customize hook: makes the Debian root at $1 the edge box's. $2 is the aarch64
# edge-agent binary. Runs on the build host; commands inside the root run under qemu-user.
set -euo pipefail
ROOT=$1
AGENT=$2
HERE=$(dirname "$(realpath "$0")")
REPO=$(realpath "$HERE/../..")

# The agent and its GPU worker, each under a user of its own: the agent's unit, and the worker's
# socket, on which systemd starts one worker unit per connection of the agent.
install -m 0755 "$AGENT" "$ROOT/usr/bin/edge-agent"
install -m 0755 "$(dirname "$AGENT")/edge-gpu-worker" "$ROOT/usr/bin/edge-gpu-worker"
install -m 0644 "$HERE/sysusers.conf" "$ROOT/usr/lib/sysusers.d/edge-agent.conf"
chroot "$ROOT" systemd-sysusers
install -m 0644 "$REPO/agent/config/edge-agent.service" "$ROOT/lib/systemd/system/edge-agent.service"
install -m 0644 "$REPO/gpu/config/edge-gpu-worker.socket" "$ROOT/lib/systemd/system/edge-gpu-worker.socket"
install -m 0644 "$REPO/gpu/config/edge-gpu-worker@.service" "$ROOT/lib/systemd/system/edge-gpu-worker@.service"
# The journal's erasure at a factory reset: a root one-shot the agent may start (polkit below).
install -m 0644 "$REPO/agent/config/edge-agent-erase-logs.service" "$ROOT/lib/systemd/system/edge-agent-erase-logs.service"
# A unit whose supplementary group is missing does not start at all: check them here.
for group in input bluetooth render video; do
    chroot "$ROOT" getent group "$group" >/dev/null || { echo "no group $group in the image" >&2; exit 1; }
done
# The config: readable by the agent's group only (a fleet's drop-ins may hold its token).
install -d -m 0750 -g "$(chroot "$ROOT" getent group edge-agent | cut -d: -f3)" "$ROOT/etc/edge-agent"
install -m 0640 -g "$(chroot "$ROOT" getent group edge-agent | cut -d: -f3)" "$HERE/config.toml" \
    "$ROOT/etc/edge-agent/config.toml"
chroot "$ROOT" systemctl enable edge-agent.service edge-gpu-worker.socket
# What the agent may ask of the system over D-Bus (reboot, Wi-Fi), polkit's rule.
install -m 0644 "$HERE/edge-agent.rules" "$ROOT/etc/polkit-1/rules.d/50-edge-agent.rules"

# Networking: DHCP on any wired link (the box's LAN port; virtio-net under QEMU).
install -m 0644 "$HERE/wired.network" "$ROOT/etc/systemd/network/20-wired.network"
chroot "$ROOT" systemctl enable systemd-networkd.service
echo edge-box > "$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tedge-box\n' > "$ROOT/etc/hosts"
printf '/dev/vda\t/\text4\trw,noatime\t0\t1\n' > "$ROOT/etc/fstab"

# Time: systemd-timesyncd (enabled by its package) sets the clock by NTP, and at boot moves it
# forward to the last time it saved, so a box without a battery-backed clock does not start in
# 1970 after its first sync; the agent's unit waits for time-sync.target.

# The journal survives reboots (what happened before a crash is there after it), within 64 MiB of
# the UFS; and goes to the console as well, so that the serial line shows what the box does.
install -d "$ROOT/etc/systemd/journald.conf.d" "$ROOT/var/log/journal"
install -m 0644 "$HERE/journald.conf" "$ROOT/etc/systemd/journald.conf.d/edge-box.conf"

# No way in: root locked, no other accounts, no SSH server installed. Bluetooth is started by the
# agent's configuration, not at boot.
chroot "$ROOT" passwd --lock root >/dev/null
chroot "$ROOT" systemctl disable bluetooth.service >/dev/null 2>&1 || true
# The box is updated as a whole image, never by apt: no apt timers waking it up.
chroot "$ROOT" systemctl disable apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
    >/dev/null 2>&1

# One initramfs, with what a virtio machine needs to mount its root.
sed -i 's/^MODULES=.*/MODULES=list/' "$ROOT/etc/initramfs-tools/initramfs.conf"
printf '%s\n' virtio_pci virtio_blk virtio_net ext4 crc32c_generic >> "$ROOT/etc/initramfs-tools/modules"
chroot "$ROOT" update-initramfs -c -k all

# Smaller image: no package lists or caches.
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin
