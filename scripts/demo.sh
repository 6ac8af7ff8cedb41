#!/bin/bash
# Builds rootfs-mount, makes the offline demo cache and mounts the build directory of a
# base ClusterImage on it:  sudo bash scripts/demo.sh [VERSION] (default v1.23.4).
# MOUNTPOINT (default /mnt/build) and DEMO_CACHE (default target/demo-cache) override.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
version=${1:-v1.23.4}
mnt=${MOUNTPOINT:-/mnt/build}
cache=${DEMO_CACHE:-$repo/target/demo-cache}
bin=$repo/target/release/rootfs-mount

cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
bash "$repo/scripts/demo-cache.sh" "$cache" v1.23.4 v1.24.0 v1.27.16 v1.31.1 "$version"

# A mount left by an earlier run (live or stale) is replaced.
if grep -q " $mnt fuse" /proc/mounts; then
    "$bin" umount "$mnt"
fi
mkdir -p "$mnt"
"$bin" "$mnt" --k8s "$version" --cache "$cache"

echo
echo "== the build directory (first levels)"
find "$mnt" -maxdepth 3 -not -path "$mnt/rootfs/registry/*" | sort
echo
echo "== rootfs/etc/kubeadm.yml (rendered for $version)"
sed -n '1,30p' "$mnt/rootfs/etc/kubeadm.yml"
echo
echo "Mounted on $mnt. Try: tar -cf - -C $mnt . | tar -tvf - | head"
echo "Unmount with: $bin umount $mnt"
