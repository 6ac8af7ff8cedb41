#!/bin/bash
# Entry point sealer v0.8 runs on every node of the cluster (sealer v0.9 and later run
# containerd.sh, init-registry.sh and init-kube.sh themselves):
#   init.sh [DATA_ROOT] [REGISTRY_DOMAIN] [REGISTRY_PORT]
# (defaults -, sea.hub, 5000; DATA_ROOT is docker's and is accepted only so that sealer can
# call both runtimes alike: containerd keeps its data in /var/lib/containerd, see
# etc/dump-config.toml). Installs containerd from cri/containerd.tar.gz, then the
# Kubernetes node (init-kube.sh). sealer starts the image registry itself, on the registry
# host, with init-registry.sh; INIT_REGISTRY=true makes this script start it here as well
# (for a node that serves the registry when run without sealer).
set -e

scripts_path=$(cd "$(dirname "$0")" && pwd)
rootfs=$(dirname "$scripts_path")

registry_domain=${2:-sea.hub}
registry_port=${3:-5000}

bash "$scripts_path/containerd.sh" "$registry_domain" "$registry_port"
bash "$scripts_path/init-kube.sh"

if [ "${INIT_REGISTRY:-false}" = "true" ]; then
  bash "$scripts_path/init-registry.sh" "$registry_port" "$rootfs/registry" "$registry_domain"
fi
