#!/usr/bin/env bash
# bench-remote.sh -- mounts from a remote cache (issue 11), on loopback, in one run:
#
#   1. first sequential read of a BENCH_MB object through a mount from the store (empty
#      local cache) against a plain download of it with curl       (goal >= 0.8)
#   2. warm read (a new mount, blocks in the local cache) against a read of the file in
#      the local cache folder (native, page-cached): medians of WARM_RUNS (5) reads of
#      each, in turns                                                 (goal >= 0.9)
#   3. cold `tar` of the whole tree from the store against downloading every file with
#      curl, then mounting the local copy and `tar`ing it
#   4. local disk used by the block cache against the full cache
#
# The store is the static mirror `cache publish DIR` writes, served by Debian's nginx
# (the same reader code as for S3, minus request signing). Needs root, /dev/fuse, nginx,
# curl, python3. Usage: sudo scripts/bench-remote.sh   (BENCH_MB=500 by default)
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."

MB=${BENCH_MB:-500}
cargo build --release -q
BIN=$PWD/target/release/rootfs-mount
WORK=$(mktemp -d /tmp/bench-remote.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
NGINX_PID=
MOUNTS=()
cleanup() {
    for m in "${MOUNTS[@]}"; do "$BIN" umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    if [ -n "$NGINX_PID" ]; then kill "$NGINX_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.3f}')"; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
mnt() { # mnt DIR LOCAL_CACHE: mount DIR from the mirror
    mkdir -p "$1"
    "$BIN" "$1" --k8s v1.23.4 --read-only --cache "http://127.0.0.1:$PORT/" --local-cache "$2"
    MOUNTS+=("$1")
}

echo "building a demo cache with a ${MB} MiB file..." >&2
DEMO_CACHE_BIG_MB=$MB bash scripts/demo-cache.sh "$WORK/cache" v1.23.4 >/dev/null
"$BIN" cache publish "$WORK/mirror" --cache "$WORK/cache" >/dev/null
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off; master_process off; pid $WORK/nginx/pid; error_log $WORK/nginx/error.log warn;
events { worker_connections 64; }
http { access_log off; default_type application/octet-stream; sendfile on;
  client_body_temp_path $WORK/nginx/b; proxy_temp_path $WORK/nginx/p; fastcgi_temp_path $WORK/nginx/f;
  uwsgi_temp_path $WORK/nginx/u; scgi_temp_path $WORK/nginx/s;
  server { listen 127.0.0.1:$PORT; root $WORK/mirror; } }
EOF
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
NGINX_PID=$!
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/SHA256SUMS" && break; sleep 0.1; done

BIG=oss/amd64/bin/bigblob
# 1. First sequential read against a plain download (the mirror's file in page cache for both).
cat "$WORK/mirror/$BIG" >/dev/null
t0=$(now); curl -s -o /dev/null "http://127.0.0.1:$PORT/$BIG"; t1=$(now)
curl_s=$(secs "$t0" "$t1")
mnt "$WORK/m1" "$WORK/lc"
t0=$(now); cat "$WORK/m1/amd64/bin/bigblob" >/dev/null; t1=$(now)
cold_s=$(secs "$t0" "$t1")
"$BIN" umount "$WORK/m1"

# 2. Warm: a new mount, blocks from the local cache; native: the cache file, page-cached.
# A page-cached read of this size takes tens of ms, as much as the machine's noise: the
# median of WARM_RUNS reads of each, taken in turns (the first through the mount is the
# fresh mount's first open).
timed_cat() { local t0 t1; t0=$(now); cat "$1" >/dev/null; t1=$(now); secs "$t0" "$t1"; }
median() { python3 -c 'import statistics,sys; print(f"{statistics.median(map(float, sys.argv[1:])):.3f}")' "$@"; }
mnt "$WORK/m2" "$WORK/lc"
cat "$WORK/cache/$BIG" >/dev/null
warm=() native=()
for _ in $(seq "${WARM_RUNS:-5}"); do
    warm+=("$(timed_cat "$WORK/m2/amd64/bin/bigblob")")
    native+=("$(timed_cat "$WORK/cache/$BIG")")
done
"$BIN" umount "$WORK/m2"
warm_s=$(median "${warm[@]}")
native_s=$(median "${native[@]}")
echo "warm reads: mount ${warm[*]} s; native ${native[*]} s" >&2

# 3. Cold tar of the tree from the store, against download-everything + mount + tar.
mnt "$WORK/m3" "$WORK/lc3"
t0=$(now); tar --sort=name -cf - -C "$WORK/m3" . | wc -c >/dev/null; t1=$(now)
tar_remote_s=$(secs "$t0" "$t1")
t0=$(now)
(cd "$WORK" && while read -r _ path; do
    case $path in .rootfs-mount/*) continue ;; esac
    mkdir -p "copy/$(dirname "$path")"
    curl -s -o "copy/$path" "http://127.0.0.1:$PORT/$path"
done <"$WORK/mirror/SHA256SUMS")
chmod -R a+rX "$WORK/copy"; chmod a+x "$WORK"/copy/kube/*/*/* "$WORK"/copy/oss/*/bin/* 2>/dev/null || true
mkdir -p "$WORK/m4"; "$BIN" "$WORK/m4" --k8s v1.23.4 --read-only --cache "$WORK/copy" --allow-missing; MOUNTS+=("$WORK/m4")
tar --sort=name -cf - -C "$WORK/m4" . | wc -c >/dev/null
t1=$(now)
tar_local_s=$(secs "$t0" "$t1")

# 4. Disk used.
lc_bytes=$(du -sb "$WORK/lc3" | cut -f1)
full_bytes=$(du -sb "$WORK/cache" | cut -f1)

printf '%-44s %10s %10s %8s\n' what seconds baseline ratio
printf '%-44s %10s %10s %8s\n' "1. first sequential read vs curl (${MB} MiB)" "$cold_s" "$curl_s" "$(ratio "$curl_s" "$cold_s")"
printf '%-44s %10s %10s %8s\n' "2. warm read (local blocks) vs native" "$warm_s" "$native_s" "$(ratio "$native_s" "$warm_s")"
printf '%-44s %10s %10s %8s\n' "3. cold tar vs download all + mount + tar" "$tar_remote_s" "$tar_local_s" "$(ratio "$tar_local_s" "$tar_remote_s")"
printf '%-44s %10s %10s %8s\n' "4. local disk used vs full cache (bytes)" "$lc_bytes" "$full_bytes" "$(ratio "$lc_bytes" "$full_bytes")"
