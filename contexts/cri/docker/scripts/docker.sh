#!/bin/bash
# Installs and starts docker from the ClusterImage:
#   docker.sh [DATA_ROOT] [REGISTRY_DOMAIN] [REGISTRY_PORT]
# cri/docker.tar.gz holds the static docker binaries (dockerd, docker, containerd, runc,
# ...), flat or under a docker/ folder; they go to /usr/bin. The unit is etc/docker.service,
# the daemon configuration etc/daemon.json. A docker that is already installed is left as
# it is (binaries and daemon.json), only started.
set -e

scripts_path=$(cd "$(dirname "$0")" && pwd)
rootfs=$(dirname "$scripts_path")

data_root=${1:-/var/lib/docker}
registry_domain=${2:-}
registry_port=${3:-}
tarball=$rootfs/cri/docker.tar.gz

install_binaries() {
  local unpack_dir
  unpack_dir=$(mktemp -d)
  tar -xzf "$tarball" -C "$unpack_dir"
  find "$unpack_dir" -type f -print0 | while IFS= read -r -d '' file; do
    install -m 0755 "$file" "/usr/bin/$(basename "$file")"
  done
  rm -rf "$unpack_dir"
}

install_config() {
  mkdir -p /etc/docker "$data_root"
  install -m 0644 "$rootfs/etc/daemon.json" /etc/docker/daemon.json
  sed -i "s|\"data-root\": \"[^\"]*\"|\"data-root\": \"$data_root\"|" /etc/docker/daemon.json
  # The registry sealer deploys (domain and port given at deploy time) is trusted besides
  # the one the image was built for.
  if [ -n "$registry_domain" ] && [ -n "$registry_port" ] &&
    ! grep -qF "\"$registry_domain:$registry_port\"" /etc/docker/daemon.json; then
    sed -i "s|\"insecure-registries\": \[|\"insecure-registries\": [\"$registry_domain:$registry_port\", |" /etc/docker/daemon.json
  fi
  install -m 0644 "$rootfs/etc/docker.service" /etc/systemd/system/docker.service
}

# crictl talks to the kubelet's docker shim
install_crictl_config() {
  if [ ! -f /etc/crictl.yaml ]; then
    printf '%s\n' "runtime-endpoint: unix:///var/run/dockershim.sock" \
      "image-endpoint: unix:///var/run/dockershim.sock" >/etc/crictl.yaml
  fi
}

wait_for_docker() {
  local attempt
  for attempt in $(seq 1 30); do
    if docker info >/dev/null 2>&1; then
      return 0
    fi
    echo "docker.sh: waiting for dockerd ($attempt/30)" >&2
    sleep 1
  done
  echo "docker.sh: dockerd did not come up; see journalctl -u docker" >&2
  return 1
}

if command -v dockerd >/dev/null 2>&1; then
  echo "docker.sh: docker is already installed ($(command -v dockerd)); using it as it is" >&2
else
  if [ ! -f "$tarball" ]; then
    echo "docker.sh: $tarball is missing" >&2
    exit 1
  fi
  install_binaries
  install_config
fi
install_crictl_config

systemctl daemon-reload
systemctl enable docker.service
systemctl restart docker.service
wait_for_docker
