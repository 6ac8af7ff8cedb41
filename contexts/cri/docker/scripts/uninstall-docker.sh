#!/bin/bash
# Undoes docker.sh; sealer v0.9 and later run it on every node they delete (as
# `bash <rootfs>/scripts/uninstall-docker.sh`, after resetting the node), and clean.sh runs it
# for sealer v0.8. Removes the registry container; then, if docker was installed by docker.sh
# (its unit is etc/docker.service), stops it and removes its unit, configuration and the
# binaries of cri/docker.tar.gz. A docker that was on the host before is left alone, and
# docker's data root is always kept. Keeps going past errors.

scripts_path=$(cd "$(dirname "$0")" && pwd)
rootfs=$(dirname "$scripts_path")
tarball=$rootfs/cri/docker.tar.gz

if command -v docker >/dev/null 2>&1; then
  docker rm -f sealer-registry >/dev/null 2>&1 || true
fi

if cmp -s "$rootfs/etc/docker.service" /etc/systemd/system/docker.service; then
  systemctl disable --now docker.service >/dev/null 2>&1 || true
  ip link delete docker0 >/dev/null 2>&1 || true
  if [ -f "$tarball" ]; then
    tar -tzf "$tarball" | while IFS= read -r member; do
      case "$member" in
      */ | '') continue ;;
      esac
      rm -f "/usr/bin/$(basename "$member")"
    done
  fi
  rm -f /etc/systemd/system/docker.service /etc/docker/daemon.json /etc/crictl.yaml
  systemctl daemon-reload >/dev/null 2>&1 || true
fi

exit 0
