#!/usr/bin/env bash
# bench-requests.sh -- FUSE round trips per file and per folder, by request type, for the
# walks scripts/bench.sh times (issue 12). Request counts are deterministic where times
# are not (a shared machine moves every timing), so they are the evidence that a change
# saves round trips.
#
# Usage: sudo scripts/bench-requests.sh
#
# 1. Makes (once, reused) a fixture in REQ_DIR: a demo cache (scripts/demo-cache.sh)
#    with a registry v2 tree of REQ_BLOBS small blobs in the registry's real folder
#    shape (one folder per blob and one per layer link: more folders than files).
# 2. Mounts it freshly (by default the default, writable mount; REQ_MOUNT_ARGS adds
#    flags such as --read-only) after warming the backing folders' caches, then runs, in
#    this order, and takes the daemon's counters (`rootfs-mount status --json`,
#    counters.by_op) after each step:
#      first-find   find rootfs/registry | wc -l   (the first walk of a fresh mount)
#      find         the same again (warm)
#      ls-lR        ls -lR rootfs/registry          (warm)
#      first-tar    tar -cf - rootfs/registry | wc -c (pages not yet cached)
#      tar          the same again (warm: what bench.sh's tar row times, after a warmup)
# 3. Prints, per step, the requests by type, per file and per folder of the tree walked
#    (and the total), the daemon's CPU time for them (user + system, 10 ms resolution)
#    and the step's wall time (indicative only). Saved in
#    REQ_DIR/results/requests-<label>.txt.
#
# Environment:
#   REQ_DIR          fixture, mountpoint and results (default /var/tmp/rootfs-mount-requests)
#   REQ_BLOBS        small registry blobs (default 5000: 10k files, 15k+ folders)
#   REQ_MOUNT_ARGS   extra mount flags (default none: the default, writable mount)
#   REQ_LABEL        name of the results file (default: derived from REQ_MOUNT_ARGS)
#   ROOTFS_MOUNT     the binary to measure (default: `cargo build --release` here)
#
# Needs root (mounting, dropping no caches), /dev/fuse, python3, jq. Takes a few seconds
# after the fixture (first run: ~1 minute).

set -euo pipefail
export LC_ALL=C

prog=${0##*/}
repo=$(cd -- "$(dirname -- "$0")/.." && pwd -P)

D=${REQ_DIR:-/var/tmp/rootfs-mount-requests}
BLOBS=${REQ_BLOBS:-5000}
read -r -a MOUNT_ARGS <<<"${REQ_MOUNT_ARGS:-}"
LABEL=${REQ_LABEL:-$(echo "default ${REQ_MOUNT_ARGS:-}" | tr -cs 'a-z0-9' '-' | sed 's/-*$//')}
VERSION=v1.23.4

die() {
    echo "$prog: error: $*" >&2
    exit 1
}
say() { echo "== $*" >&2; }

[[ $(id -u) == 0 ]] || die "run as root (mounting needs it)"
[[ -e /dev/fuse ]] || die "/dev/fuse is missing"
[[ $BLOBS =~ ^[1-9][0-9]*$ ]] || die "REQ_BLOBS must be a positive number"
command -v python3 >/dev/null || die "python3 is needed to make the fixture"
command -v jq >/dev/null || die "jq is needed (apt-get install jq)"

if [[ -n ${ROOTFS_MOUNT:-} ]]; then
    BIN=$ROOTFS_MOUNT
else
    say "building rootfs-mount (release)"
    (cd "$repo" && cargo build --release --quiet) || die "cargo build --release failed"
    BIN=$repo/target/release/rootfs-mount
fi
[[ -x $BIN ]] || die "no rootfs-mount binary at $BIN"

mkdir -p "$D/results" "$D/logs" "$D/mnt/m"
D=$(cd -- "$D" && pwd -P)
cache=$D/cache
mnt=$D/mnt/m

cleanup() {
    if mountpoint -q "$mnt" 2>/dev/null; then
        "$BIN" umount "$mnt" >/dev/null 2>&1 || umount "$mnt" 2>/dev/null || umount -l "$mnt" || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
cleanup

fixture_id="requests-fixture v1 blobs=$BLOBS version=$VERSION"
if [[ ! -f $D/fixture.done || $(cat "$D/fixture.done") != "$fixture_id" ]]; then
    rm -f "$D/fixture.done"
    rm -rf "$cache"
    say "making the fixture in $cache (once)"
    "$repo/scripts/demo-cache.sh" "$cache" "$VERSION" >/dev/null
    python3 - "$cache" "$BLOBS" <<'PY'
import hashlib, math, os, random, sys

cache, blobs = sys.argv[1], int(sys.argv[2])
rng = random.Random("rootfs-mount-requests")
pool = rng.randbytes(1 << 20)
v2 = os.path.join(cache, "registry/docker/registry/v2")

def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)

# The registry's shape: blobs/sha256/<2 hex>/<digest>/data and
# repositories/<name>/_layers/sha256/<digest>/link, 256 B .. 128 KiB, log-uniform.
for i in range(blobs):
    size = int(math.exp(rng.uniform(math.log(256), math.log(128 << 10))))
    off = rng.randrange(len(pool) - size)
    data = b"blob %d\n" % i + pool[off : off + size]
    digest = hashlib.sha256(data).hexdigest()
    write(os.path.join(v2, "blobs/sha256", digest[:2], digest, "data"), data)
    link = os.path.join(v2, "repositories", "bench/app-%02d" % (i % 50), "_layers/sha256", digest, "link")
    write(link, b"sha256:" + digest.encode())
PY
    echo "$fixture_id" >"$D/fixture.done"
fi

walk_native=$cache/registry
files=$(find "$walk_native" -type f | wc -l)
dirs=$(find "$walk_native" -type d | wc -l)
# The backing folders' caches warm, as on a build machine that used them before.
find "$walk_native" -type f -print0 | xargs -0 cat >/dev/null

say "mounting (${MOUNT_ARGS[*]:-default, writable})"
"$BIN" "$mnt" --k8s "$VERSION" --arch amd64 --cache "$cache" --log-file "$D/logs/$LABEL.log" \
    "${MOUNT_ARGS[@]}" || die "mount failed (see $D/logs/$LABEL.log)"
mountpoint -q "$mnt" || die "nothing mounted on $mnt"

# The daemon's counters by request type, as `type count` lines (refreshed once a
# second; a binary without counts by type gives its total as `all`), and its CPU time
# (user + system, in clock ticks) as `daemon-cpu-ticks`.
pid=$("$BIN" status "$mnt" | awk '$1 == "pid:" { print $2; exit }')
[[ -n $pid ]] || die "no daemon pid from rootfs-mount status"
counters() {
    sleep 1.2
    "$BIN" status "$mnt" --json |
        jq -r '.mounts[0].counters | (.by_op // {"all": .requests}) | to_entries[] | "\(.key) \(.value)"'
    awk '{ print "daemon-cpu-ticks", $14 + $15 }' "/proc/$pid/stat"
}
ticks=$(getconf CLK_TCK)

out=$D/results/requests-$LABEL.txt
{
    echo "rootfs-mount requests -- $(date -u +%Y-%m-%dT%H:%MZ), $(uname -r), mount: ${MOUNT_ARGS[*]:-default (writable)}"
    echo "tree walked: rootfs/registry, $files files, $dirs folders ($BLOBS blobs)"
    echo "per file = count / files; per folder = count / folders; wall times are indicative"
} >"$out"

before=$(counters)
step() { # NAME CMD...
    local name=$1 t0 t1 after
    shift
    t0=$(date +%s.%N)
    (cd "$mnt" && "$@") >/dev/null
    t1=$(date +%s.%N)
    after=$(counters)
    {
        echo
        awk -v n="$name" -v a="$t0" -v b="$t1" 'BEGIN { printf "%s (%.3f s)\n", n, b - a }'
        printf '  %-12s %9s %9s %10s\n' type count per-file per-folder
        join -a 2 -e 0 -o 2.1,1.2,2.2 <(echo "$before" | sort) <(echo "$after" | sort) |
            awk -v f="$files" -v d="$dirs" -v hz="$ticks" '
                $1 == "daemon-cpu-ticks" { cpu = ($3 - $2) * 1000 / hz; next }
                { n = $3 - $2; if (n > 0) { t += n; printf "  %-12s %9d %9.2f %10.2f\n", $1, n, n / f, n / d } }
                END {
                    printf "  %-12s %9d %9.2f %10.2f\n", "total", t, t / f, t / d
                    printf "  daemon CPU: %d ms (%.1f us per request)\n", cpu, t ? cpu * 1000 / t : 0
                }'
    } >>"$out"
    before=$after
}

step first-find sh -c 'find rootfs/registry | wc -l'
step find sh -c 'find rootfs/registry | wc -l'
step ls-lR ls -lR rootfs/registry
step first-tar sh -c 'tar -cf - rootfs/registry | wc -c'
step tar sh -c 'tar -cf - rootfs/registry | wc -c'
cat "$out"
