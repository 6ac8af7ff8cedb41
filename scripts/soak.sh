#!/usr/bin/env bash
# soak.sh -- the load test of tests/load.rs, for as long as you like.
#
# Usage: [SOAK_SECONDS=N] [SOAK_READERS=N] scripts/soak.sh
#
# Mounts a demo cache with a few big pseudo-random files, then runs SOAK_READERS
# (default 16) threads reading random files at random offsets, plus `find` and `tar`
# walks, for SOAK_SECONDS (default 600). Every byte read is compared with the backing
# file, every walk with the first one; the daemon must log zero errors and stay up.
# Runs as root with /dev/fuse, like `cargo test`. The last lines report what was checked.
#
# Exit status: 0 when every byte matched, non-zero otherwise.

set -euo pipefail
cd "$(dirname "$0")/.."

export ROOTFS_MOUNT_LOAD_SECS="${SOAK_SECONDS:-600}"
export ROOTFS_MOUNT_LOAD_READERS="${SOAK_READERS:-16}"
exec cargo test --release --test load -- --nocapture
