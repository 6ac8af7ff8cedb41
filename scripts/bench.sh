#!/usr/bin/env bash
# bench.sh -- rootfs-mount side by side with native reads, the kernel's overlayfs,
# mergerfs and fuse-overlayfs (docs/DESIGN.md §7), in one run on one machine.
#
# Usage: sudo scripts/bench.sh
#
# 1. Makes (or reuses) a large fixture in BENCH_DIR: an OSS cache in the docs/DESIGN.md §4
#    layout (scripts/demo-cache.sh for the skeleton), plus a registry v2 tree of
#    BENCH_BLOBS small blobs (two files each: blob data and a layer link, so 40k+ files
#    by default), six 256 MiB layer blobs and one 2 GiB blob, and binaries of 24-120 MB
#    in oss/amd64/bin.
# 2. Presents the same folders as union branches for mergerfs and fuse-overlayfs
#    (read-only bind mounts under BENCH_DIR/layers, so that their trees have the same
#    paths as rootfs-mount's: rootfs/registry, amd64/bin, amd64/cri, rootfs).
# 3. Measures, one system at a time (each freshly mounted, unmounted after its rows, so
#    that no two page caches compete for memory):
#      native               the backing folders themselves
#      rootfs-mount         --read-only: FUSE passthrough where the kernel has it
#      rootfs-mount-pread   --read-only --no-passthrough: the daemon reads (pread), the
#                           kernel opens files without asking it
#      rootfs-mount-rw      the default mount, the one users get without flags
#      (default mount)      (writable, scratch upper layer): the daemon reads, files
#                           are opened through it
#      overlayfs            the kernel's overlayfs over the same folders, read-only:
#                           the ceiling (`mount -t overlay -o ro,lowerdir=...` at each
#                           place a branch is mounted, on a tmpfs skeleton: overlayfs
#                           does not cross the branches' bind mounts)
#      mergerfs             with its caching options on (see MERGERFS_OPTS)
#      fuse-overlayfs       lower layers only (read-only)
#    rows: mount ready time, `find | wc -l` over the registry (cold: caches dropped with
#    `echo 3 > /proc/sys/vm/drop_caches`; first walk: on a fresh mount, remounted
#    before each run, with the backing folders' caches warm, as every build starts;
#    warm), `ls -lR` (warm), sequential read of the
#    2 GiB blob (cold and warm), parallel random 4 KiB reads of it (fio, 4 jobs, warm),
#    `tar -cf - rootfs/registry amd64/bin | wc -c` (warm), `sha256sum` of amd64/bin
#    (warm), and the daemon's RSS after the `ls -lR` walks.
# 4. Prints one table of medians, each with its speed relative to native (x1.00 = as
#    fast as native; times are inverted so that higher is better everywhere), then the
#    docs/DESIGN.md §7 targets as met or missed. The table is also saved in
#    BENCH_DIR/results/table.txt, raw numbers in results.tsv, hyperfine/fio JSON beside.
#
# Needs root (mounts, drop_caches, passthrough), /dev/fuse, python3, cargo (unless
# ROOTFS_MOUNT is given); installs mergerfs, fuse-overlayfs, fio and hyperfine with
# apt-get when missing. First run: ~5 GB written to BENCH_DIR; a run takes ~10 minutes
# on 2 cores.
#
# Environment:
#   BENCH_DIR      fixture, mountpoints, logs and results
#                  (default /var/tmp/rootfs-mount-bench)
#   BENCH_BLOBS    small registry blobs (default 20000)
#   BENCH_RUNS     timed runs per cold cell, median shown (default 3)
#   BENCH_WARM_RUNS  timed runs per warm cell, after one untimed (default 5)
#   BENCH_SYSTEMS  which columns to run (default: all seven; names as in the table:
#                  native rootfs-mount rootfs-mount-pread rootfs-mount-rw overlayfs
#                  mergerfs fuse-overlayfs)
#   BENCH_ROWS     which rows to measure (default: all: mount find_cold find_first
#                  find_warm lslr seq_cold seq_warm rand4k tar_first tar sha); the
#                  others show "-"
#   BENCH_HALT_POLL_NS  on a VM guest with the haltpoll cpuidle driver: the
#                  guest_halt_poll_ns to run with (restored at exit). Every FUSE round
#                  trip wakes two vCPUs; how long an idle vCPU polls before halting sets
#                  what a wake-up costs (README, "Round trips on virtual machines").
#                  Default: the machine's setting, printed in the table's header.
#   ROOTFS_MOUNT   the binary to measure (default: `cargo build --release` here)
#
# Exit status: 0 when every measurement ran (targets missed are reported, not fatal).

set -euo pipefail
export LC_ALL=C

prog=${0##*/}
repo=$(cd -- "$(dirname -- "$0")/.." && pwd -P)

B=${BENCH_DIR:-/var/tmp/rootfs-mount-bench}
BLOBS=${BENCH_BLOBS:-20000}
RUNS=${BENCH_RUNS:-3}
WARM_RUNS=${BENCH_WARM_RUNS:-5}
SYSTEMS=${BENCH_SYSTEMS:-native rootfs-mount rootfs-mount-pread rootfs-mount-rw overlayfs mergerfs fuse-overlayfs}
ROWS=${BENCH_ROWS:-mount find_cold find_first find_warm lslr seq_cold seq_warm rand4k tar_first tar sha}
for row in $ROWS; do
    case $row in
    mount | find_cold | find_first | find_warm | lslr | seq_cold | seq_warm | rand4k | tar_first | tar | sha) ;;
    *) echo "${0##*/}: error: unknown row '$row' in BENCH_ROWS" >&2 && exit 1 ;;
    esac
done
want() { [[ " $ROWS " == *" $1 "* ]]; }
VERSION=v1.23.4
MERGERFS_OPTS=ro,category.search=ff,cache.files=full,cache.attr=86400,cache.entry=86400,cache.negative_entry=86400,cache.readdir=true,cache.statfs=86400,xattr=nosys,dropcacheonclose=false

die() {
    echo "$prog: error: $*" >&2
    exit 1
}
say() { echo "== $*" >&2; }

[[ $(id -u) == 0 ]] || die "run as root (mounts, drop_caches, FUSE passthrough)"
[[ -e /dev/fuse ]] || die "/dev/fuse is missing"
[[ $BLOBS =~ ^[0-9]+$ && $RUNS =~ ^[1-9][0-9]*$ && $WARM_RUNS =~ ^[1-9][0-9]*$ ]] ||
    die "BENCH_BLOBS, BENCH_RUNS and BENCH_WARM_RUNS must be numbers"
command -v python3 >/dev/null || die "python3 is needed to make the fixture"

# ---------------------------------------------------------------- tools

need=()
command -v mergerfs >/dev/null || need+=(mergerfs)
command -v fuse-overlayfs >/dev/null || need+=(fuse-overlayfs)
command -v fio >/dev/null || need+=(fio)
command -v hyperfine >/dev/null || need+=(hyperfine)
command -v jq >/dev/null || need+=(jq)
if ((${#need[@]})); then
    say "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" >/dev/null ||
        die "apt-get install ${need[*]} failed"
fi

if [[ -n ${ROOTFS_MOUNT:-} ]]; then
    BIN=$ROOTFS_MOUNT
else
    say "building rootfs-mount (release)"
    (cd "$repo" && cargo build --release --quiet) || die "cargo build --release failed"
    BIN=$repo/target/release/rootfs-mount
fi
[[ -x $BIN ]] || die "no rootfs-mount binary at $BIN"

mkdir -p "$B"
B=$(cd -- "$B" && pwd -P)
cache=$B/cache
results=$B/results
logs=$B/logs
mkdir -p "$results" "$logs" "$B/mnt"

# ---------------------------------------------------------------- cleanup

# Everything mounted below $B, deepest first (a killed earlier run leaves some behind).
mounted_below() {
    awk -v b="$B/" 'index($5, b) == 1 { print $5 }' /proc/self/mountinfo | sort -r
}
unmount_all() {
    local m
    for m in $(mounted_below); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
}
# The guest's halt polling, set for the run when BENCH_HALT_POLL_NS asks, restored at exit.
halt_poll=/sys/module/haltpoll/parameters/guest_halt_poll_ns
halt_poll_before=""
restore_halt_poll() {
    if [[ -n $halt_poll_before ]]; then echo "$halt_poll_before" >"$halt_poll" || true; fi
}
trap 'unmount_all; restore_halt_poll' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
unmount_all
if [[ -n ${BENCH_HALT_POLL_NS:-} ]]; then
    [[ -w $halt_poll ]] || die "BENCH_HALT_POLL_NS: no $halt_poll here (not a haltpoll guest)"
    halt_poll_before=$(cat "$halt_poll")
    echo "$BENCH_HALT_POLL_NS" >"$halt_poll" || die "cannot set $halt_poll"
fi
cpuidle_driver=$(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo none)
if [[ -r $halt_poll ]]; then
    vcpu_idle="cpuidle $cpuidle_driver, guest_halt_poll_ns=$(cat "$halt_poll")"
else
    vcpu_idle="cpuidle $cpuidle_driver"
fi

drop_caches_cmd='sync && echo 3 > /proc/sys/vm/drop_caches' # as hyperfine --prepare

# ---------------------------------------------------------------- fixture

fixture_id="bench-fixture v1 blobs=$BLOBS version=$VERSION"
if [[ ! -f $B/fixture.done || $(cat "$B/fixture.done") != "$fixture_id" ]]; then
    rm -f "$B/fixture.done"
    say "making the fixture in $cache (once; reused by later runs)"
    "$repo/scripts/demo-cache.sh" "$cache" "$VERSION" >/dev/null
    python3 - "$cache" "$BLOBS" <<'PY'
import hashlib, math, os, random, sys

cache, blobs = sys.argv[1], int(sys.argv[2])
rng = random.Random("rootfs-mount-bench")  # str seeds are stable across runs
pool = rng.randbytes(16 << 20)
v2 = os.path.join(cache, "registry/docker/registry/v2")

def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)

def write_big(path, size, seed):
    """`size` bytes, 16 MiB chunks of the pool rotated by a per-chunk offset."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    r = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            k = r.randrange(len(pool))
            chunk = (pool[k:] + pool[:k])[: min(left, len(pool))]
            f.write(chunk)
            left -= len(chunk)

def blob(digest, repo_name):
    link = os.path.join(v2, "repositories", repo_name, "_layers/sha256", digest, "link")
    write(link, b"sha256:" + digest.encode())
    return os.path.join(v2, "blobs/sha256", digest[:2], digest, "data")

# Small blobs (manifests, configs, small layers): 256 B .. 128 KiB, log-uniform.
for i in range(blobs):
    size = int(math.exp(rng.uniform(math.log(256), math.log(128 << 10))))
    off = rng.randrange(len(pool) - size)
    data = b"blob %d\n" % i + pool[off : off + size]
    digest = hashlib.sha256(data).hexdigest()
    write(blob(digest, "bench/app-%02d" % (i % 50)), data)

# Large layer blobs, named by the digest of a label (not of their bytes: hashing
# gigabytes here would only slow the fixture down).
def fake_digest(label):
    return hashlib.sha256(label.encode()).hexdigest()

for i in range(6):
    write_big(blob(fake_digest("layer-%d" % i), "bench/big"), 256 << 20, "layer-%d" % i)
seq = blob(fake_digest("seq-2g"), "bench/big")
write_big(seq, 2 << 30, "seq-2g")

# Binaries of 24..120 MB.
for name, mb in [("etcd", 24), ("helm", 48), ("calicoctl", 64), ("kube-apiserver", 120)]:
    write_big(os.path.join(cache, "oss/amd64/bin", name), mb * 1000 * 1000, name)
    os.chmod(os.path.join(cache, "oss/amd64/bin", name), 0o755)

with open(os.path.join(os.path.dirname(cache), "fixture.env"), "w") as f:
    f.write("seq_rel=%s\n" % os.path.relpath(seq, os.path.join(cache, "registry")))
PY
    echo "$fixture_id" >"$B/fixture.done"
fi
seq_rel=
# shellcheck source=/dev/null
. "$B/fixture.env" # sets seq_rel: the 2 GiB blob, relative to the registry root
[[ -f $cache/registry/$seq_rel ]] || die "fixture is incomplete: remove $B/fixture.done and rerun"

# ---------------------------------------------------------------- union branches

# name:path-in-tree:source, highest first.
branches=(
    "ctx:rootfs:$repo/contexts/rootfs"
    "registry:rootfs/registry:$cache/registry"
    "cri:amd64/cri:$cache/cri/docker/amd64"
    "kube:amd64/bin:$cache/kube/$VERSION/amd64"
    "bin:amd64/bin:$cache/oss/amd64/bin"
)
branch_dirs=()
for spec in "${branches[@]}"; do
    IFS=: read -r name at src <<<"$spec"
    dir=$B/layers/$name
    mkdir -p "$dir/$at"
    mount --bind "$src" "$dir/$at"
    mount -o remount,ro,bind "$dir/$at"
    branch_dirs+=("$dir")
done
lower=$(IFS=:; echo "${branch_dirs[*]}")
mkdir -p "$B/empty"
mergerfs_branches=$(printf '%s=RO:' "${branch_dirs[@]}")
mergerfs_branches=${mergerfs_branches%:}

# The binaries compared by sha256sum: the same names in every column.
bin_names=()
for f in "$cache/oss/amd64/bin"/* "$cache/kube/$VERSION/amd64"/*; do
    [[ -f $f && $f != *.tar.gz ]] && bin_names+=("${f##*/}")
done

# ---------------------------------------------------------------- measuring

# hf NAME PREPARE WARMUP RUNS CMD: runs CMD with hyperfine; sets T to the median (s).
hf() {
    local name=$1 prepare=$2 warmup=$3 runs=$4 cmd=$5
    local args=(--style none --runs "$runs" --export-json "$results/$name.json")
    [[ -n $prepare ]] && args+=(--prepare "$prepare")
    ((warmup > 0)) && args+=(--warmup "$warmup")
    hyperfine "${args[@]}" "$cmd" >/dev/null 2>"$logs/$name.hyperfine.err" ||
        die "$name: '$cmd' failed (see $logs/$name.hyperfine.err)"
    T=$(jq -r '.results[0].median' "$results/$name.json")
}

# rate BYTES: BYTES per T seconds, in GB/s; secs: T rounded.
rate() { awk -v b="$1" -v t="$T" 'BEGIN { printf "%.2f", b / t / 1e9 }'; }
secs() { awk -v t="$T" 'BEGIN { printf "%.3f", t }'; }

declare -A R=()   # R[system,row] = value
record() { R[$1,$2]=$3; printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$results/results.tsv"; }

mount_cmd() { # SYSTEM MOUNTPOINT
    local sys=$1 mnt=$2
    case $sys in
    rootfs-mount) echo "$BIN $mnt --k8s $VERSION --arch amd64 --cache $cache --log-file $logs/$sys.log --read-only" ;;
    rootfs-mount-pread) echo "$BIN $mnt --k8s $VERSION --arch amd64 --cache $cache --log-file $logs/$sys.log --read-only --no-passthrough" ;;
    rootfs-mount-rw) echo "$BIN $mnt --k8s $VERSION --arch amd64 --cache $cache --log-file $logs/$sys.log" ;;
    overlayfs) # overlayfs does not cross the bind mounts of the branches' folders: one
        # overlay per place a branch is mounted (the walked registry, amd64/bin and
        # amd64/cri), on an empty tmpfs skeleton
        echo "mount -t tmpfs -o size=1m,mode=755 bench-overlay-top $mnt &&" \
            "mkdir -p $mnt/rootfs/registry $mnt/amd64/bin $mnt/amd64/cri &&" \
            "mount -t overlay -o ro,lowerdir=$B/layers/registry/rootfs/registry:$B/empty bench-overlay $mnt/rootfs/registry &&" \
            "mount -t overlay -o ro,lowerdir=$B/layers/kube/amd64/bin:$B/layers/bin/amd64/bin bench-overlay $mnt/amd64/bin &&" \
            "mount -t overlay -o ro,lowerdir=$B/layers/cri/amd64/cri:$B/empty bench-overlay $mnt/amd64/cri"
        ;;
    mergerfs) echo "mergerfs -o $MERGERFS_OPTS,fsname=bench-mergerfs $mergerfs_branches $mnt" ;;
    fuse-overlayfs) echo "fuse-overlayfs -o lowerdir=$lower $mnt" ;;
    esac
}

daemon_pid() { # SYSTEM MOUNTPOINT: rootfs-mount says (status); else the newest
    # process whose command line names the mountpoint
    if [[ $1 == rootfs-mount* ]]; then
        "$BIN" status "$2" | awk '$1 == "pid:" { print $2; exit }'
    else
        pgrep -n -f -- " $2( |\$)" || true
    fi
}

measure() { # SYSTEM
    local sys=$1 mnt=$B/mnt/$1 walk seq tar_args=() bins=() n bytes
    say "$sys"
    if [[ $sys == native ]]; then
        walk=$cache/registry
        seq=$cache/registry/$seq_rel
        tar_args=(-C "$B/layers/registry" rootfs/registry -C "$B/layers/bin" amd64/bin -C "$B/layers/kube" amd64/bin)
        for n in "${bin_names[@]}"; do
            if [[ -f $cache/oss/amd64/bin/$n ]]; then bins+=("$cache/oss/amd64/bin/$n"); else bins+=("$cache/kube/$VERSION/amd64/$n"); fi
        done
    else
        mkdir -p "$mnt"
        local mcmd
        mcmd=$(mount_cmd "$sys" "$mnt")
        # Mount ready: the command returns once the mount answers; unmounted before
        # each run, and left mounted by the last one.
        if want mount; then
            hf "$sys-mount" "umount -R $mnt 2>/dev/null || true" 0 5 "$mcmd"
            record "$sys" mount_ms "$(awk -v t="$T" 'BEGIN { printf "%.1f", t * 1000 }')"
        else
            eval "$mcmd" || die "$sys: '$mcmd' failed"
        fi
        mountpoint -q "$mnt" || die "$sys did not mount on $mnt"
        walk=$mnt/rootfs/registry
        seq=$mnt/rootfs/registry/$seq_rel
        tar_args=(-C "$mnt" rootfs/registry amd64/bin)
        for n in "${bin_names[@]}"; do bins+=("$mnt/amd64/bin/$n"); done
    fi
    if want find_cold; then
        hf "$sys-find-cold" "$drop_caches_cmd" 0 "$RUNS" "find $walk | wc -l"
        record "$sys" find_cold_s "$(secs)"
    fi
    if want find_first; then
        # The backing folders' caches warm, the mount fresh: remounted before each run
        # (native: nothing to remount, a warm find).
        local remount=""
        if [[ $sys != native ]]; then
            find "$cache/registry" >/dev/null
            remount="umount -R $mnt && $(mount_cmd "$sys" "$mnt")"
        fi
        hf "$sys-find-first" "$remount" 1 "$WARM_RUNS" "find $walk | wc -l"
        record "$sys" find_first_s "$(secs)"
    fi
    record "$sys" entries "$(find "$walk" | wc -l)"
    if want find_warm; then
        hf "$sys-find-warm" "" 1 "$WARM_RUNS" "find $walk | wc -l"
        record "$sys" find_warm_s "$(secs)"
    fi
    if want lslr; then
        hf "$sys-lslr-warm" "" 1 "$WARM_RUNS" "ls -lR $walk > /dev/null"
        record "$sys" lslr_warm_s "$(secs)"
    fi
    if [[ $sys != native && $sys != overlayfs ]]; then
        local pid
        pid=$(daemon_pid "$sys" "$mnt")
        record "$sys" rss_mb "$(awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$pid/status" 2>/dev/null || echo '?')"
    fi
    bytes=$(stat -L -c %s "$seq")
    if want seq_cold; then
        hf "$sys-seq-cold" "$drop_caches_cmd" 0 "$RUNS" "dd if=$seq of=/dev/null bs=1M status=none"
        record "$sys" seq_cold_gbs "$(rate "$bytes")"
    fi
    if want seq_warm; then
        hf "$sys-seq-warm" "" 1 "$WARM_RUNS" "dd if=$seq of=/dev/null bs=1M status=none"
        record "$sys" seq_warm_gbs "$(rate "$bytes")"
    fi
    if want rand4k; then
        fio --name=rand4k --filename="$seq" --readonly --rw=randread --bs=4k --ioengine=psync \
            --numjobs=4 --iodepth=1 --invalidate=0 --time_based --runtime=5 --group_reporting \
            --output-format=json --output="$results/$sys-fio.json" >/dev/null ||
            die "$sys: fio failed"
        record "$sys" rand4k_kiops "$(jq -r '.jobs[0].read.iops / 1000 | . * 10 | round / 10' "$results/$sys-fio.json")"
    fi
    local tar_cmd
    tar_cmd=$(printf '%q ' tar -cf - "${tar_args[@]}")
    if want tar_first; then
        # What a build does: one tar of the tree on a fresh mount, the backing files'
        # caches warm (native: a warm tar).
        local remount=""
        [[ $sys == native ]] || remount="umount -R $mnt && $(mount_cmd "$sys" "$mnt")"
        bytes=$(eval "$tar_cmd" | wc -c)
        hf "$sys-tar-first" "$remount" 1 "$RUNS" "$tar_cmd | wc -c"
        record "$sys" tar_first_gbs "$(rate "$bytes")"
    fi
    if want tar; then
        bytes=$(eval "$tar_cmd" | wc -c)
        hf "$sys-tar" "" 1 "$WARM_RUNS" "$tar_cmd | wc -c"
        record "$sys" tar_gbs "$(rate "$bytes")"
    fi
    if want sha; then
        hf "$sys-sha" "" 1 "$WARM_RUNS" "$(printf '%q ' sha256sum "${bins[@]}") > /dev/null"
        record "$sys" sha_bin_s "$(secs)"
    fi
    if [[ $sys != native ]]; then
        umount -R "$mnt" 2>/dev/null || umount -R -l "$mnt"
    fi
}

: >"$results/results.tsv"
for sys in $SYSTEMS; do
    case $sys in
    native | rootfs-mount | rootfs-mount-pread | rootfs-mount-rw | overlayfs | mergerfs | fuse-overlayfs) measure "$sys" ;;
    *) die "unknown system '$sys' in BENCH_SYSTEMS" ;;
    esac
done

# ---------------------------------------------------------------- the table

read_path=$(grep -ho 'read path: [a-z ()-]*' "$logs/rootfs-mount.log" 2>/dev/null | tail -1 || true)
switched=$(grep -c 'passthrough is off' "$logs/rootfs-mount.log" 2>/dev/null || true)

{
    echo "rootfs-mount benchmark -- $(date -u +%Y-%m-%dT%H:%MZ), $(uname -r), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "fixture: $B (registry: ${R[native,entries]:-?} entries; 2 GiB blob; bin/: ${#bin_names[@]} files)"
    echo "rootfs-mount (--read-only): ${read_path:-read path unknown}${switched:+ (passthrough switched off $switched time(s))}"
    echo "vCPU idle: $vcpu_idle"
    echo "medians of $RUNS cold / $WARM_RUNS warm runs (mount: 5; tar first: $RUNS)"
    echo
    printf '%-24s' "metric"
    for sys in $SYSTEMS; do printf '%21s' "$sys"; done
    echo
    # row label, unit kind: t = time (lower is better), r = rate (higher is better), n = no ratio
    for row in "mount_ms:mount ready (ms):n" "find_cold_s:find cold (s):t" "find_first_s:find first walk (s):t" "find_warm_s:find warm (s):t" \
        "lslr_warm_s:ls -lR warm (s):t" "seq_cold_gbs:seq read cold (GB/s):r" "seq_warm_gbs:seq read warm (GB/s):r" \
        "rand4k_kiops:rand 4k x4 (kIOPS):r" "tar_first_gbs:tar first (GB/s):r" "tar_gbs:tar | wc -c (GB/s):r" "sha_bin_s:sha256sum bin/ (s):t" \
        "rss_mb:daemon RSS (MB):n" "entries:entries walked:n"; do
        IFS=: read -r key label kind <<<"$row"
        printf '%-24s' "$label"
        for sys in $SYSTEMS; do
            v=${R[$sys,$key]:--}
            n=${R[native,$key]:-}
            cell=$v
            if [[ $kind != n && $sys != native && -n $n && $v != - ]]; then
                cell="$v $(awk -v v="$v" -v n="$n" -v k="$kind" 'BEGIN { r = (k == "t") ? n / v : v / n; printf "(x%.2f)", r }')"
            fi
            printf '%21s' "$cell"
        done
        echo
    done
    echo
    echo "(xN.NN) = speed relative to native: native time / time, or rate / native rate."
    echo
    echo "docs/DESIGN.md §7 targets (rootfs-mount with passthrough):"
    ratio() { awk -v v="${R[rootfs-mount,$1]:-0}" -v n="${R[native,$1]:-0}" -v k="$2" 'BEGIN { if (v == 0 || n == 0) { print "nan"; exit } r = (k == "t") ? n / v : v / n; printf "%.2f", r }'; }
    verdict() { # LABEL RATIO MIN
        awk -v l="$1" -v r="$2" -v m="$3" 'BEGIN { if (r == "nan") { printf "  %-44s not measured\n", l; exit } printf "  %-44s x%.2f of native (target >= x%.2f): %s\n", l, r, m, (r + 0 >= m ? "met" : "MISSED") }'
    }
    verdict "sequential read, cold" "$(ratio seq_cold_gbs r)" 0.9
    verdict "sequential read, warm" "$(ratio seq_warm_gbs r)" 0.9
    verdict "find, warm (within 2x)" "$(ratio find_warm_s t)" 0.5
    verdict "ls -lR, warm (within 2x)" "$(ratio lslr_warm_s t)" 0.5
    verdict "tar -cf - | wc -c" "$(ratio tar_gbs r)" 0.8
    awk -v m="${R[rootfs-mount,mount_ms]:-nan}" 'BEGIN { if (m == "nan") print "  mount ready: not measured"; else printf "  %-44s %.1f ms (target < 200 ms): %s\n", "mount ready", m, (m < 200 ? "met" : "MISSED") }'
    echo "  daemon RSS after the ls -lR walks: ${R[rootfs-mount,rss_mb]:-?} MB (passthrough), ${R[rootfs-mount-pread,rss_mb]:-?} MB (--no-passthrough), ${R[rootfs-mount-rw,rss_mb]:-?} MB (writable)"
    echo
    echo "rootfs-mount (passthrough) against the other FUSE unions, row by row:"
    for row in mount_ms:t find_cold_s:t find_warm_s:t lslr_warm_s:t seq_cold_gbs:r seq_warm_gbs:r rand4k_kiops:r tar_gbs:r sha_bin_s:t rss_mb:t; do
        IFS=: read -r key kind <<<"$row"
        ours=${R[rootfs-mount,$key]:-}
        [[ -n $ours ]] || continue
        line=""
        for other in mergerfs fuse-overlayfs; do
            theirs=${R[$other,$key]:-}
            [[ -n $theirs ]] || continue
            line+=$(awk -v a="$ours" -v b="$theirs" -v k="$kind" -v o="$other" 'BEGIN { better = (k == "t") ? (a <= b) : (a >= b); printf "  %s %s", (better ? "beats" : "LOSES TO"), o }')
        done
        if [[ -n $line ]]; then printf '  %-14s%s\n' "$key" "$line"; fi
    done
} | tee "$results/table.txt"
