#!/bin/bash
# Entry point sealer runs when it removes a node (after kubeadm reset): undoes init.sh.
# Removes the registry container and the Kubernetes node (clean-kube.sh); then, if
# containerd was installed by containerd.sh (its config.toml is etc/dump-config.toml),
# stops it and removes its configuration and the files of cri/containerd.tar.gz.
# A containerd that was on the host before is left alone; /var/lib/containerd and a
# libseccomp copied from cri/lib64 are kept. Keeps going past errors.

scripts_path=$(cd "$(dirname "$0")" && pwd)
rootfs=$(dirname "$scripts_path")
tarball=$rootfs/cri/containerd.tar.gz
config=/etc/containerd/config.toml

if command -v nerdctl >/dev/null 2>&1; then
  nerdctl rm -f sealer-registry >/dev/null 2>&1 || true
fi

bash "$scripts_path/clean-kube.sh"

marker=$(head -n 1 "$rootfs/etc/dump-config.toml" 2>/dev/null)
if [ -n "$marker" ] && [ -f "$config" ] && [ "$(head -n 1 "$config")" = "$marker" ]; then
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
  rm -f "$config" /etc/crictl.yaml /etc/systemd/system/containerd.service
  systemctl daemon-reload >/dev/null 2>&1 || true
fi

exit 0
