#!/bin/bash
# Installs and starts containerd from the ClusterImage:
#   containerd.sh [REGISTRY_DOMAIN] [REGISTRY_PORT]
# cri/containerd.tar.gz is either a root-relative bundle (usr/local/bin/containerd,
# usr/local/sbin/runc, etc/systemd/system/containerd.service, opt/cni/bin/...), unpacked
# onto /, or a flat set of binaries, installed to /usr/bin. cri/lib64/ holds libseccomp for
# hosts that lack it (runc needs it). A containerd that is already installed keeps its
# binaries, but is always configured: the configuration is etc/dump-config.toml (a config of
# another origin is kept once as config.toml.sealer.bak; docker-ce's containerd.io ships one
# with the CRI plugin disabled, which the kubelet cannot use). Registries are set up in
# /etc/containerd/certs.d/<host:port>/hosts.toml, for the image's registry
# (etc/registry.yml) and for REGISTRY_DOMAIN:REGISTRY_PORT when given.
set -e

scripts_path=$(cd "$(dirname "$0")" && pwd)
rootfs=$(dirname "$scripts_path")

registry_domain=${1:-}
registry_port=${2:-}
tarball=$rootfs/cri/containerd.tar.gz
config=/etc/containerd/config.toml
socket=/run/containerd/containerd.sock
# present when this script installed containerd itself; clean.sh then removes it again
installed_marker=/etc/containerd/.installed-by-sealer-image

install_binaries() {
  local unpack_dir
  if tar -tzf "$tarball" | grep -Eq '^(\./)?usr/'; then
    tar --no-overwrite-dir -xzf "$tarball" -C /
  else
    unpack_dir=$(mktemp -d)
    tar -xzf "$tarball" -C "$unpack_dir"
    find "$unpack_dir" -type f -print0 | while IFS= read -r -d '' file; do
      install -m 0755 "$file" "/usr/bin/$(basename "$file")"
    done
    rm -rf "$unpack_dir"
  fi
}

install_libseccomp() {
  local lib_dir=/usr/local/lib file
  if ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2 '; then
    return 0
  fi
  if [ -d /usr/lib64 ]; then
    lib_dir=/usr/lib64
  fi
  mkdir -p "$lib_dir"
  for file in "$rootfs"/cri/lib64/libseccomp.so*; do
    if [ -e "$file" ] || [ -L "$file" ]; then
      cp -a "$file" "$lib_dir/"
    fi
  done
  ldconfig
}

install_unit() {
  local unit
  for unit in /etc/systemd/system/containerd.service /lib/systemd/system/containerd.service /usr/lib/systemd/system/containerd.service; do
    if [ -f "$unit" ]; then
      return 0
    fi
  done
  cat >/etc/systemd/system/containerd.service <<UNIT
[Unit]
Description=containerd container runtime
Documentation=https://containerd.io
After=network.target local-fs.target

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=$(command -v containerd)
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNPROC=infinity
LimitCORE=infinity
LimitNOFILE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
UNIT
}

# The first line of etc/dump-config.toml marks a config that this script installed.
install_config() {
  local marker
  mkdir -p /etc/containerd
  marker=$(head -n 1 "$rootfs/etc/dump-config.toml")
  if [ -f "$config" ] && [ "$(head -n 1 "$config")" != "$marker" ] && [ ! -e "$config.sealer.bak" ]; then
    cp -p "$config" "$config.sealer.bak"
  fi
  install -m 0644 "$rootfs/etc/dump-config.toml" "$config"
}

# hosts.toml for one registry: https first (sealer serves TLS when it has certificates),
# then plain http; the image's registry is private, so its certificate is not verified.
# A hosts.toml that is already there (sealer writes its own at deploy time) is kept.
install_registry_host() {
  local registry=$1 dir
  dir=/etc/containerd/certs.d/$registry
  if [ -z "$registry" ] || [ -f "$dir/hosts.toml" ]; then
    return 0
  fi
  mkdir -p "$dir"
  cat >"$dir/hosts.toml" <<TOML
server = "https://$registry"

[host."https://$registry"]
  capabilities = ["pull", "resolve"]
  skip_verify = true

[host."http://$registry"]
  capabilities = ["pull", "resolve"]
TOML
}

# domain:port of etc/registry.yml (the registry the image was built for)
image_registry() {
  local file=$rootfs/etc/registry.yml domain port
  [ -f "$file" ] || return 0
  domain=$(sed -n 's/^domain:[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p' "$file" | head -n 1)
  port=$(sed -n 's/^port:[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p' "$file" | head -n 1)
  if [ -n "$domain" ]; then
    echo "$domain${port:+:$port}"
  fi
}

# crictl and the kubelet's image pulls go to containerd's CRI socket
install_crictl_config() {
  if [ ! -f /etc/crictl.yaml ]; then
    printf '%s\n' "runtime-endpoint: unix://$socket" "image-endpoint: unix://$socket" >/etc/crictl.yaml
  fi
}

wait_for_containerd() {
  local attempt
  for attempt in $(seq 1 30); do
    if [ -S "$socket" ] && { ! command -v ctr >/dev/null 2>&1 || ctr --address "$socket" version >/dev/null 2>&1; }; then
      return 0
    fi
    echo "containerd.sh: waiting for containerd ($attempt/30)" >&2
    sleep 1
  done
  echo "containerd.sh: containerd did not come up; see journalctl -u containerd" >&2
  return 1
}

if command -v containerd >/dev/null 2>&1; then
  echo "containerd.sh: containerd is already installed ($(command -v containerd)); configuring it" >&2
else
  if [ ! -f "$tarball" ]; then
    echo "containerd.sh: $tarball is missing" >&2
    exit 1
  fi
  install_binaries
  install_libseccomp
  install_unit
  mkdir -p /etc/containerd
  : >"$installed_marker"
fi
install_config
install_registry_host "$(image_registry)"
if [ -n "$registry_domain" ] && [ -n "$registry_port" ]; then
  install_registry_host "$registry_domain:$registry_port"
fi
install_crictl_config

systemctl daemon-reload
systemctl enable containerd.service
systemctl restart containerd.service
wait_for_containerd
