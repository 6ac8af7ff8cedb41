#!/usr/bin/env bash
# bench-memory.sh -- the daemon's memory per entry the kernel holds (issue 12 item 4).
#
# Usage: sudo scripts/bench-memory.sh
#
# Makes (or reuses) a cache in MEM_DIR whose registry has the real folder shape (one
# folder per blob and per layer link: 4 entries per blob, tiny files), mounts it, walks
# `rootfs/registry` with `find` (READDIRPLUS: the kernel looks up, and holds, every
# entry), and reads VmRSS and VmHWM from /proc/PID/status of the daemon before and
# after the walk. Prints, per system, the entries walked, RSS before and after, and
# bytes per entry: of the whole RSS (what the issue's target counts) and of the growth
# during the walk (what the entries themselves cost). Then drops the kernel's caches
# (`echo 2 > /proc/sys/vm/drop_caches`: dentries and inodes, so the kernel sends
# FORGET for every entry) and shows the RSS after that.
#
# Systems: rootfs-mount (the default, writable mount), rootfs-mount-ro (--read-only),
# and mergerfs and fuse-overlayfs over the same folder when they are installed (never
# installed by this script).
#
# Environment:
#   MEM_DIR       fixture, mountpoints and logs (default /var/tmp/rootfs-mount-memory)
#   MEM_BLOBS     registry blobs (default 20000: ~80k entries)
#   MEM_SYSTEMS   which systems to run (default: all that are installed)
#   ROOTFS_MOUNT  the binary to measure (default: `cargo build --release` here)
#
# Exit status: 0 when every measurement ran.

set -euo pipefail
export LC_ALL=C

prog=${0##*/}
repo=$(cd -- "$(dirname -- "$0")/.." && pwd -P)
D=${MEM_DIR:-/var/tmp/rootfs-mount-memory}
BLOBS=${MEM_BLOBS:-20000}
VERSION=v1.23.4

die() {
    echo "$prog: error: $*" >&2
    exit 1
}
say() { echo "== $*" >&2; }

[[ $(id -u) == 0 ]] || die "run as root (mounts, drop_caches)"
[[ -e /dev/fuse ]] || die "/dev/fuse is missing"
[[ $BLOBS =~ ^[0-9]+$ ]] || die "MEM_BLOBS must be a number"
command -v python3 >/dev/null || die "python3 is needed to make the fixture"

if [[ -n ${ROOTFS_MOUNT:-} ]]; then
    BIN=$ROOTFS_MOUNT
else
    say "building rootfs-mount (release)"
    (cd "$repo" && cargo build --release --quiet) || die "cargo build --release failed"
    BIN=$repo/target/release/rootfs-mount
fi
[[ -x $BIN ]] || die "no rootfs-mount binary at $BIN"

mkdir -p "$D/mnt" "$D/logs"
D=$(cd -- "$D" && pwd -P)
cache=$D/cache

mounted_below() {
    awk -v b="$D/" 'index($5, b) == 1 { print $5 }' /proc/self/mountinfo | sort -r
}
unmount_all() {
    local m
    for m in $(mounted_below); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
}
trap unmount_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
unmount_all

fixture_id="memory-fixture v1 blobs=$BLOBS version=$VERSION"
if [[ ! -f $D/fixture.done || $(cat "$D/fixture.done") != "$fixture_id" ]]; then
    rm -f "$D/fixture.done"
    say "making the fixture in $cache (once; reused by later runs)"
    "$repo/scripts/demo-cache.sh" "$cache" "$VERSION" >/dev/null
    python3 - "$cache" "$BLOBS" <<'PY'
import hashlib, os, sys

cache, blobs = sys.argv[1], int(sys.argv[2])
v2 = os.path.join(cache, "registry/docker/registry/v2")
for i in range(blobs):
    data = b"blob %d\n" % i
    digest = hashlib.sha256(data).hexdigest()
    link = os.path.join(v2, "repositories/mem/app-%02d/_layers/sha256" % (i % 50), digest)
    os.makedirs(link, exist_ok=True)
    with open(os.path.join(link, "link"), "wb") as f:
        f.write(b"sha256:" + digest.encode())
    folder = os.path.join(v2, "blobs/sha256", digest[:2], digest)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "data"), "wb") as f:
        f.write(data)
PY
    echo "$fixture_id" >"$D/fixture.done"
fi

kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

measure() { # SYSTEM
    local sys=$1 mnt=$D/mnt/$1 pid walk entries rss0 rss1 hwm rss2
    mkdir -p "$mnt"
    walk=$mnt/rootfs/registry
    case $sys in
    rootfs-mount | rootfs-mount-ro)
        local flags=()
        [[ $sys == rootfs-mount-ro ]] && flags=(--read-only)
        "$BIN" "$mnt" --k8s "$VERSION" --arch amd64 --cache "$cache" \
            --log-file "$D/logs/$sys.log" "${flags[@]}" >/dev/null ||
            die "$sys did not mount"
        pid=$("$BIN" status "$mnt" | awk '$1 == "pid:" { print $2; exit }')
        ;;
    mergerfs)
        mkdir -p "$D/branch/rootfs"
        mountpoint -q "$D/branch/rootfs/registry" || {
            mkdir -p "$D/branch/rootfs/registry"
            mount --bind -o ro "$cache/registry" "$D/branch/rootfs/registry"
        }
        mergerfs -o ro,cache.files=full,cache.attr=86400,cache.entry=86400,cache.readdir=true,fsname=mem-mergerfs \
            "$D/branch" "$mnt"
        pid=$(pgrep -n -f -- " $mnt( |\$)" || true)
        ;;
    fuse-overlayfs)
        mkdir -p "$D/branch/rootfs"
        mountpoint -q "$D/branch/rootfs/registry" || {
            mkdir -p "$D/branch/rootfs/registry"
            mount --bind -o ro "$cache/registry" "$D/branch/rootfs/registry"
        }
        fuse-overlayfs -o "lowerdir=$D/branch" "$mnt"
        pid=$(pgrep -n -f -- " $mnt( |\$)" || true)
        ;;
    esac
    [[ -n $pid && -d /proc/$pid ]] || die "$sys: no daemon process found"
    # Forget what an earlier system left in the kernel's caches.
    sync && echo 2 >/proc/sys/vm/drop_caches
    rss0=$(kib "$pid" VmRSS)
    entries=$(find "$walk" | wc -l)
    rss1=$(kib "$pid" VmRSS)
    hwm=$(kib "$pid" VmHWM)
    # The kernel drops its dentries and inodes and sends FORGET for each.
    sync && echo 2 >/proc/sys/vm/drop_caches
    sleep 1
    rss2=$(kib "$pid" VmRSS)
    printf '%-16s %8s %9s %8s %8s %8s %6s %11s\n' "$sys" "$entries" \
        "$((rss0 / 1024))" "$((rss1 / 1024))" "$((hwm / 1024))" \
        "$((rss1 * 1024 / entries))" "$(((rss1 - rss0) * 1024 / entries))" \
        "$((rss2 / 1024))"
    umount "$mnt" || umount -l "$mnt"
}

systems=(rootfs-mount rootfs-mount-ro)
command -v mergerfs >/dev/null && systems+=(mergerfs)
command -v fuse-overlayfs >/dev/null && systems+=(fuse-overlayfs)
[[ -n ${MEM_SYSTEMS:-} ]] && read -r -a systems <<<"$MEM_SYSTEMS"
printf '%-16s %8s %9s %8s %8s %8s %6s %11s\n' system entries "rss0(MB)" \
    "rss(MB)" "hwm(MB)" "B/entry" "B/new" "forgot(MB)"
for sys in "${systems[@]}"; do
    measure "$sys"
done
echo "rss0: before the walk; rss, hwm: after it; B/entry: rss / entries; B/new: growth"
echo "during the walk / entries; forgot: RSS after the kernel dropped its dentries"
echo "(FORGET; rootfs-mount gives freed heap back each time its table has halved)."
