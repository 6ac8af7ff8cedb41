#!/usr/bin/env bash
# bench-archives.sh -- what serving archives in place costs (issue 3, docs/DESIGN.md §4).
#
# Usage: sudo scripts/bench-archives.sh [WORKDIR]     (root and /dev/fuse: it mounts)
#
# Makes (once, kept in WORKDIR, default target/bench-archives) a cache whose
# oss/amd64/bin/big.tar.gz holds one member of BENCH_MEMBER_MB MiB (default 500) made of
# the machine's own executables and libraries (so it compresses like real binaries), and
# measures, side by side in one run:
#   1. reading the last 1 MiB of the member through the mount
#        - cold index: no index yet (the first need builds it: one pass over the archive)
#        - warm index: a new mount, the index reused from CACHE/index
#      against `tar -xzOf ARCHIVE MEMBER | tail -c 1M`;
#   2. random 1 MiB reads through the mount, warm index (mean latency);
#   3. sequential read of the whole member through the mount against `gunzip -c`;
#   4. the index size as a fraction of the archive, and the daemon's RSS after all that.
# The mounts of steps 2 and 3 are fresh, so the kernel's page cache of the mount holds
# nothing; the archive itself is in the page cache for every contender.
#
# Environment: BENCH_MEMBER_MB (default 500), BENCH_BIN (default: builds
# target/release/rootfs-mount).

set -euo pipefail
export LC_ALL=C

repo=$(cd -- "$(dirname -- "$0")/.." && pwd -P)
work=${1:-$repo/target/bench-archives}
member_mb=${BENCH_MEMBER_MB:-500}
if ! [[ $member_mb =~ ^[0-9]+$ ]] || ((member_mb < 2)); then
    echo "bench-archives.sh: BENCH_MEMBER_MB must be an integer >= 2" >&2
    exit 2
fi

bin=${BENCH_BIN:-}
if [[ -z $bin ]]; then
    (cd "$repo" && cargo build --release --quiet)
    bin=$repo/target/release/rootfs-mount
fi

cache=$work/cache
mnt=$work/mnt
archive=$cache/oss/amd64/bin/big.tar.gz
stamp=$work/member-$member_mb.done
mkdir -p "$work" "$mnt" "$cache/oss/amd64/bin"

# ---------------------------------------------------------------- the archive

if [[ ! -f $stamp || ! -f $archive ]]; then
    echo "making a ${member_mb} MiB member from this machine's binaries (once) ..."
    rm -f "$stamp" "$archive"
    stage=$work/stage
    rm -rf "$stage"
    mkdir -p "$stage/pkg"
    # The machine's executables and libraries, over and over, cut to size.
    mapfile -t sources < <(find /usr/bin /usr/lib/x86_64-linux-gnu /usr/lib -maxdepth 2 -type f -size +64k 2>/dev/null | sort | head -2000)
    if ((${#sources[@]} == 0)); then
        echo "bench-archives.sh: no binaries found to build the member from" >&2
        exit 1
    fi
    # The loop ends when head has enough and cat dies of SIGPIPE.
    (while cat -- "${sources[@]}" 2>/dev/null; do :; done) |
        head -c $((member_mb * 1024 * 1024)) >"$stage/pkg/big.bin" || true
    if (($(stat -c %s "$stage/pkg/big.bin") != member_mb * 1024 * 1024)); then
        echo "bench-archives.sh: could not make a ${member_mb} MiB member" >&2
        exit 1
    fi
    chmod 0755 "$stage/pkg/big.bin"
    tar -C "$stage" -cf - pkg | gzip -6 >"$archive.tmp"
    mv "$archive.tmp" "$archive"
    rm -rf "$stage"
    touch "$stamp"
fi
member=pkg/big.bin
member_size=$(tar -tvzf "$archive" "$member" | awk '{print $3}')

# ---------------------------------------------------------------- helpers

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
mount_it() {
    "$bin" "$mnt" --k8s v1.23.4 --arch amd64 --cache "$cache" --allow-missing --read-only \
        --log-file "$work/daemon.log"
}
unmount_it() {
    if grep -q " $mnt " /proc/self/mounts; then
        "$bin" umount "$mnt" || umount -l "$mnt"
    fi
}
trap unmount_it EXIT
daemon_rss_kib() {
    local pid
    pid=$(ps -eo pid=,args= | awk -v m="$mnt" '$2 ~ /rootfs-mount$/ && $3 == m { print $1; exit }')
    if [[ -n $pid ]]; then ps -o rss= -p "$pid" | tr -d ' '; else echo "?"; fi
}
last_mib_through_mount() {
    tail -c 1048576 "$mnt/amd64/bin/big.bin" | cksum
}

unmount_it
sync
echo "archive: $(stat -c %s "$archive") bytes compressed, member $member_size bytes"
cat "$archive" >/dev/null # the archive in the page cache for every contender

# ---------------------------------------------------------------- 1. the last MiB

t0=$(now)
ref=$(tar -xzOf "$archive" "$member" | tail -c 1048576 | cksum)
t1=$(now)
baseline=$(elapsed "$t0" "$t1")

rm -rf "$cache/index"
mount_it
t0=$(now)
got=$(last_mib_through_mount)
t1=$(now)
cold=$(elapsed "$t0" "$t1")
unmount_it
[[ $got == "$ref" ]] || { echo "bench-archives.sh: the last MiB differs (cold index)" >&2; exit 1; }

mount_it
t0=$(now)
got=$(last_mib_through_mount)
t1=$(now)
warm=$(elapsed "$t0" "$t1")
[[ $got == "$ref" ]] || { echo "bench-archives.sh: the last MiB differs (warm index)" >&2; exit 1; }

# ---------------------------------------------------------------- 2. random MiB reads

reads=20
t0=$(now)
for i in $(seq 1 $reads); do
    off=$(( (i * 7919 * 1048576 + i * 12345) % (member_size - 1048576) ))
    dd if="$mnt/amd64/bin/big.bin" of=/dev/null bs=1M count=1 iflag=skip_bytes skip="$off" status=none
done
t1=$(now)
random_ms=$(awk -v a="$t0" -v b="$t1" -v n="$reads" 'BEGIN { printf "%.1f", (b - a) * 1000 / n }')
unmount_it

# ---------------------------------------------------------------- 3. sequential

t0=$(now)
gunzip -c "$archive" >/dev/null
t1=$(now)
gunzip_s=$(elapsed "$t0" "$t1")

mount_it
t0=$(now)
cat "$mnt/amd64/bin/big.bin" >/dev/null
t1=$(now)
seq_s=$(elapsed "$t0" "$t1")
rss=$(daemon_rss_kib)
unmount_it

# ---------------------------------------------------------------- 4. index size

index_bytes=$(find "$cache/index" -name 'big.tar.gz-*.gzidx' -printf '%s\n' | head -1)
archive_bytes=$(stat -c %s "$archive")
tar_bytes=$(gzip -l "$archive" | awk 'NR == 2 { print $2 }')

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
rate() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / 1048576 / s }'; }

echo
echo "member: $(mib "$member_size") MiB; archive $(mib "$archive_bytes") MiB (gzip -6)"
printf '%-58s %10s\n' "last 1 MiB of the member" "seconds"
printf '  %-56s %10s\n' "tar -xzOf ARCHIVE MEMBER | tail -c 1M" "$baseline"
printf '  %-56s %10s\n' "mount, cold index (builds it: one pass)" "$cold"
printf '  %-56s %10s\n' "mount, warm index (new mount, index reused)" "$warm"
printf '%-58s %10s\n' "random 1 MiB reads, warm index, mean of $reads (ms)" "$random_ms"
printf '%-58s %10s\n' "sequential read of the member" "MiB/s"
printf '  %-56s %10s\n' "gunzip -c ARCHIVE (whole tar, $(mib "$tar_bytes") MiB)" "$(rate "$tar_bytes" "$gunzip_s")"
printf '  %-56s %10s\n' "cat MOUNT/amd64/bin/big.bin" "$(rate "$member_size" "$seq_s")"
printf '%-58s %10s\n' "index size (bytes)" "$index_bytes"
awk -v i="$index_bytes" -v a="$archive_bytes" -v t="$tar_bytes" 'BEGIN {
    printf "  %-56s %9.2f%%\n", "of the archive", 100 * i / a
    printf "  %-56s %9.2f%%\n", "of the decompressed tar", 100 * i / t }'
printf '%-58s %10s\n' "daemon RSS after the sequential read (KiB)" "$rss"
