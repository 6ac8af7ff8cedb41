#!/bin/bash
# Undoes containerd.sh; sealer v0.9 and later run it on every node they delete (as
# `bash <rootfs>/scripts/uninstall-containerd.sh`, after resetting the node), and clean.sh
# runs it for sealer v0.8. Removes the registry container; then, if containerd was installed
# by containerd.sh (it left /etc/containerd/.installed-by-sealer-image), stops it and removes
# its configuration and the files of cri/containerd.tar.gz. A containerd that was on the host
# before keeps running with the configuration it had (config.toml.sealer.bak is put back).
# /var/lib/containerd, the registries' hosts.toml and a libseccomp copied from cri/lib64 are
# kept. Keeps going past errors.

scripts_path=$(cd "$(dirname "$0")" && pwd)
rootfs=$(dirname "$scripts_path")
tarball=$rootfs/cri/containerd.tar.gz
config=/etc/containerd/config.toml
installed_marker=/etc/containerd/.installed-by-sealer-image

if command -v nerdctl >/dev/null 2>&1; then
  nerdctl rm -f sealer-registry >/dev/null 2>&1 || true
fi

if [ -f "$installed_marker" ]; then
  systemctl disable --now containerd.service >/dev/null 2>&1 || true
  if [ -f "$tarball" ]; then
    if tar -tzf "$tarball" | grep -Eq '^(\./)?usr/'; then
      # root-relative bundle: remove each file it put on /
      tar -tzf "$tarball" | while IFS= read -r member; do
        member=${member#./}
        case "$member" in
        */ | '' | /* | ../* | */../*) continue ;;
        esac
        if [ ! -d "/$member" ]; then
          rm -f "/$member"
        fi
      done
    else
      tar -tzf "$tarball" | while IFS= read -r member; do
        case "$member" in
        */ | '') continue ;;
        esac
        rm -f "/usr/bin/$(basename "$member")"
      done
    fi
  fi
  rm -f "$config" "$installed_marker" /etc/crictl.yaml /etc/systemd/system/containerd.service
  systemctl daemon-reload >/dev/null 2>&1 || true
elif [ -f "$config.sealer.bak" ]; then
  mv -f "$config.sealer.bak" "$config"
  systemctl restart containerd.service >/dev/null 2>&1 || true
fi

exit 0
