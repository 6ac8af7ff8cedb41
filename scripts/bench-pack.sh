#!/usr/bin/env bash
# bench-pack.sh -- `rootfs-mount pack` against `tar` of the mount and `tar` of the backing
# folders (issue 14), side by side in one run on one machine.
#
# Usage: sudo scripts/bench-pack.sh [WORKDIR]     (root and /dev/fuse: it also mounts)
#
# Makes (once, kept in WORKDIR, default target/bench-pack) a demo cache with
# DEMO_CACHE_BIG_MB MiB of incompressible bytes per arch in oss/<arch>/bin/bigblob
# (default 512), then times, warm (each contender runs once before it is timed), the
# median of BENCH_RUNS runs (default 5) of:
#   pack           rootfs-mount pack --k8s V -o - | wc -c           (no mount, no FUSE)
#   tar-mount      tar --sort=name ... -cf - -C MOUNT . | wc -c     (a --read-only mount)
#   tar-mount-np   the same on a --read-only --no-passthrough mount (no open round trips)
#   tar-native     tar --sort=name ... -cf - of the backing folders | wc -c
# and prints seconds, GB/s and the speed relative to tar-native (x1.00 = as fast; higher
# is better). tar-native packs the cache's folders as they are (oss/, kube/V/, cri/CRI/,
# registry/): its archives stay compressed, where pack and the mount inflate
# registry.tar.gz and the release tarballs' members, so it packs slightly fewer bytes.
# pack's and tar-mount's outputs are checked to be the same bytes (sha256).
#
# Environment: BENCH_K8S (default v1.23.4), DEMO_CACHE_BIG_MB (default 512),
# BENCH_RUNS (default 5), ROOTFS_MOUNT (the binary; default a fresh release build).

set -euo pipefail
export LC_ALL=C

repo=$(cd -- "$(dirname -- "$0")/.." && pwd -P)
work=${1:-$repo/target/bench-pack}
version=${BENCH_K8S:-v1.23.4}
big_mb=${DEMO_CACHE_BIG_MB:-512}
runs=${BENCH_RUNS:-5}
if ! [[ $runs =~ ^[1-9][0-9]*$ && $big_mb =~ ^[0-9]+$ ]]; then
    echo "bench-pack.sh: BENCH_RUNS must be >= 1 and DEMO_CACHE_BIG_MB a number of MiB" >&2
    exit 2
fi
if [[ $(id -u) -ne 0 || ! -e /dev/fuse ]]; then
    echo "bench-pack.sh: needs root and /dev/fuse (it mounts the tree to compare)" >&2
    exit 2
fi

bin=${ROOTFS_MOUNT:-}
if [[ -z $bin ]]; then
    (cd "$repo" && cargo build --release --quiet)
    bin=$repo/target/release/rootfs-mount
fi

cache=$work/cache
mnt=$work/mnt
mkdir -p "$work" "$mnt"
DEMO_CACHE_BIG_MB=$big_mb bash "$repo/scripts/demo-cache.sh" "$cache" "$version" >/dev/null

mounted() { grep -q " $mnt fuse" /proc/self/mounts; }
unmount() { if mounted; then "$bin" umount "$mnt" || umount -l "$mnt"; fi; }
trap unmount EXIT
unmount

tar_opts=(--sort=name --owner=0 --group=0 --numeric-owner)
cri=$("$bin" render --k8s "$version" --cache "$cache" rootfs/Kubefile |
    sed -n 's/^LABEL cluster.alpha.sealer.io\/container-runtime-type="\(.*\)"$/\1/p')

# time_it CMD...: seconds of one run of CMD (a shell snippet), its output counted.
time_it() {
    local start end
    start=$(date +%s%N)
    bash -c "$1" >/dev/null
    end=$(date +%s%N)
    awk -v ns=$((end - start)) 'BEGIN { printf "%.3f\n", ns / 1e9 }'
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# measure NAME SNIPPET: warm-up run, then the median of $runs runs.
declare -A secs=()
measure() {
    local name=$1 snippet=$2 i
    bash -c "$snippet" >/dev/null
    secs[$name]=$(for ((i = 0; i < runs; i++)); do time_it "$snippet"; done | median)
}

pack="'$bin' pack --k8s $version --cache '$cache' -o - | wc -c"
tar_mount="tar ${tar_opts[*]} -cf - -C '$mnt' . | wc -c"
native="cd '$cache' && tar ${tar_opts[*]} -cf - oss kube/$version cri/$cri registry | wc -c"

bytes=$(bash -c "$pack")
native_bytes=$(bash -c "$native")
measure pack "$pack"
measure tar-native "$native"

"$bin" "$mnt" --k8s "$version" --cache "$cache" --read-only
same_pack=$("$bin" pack --k8s "$version" --cache "$cache" -o - | sha256sum)
same_mount=$(tar "${tar_opts[@]}" -cf - -C "$mnt" . | sha256sum)
if [[ $same_pack != "$same_mount" ]]; then
    echo "bench-pack.sh: pack and tar of the mount differ ($same_pack vs $same_mount)" >&2
    exit 1
fi
measure tar-mount "$tar_mount"
unmount
"$bin" "$mnt" --k8s "$version" --cache "$cache" --read-only --no-passthrough
measure tar-mount-np "$tar_mount"
unmount

echo "rootfs-mount pack vs tar: $version, $((bytes / 1048576)) MiB packed (tar-native: $((native_bytes / 1048576)) MiB), median of $runs warm runs"
printf '%-14s %9s %9s %9s\n' contender seconds 'GB/s' 'vs native'
for name in pack tar-mount tar-mount-np tar-native; do
    awk -v n="$name" -v s="${secs[$name]}" -v b="$bytes" -v nb="$native_bytes" -v ns="${secs[tar-native]}" 'BEGIN {
        if (n == "tar-native") b = nb
        printf "%-14s %9.3f %9.2f %8.2fx\n", n, s, b / s / 1e9, ns / s
    }'
done
awk -v p="${secs[pack]}" -v m="${secs[tar-mount]}" -v q="${secs[tar-mount-np]}" 'BEGIN {
    printf "pack is %.2fx as fast as tar of the mount (%.2fx without passthrough)\n", m / p, q / p
}'
