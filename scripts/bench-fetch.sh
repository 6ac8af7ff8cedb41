#!/usr/bin/env bash
# bench-fetch.sh -- `rootfs-mount fetch` throughput against curl, and its parallel
# speed-up (issue 10), in one run on one machine.
#
# Usage: scripts/bench-fetch.sh [WORKDIR]      (needs nginx and curl; no root needed)
#
# Makes (once, kept in WORKDIR, default target/bench-fetch) a cache in the docs/DESIGN.md §4
# layout with scripts/demo-cache.sh for v1.23.4, whose six kube binaries are replaced by
# BENCH_FILE_MB MiB (default 64) of random bytes each, and publishes it as a mirror with
# `rootfs-mount cache publish`. Debian's nginx serves the mirror on 127.0.0.1 (a free
# port). Then, each BENCH_RUNS times (default 3, median reported):
#   curl        the same files (the URLs `fetch --print-urls` names), one after the other
#   curl+sha    the same, plus `sha256sum` of each file (fetch verifies every byte)
#   fetch -j1   rootfs-mount fetch --jobs 1 into an empty cache
#   fetch -j4   rootfs-mount fetch --jobs 4 into an empty cache
# and prints MB/s of each, fetch against curl (ratio; 1.00 = as fast as curl), and the
# speed-up of --jobs 4 over --jobs 1. Loopback has no latency to hide, so the parallel
# speed-up here mostly measures hashing on more cores; against a real server, latency
# and per-connection limits make it larger.
#
# Environment: BENCH_FILE_MB (default 64), BENCH_RUNS (default 3), BENCH_BIN (default:
# builds target/release/rootfs-mount).

set -euo pipefail
export LC_ALL=C

repo=$(cd -- "$(dirname -- "$0")/.." && pwd -P)
work=${1:-$repo/target/bench-fetch}
file_mb=${BENCH_FILE_MB:-64}
runs=${BENCH_RUNS:-3}
for n in "$file_mb" "$runs"; do
    if ! [[ $n =~ ^[0-9]+$ ]] || ((n < 1)); then
        echo "bench-fetch.sh: BENCH_FILE_MB and BENCH_RUNS must be positive integers" >&2
        exit 2
    fi
done
for tool in nginx curl sha256sum python3 bc; do
    command -v "$tool" >/dev/null || {
        echo "bench-fetch.sh: $tool is needed (apt-get install nginx-light curl)" >&2
        exit 1
    }
done

bin=${BENCH_BIN:-}
if [[ -z $bin ]]; then
    (cd "$repo" && cargo build --release --quiet)
    bin=$repo/target/release/rootfs-mount
fi

fixture=$work/cache
mirror=$work/mirror
stamp=$work/fixture-$file_mb.done
mkdir -p "$work"
if [[ ! -f $stamp ]]; then
    rm -rf "$fixture" "$mirror"
    bash "$repo/scripts/demo-cache.sh" "$fixture" v1.23.4 >/dev/null
    for arch in amd64 arm64; do
        for name in kubeadm kubectl kubelet; do
            head -c "$((file_mb << 20))" /dev/urandom >"$fixture/kube/v1.23.4/$arch/$name"
        done
    done
    "$bin" cache publish "$mirror" --cache "$fixture" >/dev/null
    touch "$stamp"
fi

# nginx on a free port, stopped on exit.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ngx=$work/nginx
mkdir -p "$ngx"
cat >"$ngx/nginx.conf" <<EOF
daemon off;
worker_processes 2;
pid $ngx/nginx.pid;
error_log $ngx/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  default_type application/octet-stream;
  sendfile on;
  client_body_temp_path $ngx/body;
  proxy_temp_path $ngx/proxy;
  fastcgi_temp_path $ngx/fastcgi;
  uwsgi_temp_path $ngx/uwsgi;
  scgi_temp_path $ngx/scgi;
  server { listen 127.0.0.1:$port; root $mirror; }
}
EOF
nginx -p "$ngx" -c "$ngx/nginx.conf" &
nginx_pid=$!
scratch=$(mktemp -d "$work/run.XXXXXX")
cleanup() {
    kill "$nginx_pid" 2>/dev/null || true
    wait "$nginx_pid" 2>/dev/null || true
    rm -rf -- "$scratch"
}
trap cleanup EXIT
for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/SHA256SUMS" && break
    sleep 0.05
done
url=http://127.0.0.1:$port/

# The files fetch needs, as it names them.
mapfile -t urls < <("$bin" fetch --k8s v1.23.4 --no-upstream --mirror "$url" \
    --cache "$scratch/plan" --print-urls | awk '{print $1}')
bytes=0
for u in "${urls[@]}"; do
    bytes=$((bytes + $(stat -c %s "$mirror/${u#"$url"}")))
done

now() { date +%s.%N; }
# median of the numbers on stdin
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

run_curl() { # WITH_SHA
    local dir=$scratch/curl u
    rm -rf "$dir"
    mkdir -p "$dir"
    for u in "${urls[@]}"; do
        curl -sSf -o "$dir/f" "$u"
        if [[ $1 == yes ]]; then sha256sum "$dir/f" >/dev/null; fi
        rm -f "$dir/f"
    done
}
run_fetch() { # JOBS
    rm -rf "$scratch/cache"
    "$bin" fetch --k8s v1.23.4 --no-upstream --mirror "$url" --cache "$scratch/cache" \
        --jobs "$1" >/dev/null 2>&1
}

declare -A secs=()
for name in curl curl+sha fetch-j1 fetch-j4; do
    : >"$scratch/$name.times"
done
for ((r = 1; r <= runs; r++)); do
    for name in curl curl+sha fetch-j1 fetch-j4; do
        t0=$(now)
        case $name in
        curl) run_curl no ;;
        curl+sha) run_curl yes ;;
        fetch-j1) run_fetch 1 ;;
        fetch-j4) run_fetch 4 ;;
        esac
        t1=$(now)
        echo "$t1 - $t0" | bc -l >>"$scratch/$name.times"
    done
done
for name in curl curl+sha fetch-j1 fetch-j4; do
    secs[$name]=$(median <"$scratch/$name.times")
done

mb=$(echo "$bytes / 1048576" | bc -l)
printf 'bench-fetch: %d files, %.0f MiB from nginx on 127.0.0.1, median of %d runs, %d cores\n' \
    "${#urls[@]}" "$mb" "$runs" "$(nproc)"
printf '%-10s %8s %10s %12s\n' what seconds MiB/s "vs curl"
for name in curl curl+sha fetch-j1 fetch-j4; do
    s=${secs[$name]}
    printf '%-10s %8.2f %10.1f %12s\n' "$name" "$s" "$(echo "$mb / $s" | bc -l)" \
        "x$(printf '%.2f' "$(echo "${secs[curl]} / $s" | bc -l)")"
done
printf 'fetch --jobs 4 over --jobs 1: x%.2f; fetch -j1 against curl+sha256sum: x%.2f\n' \
    "$(echo "${secs[fetch-j1]} / ${secs[fetch-j4]}" | bc -l)" \
    "$(echo "${secs[curl+sha]} / ${secs[fetch-j1]}" | bc -l)"
