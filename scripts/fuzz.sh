#!/usr/bin/env bash
# fuzz.sh -- run the cargo-fuzz targets of fuzz/ (version_parser, template_renderer,
# tar_listing, gzip_index, index_file; fuzz/README.md says what each checks).
#
# Usage: scripts/fuzz.sh [SECONDS]      (default 30 s per target)
#
# Needs a nightly toolchain and cargo-fuzz (installed with `cargo install` when missing).
# Without nightly it says so and exits 0: tests/hostile.rs runs a seeded stand-in of both
# targets in every `cargo test`. Seeds: the templates of contexts/, versions.yaml and a
# few version strings; tar and gzip streams made here for the archive readers; the growing corpus stays in fuzz/corpus/ (ignored by git). A
# crash stops the run with libFuzzer's report and a non-zero exit; the input is kept in
# fuzz/artifacts/.
#
# Exit status: 0 when no target crashed (or fuzzing is not possible here), else 1.

set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz.sh: no nightly toolchain, cargo fuzz cannot run here; skipped"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    if ! cargo install --locked cargo-fuzz; then
        echo "fuzz.sh: cargo-fuzz could not be installed; skipped"
        exit 0
    fi
fi

seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
targets=(version_parser template_renderer tar_listing gzip_index index_file)
for target in "${targets[@]}"; do
    mkdir -p "$seeds/$target"
done
n=0
while IFS= read -r -d '' template; do
    n=$((n + 1))
    cp "$template" "$seeds/template_renderer/$n"
done < <(find contexts -name '*.in' -print0)
for version in v1.23.4 1.13.0 v1.31.1 v0.0.0 v999999999.1.2; do
    printf '%s' "$version" >"$seeds/version_parser/$version"
done
cp contexts/versions.yaml "$seeds/version_parser/versions.yaml"
# Archive readers: the first byte of a tar_listing input is its chunk size; the first 4
# bytes of a gzip_index input pick the span, the listing flag and the read offsets.
{ printf '\x07'; tar -cf - -C contexts rootfs/etc; } | head -c 60000 >"$seeds/tar_listing/etc.tar"
{ printf '\x00'; tar --format=pax -cf - -C contexts versions.yaml; } | head -c 60000 >"$seeds/tar_listing/pax.tar"
{ printf '\x10\x00\x01\x02'; tar -cf - -C contexts rootfs/scripts | gzip -9; } | head -c 60000 >"$seeds/gzip_index/tar.gz"
{ printf '\x00\x01\x07\x03'; seq 1 3000 | gzip; seq 5 9 | gzip -1; printf '\0\0\0'; } >"$seeds/gzip_index/multi.gz"
printf '' >"$seeds/index_file/unchanged"

for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    echo "fuzz.sh: $target for ${seconds} s"
    log="$seeds/$target.log"
    status=0
    (cd fuzz && cargo +nightly fuzz run "$target" "corpus/$target" "$seeds/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -print_final_stats=1) >"$log" 2>&1 || status=$?
    grep -E '^(Done [0-9]+ runs|stat::number_of_executed_units)' "$log" || true
    if ((status != 0)); then
        tail -n 40 "$log"
        echo "fuzz.sh: $target failed (exit $status); a crashing input is in fuzz/artifacts/$target/"
        exit 1
    fi
done
