#!/bin/bash
# Runs the POSIX suite pjdfstest and the exerciser fsx against a mount with an upper layer.
# Needs root (pjdfstest switches users) and installs both tools with cargo if missing.
#   bash scripts/posix.sh            # results in target/posix/
# FSX_OPS (default 20000) sets the number of fsx operations; POSIX_MOUNT_ARGS adds mount
# flags (e.g. "--passthrough-min 0" to hand every file to the kernel).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=$repo/target/posix
bin=$repo/target/release/rootfs-mount
mnt=$out/mnt
mkdir -p "$out"

command -v pjdfstest >/dev/null || cargo install --quiet pjdfstest
command -v fsx >/dev/null || cargo install --quiet fsx
# pjdfstest switches to two unprivileged users: nobody and "tests".
id tests >/dev/null 2>&1 || useradd -M -U tests
nobody_group=$(id -gn nobody)

cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
bash "$repo/scripts/demo-cache.sh" "$out/cache" v1.23.4 >/dev/null
if grep -q " $mnt fuse" /proc/mounts; then "$bin" umount "$mnt"; fi
rm -rf "$out/upper"
mkdir -p "$mnt"
# Other users must reach the mount for the permission tests.
# shellcheck disable=SC2086 # POSIX_MOUNT_ARGS is a list of flags
"$bin" "$mnt" --k8s v1.23.4 --cache "$out/cache" --upper "$out/upper" --allow-other ${POSIX_MOUNT_ARGS:-}
trap '"$bin" umount "$mnt" || umount -l "$mnt"' EXIT

cat > "$out/pjdfstest.toml" <<TOML
[features]
posix_fallocate = {}

[settings]
naptime = 0.001
allow_remount = false

[dummy_auth]
entries = [["nobody", "$nobody_group"], ["tests", "tests"]]
TOML

work=$mnt/pjdfstest
mkdir -p "$work"
set +e
(cd "$work" && pjdfstest -c "$out/pjdfstest.toml" -p "$work") >"$out/pjdfstest.log" 2>&1
pjd_status=$?
set -e
# Result lines are "<test name>   ok" or "<test name>   FAILED".
results=$(grep -E '^[a-z_0-9:]+ +(ok|FAILED)$' "$out/pjdfstest.log" || true)
passed=$(grep -c ' ok$' <<<"$results" || true)
failed=$(grep -c ' FAILED$' <<<"$results" || true)
# Devices cannot be made in the mount (it is nodev); fifos and sockets can.
failures=$(grep ' FAILED$' <<<"$results" | sed 's/ *FAILED$//' || true)
special_pattern='::(char|block)$'
special=$(grep -c -E "$special_pattern" <<<"$failures" || true)
echo "pjdfstest: $passed passed, $failed failed ($special of them need devices; exit $pjd_status)"
echo "  log: $out/pjdfstest.log"
grep -v -E "$special_pattern" <<<"$failures" | sed 's/^/  other failure: /' || true

ops=${FSX_OPS:-20000}
set +e
fsx -N "$ops" "$mnt/fsx.data" >"$out/fsx.log" 2>&1
fsx_status=$?
set -e
echo "fsx: $ops operations, exit $fsx_status; log: $out/fsx.log"
tail -n 3 "$out/fsx.log" | sed 's/^/  /'
