#!/bin/bash
# Starts the ClusterImage's private registry (container "sealer-registry") with docker:
#   init-registry.sh [PORT] [DATA_DIR] [DOMAIN]
# (defaults 5000, the image's registry/ folder, sea.hub). The registry image comes from
# images/registry.tar, its configuration from etc/registry_config.yml, the image data from
# DATA_DIR. TLS is used when certs/DOMAIN.crt and certs/DOMAIN.key exist, basic auth when
# etc/registry_htpasswd exists (both are written by sealer at deploy time).
set -e

scripts_path=$(cd "$(dirname "$0")" && pwd)
rootfs=$(dirname "$scripts_path")

port=${1:-5000}
data_dir=${2:-$rootfs/registry}
domain=${3:-sea.hub}

container=sealer-registry
image_tar=$rootfs/images/registry.tar
config=$rootfs/etc/registry_config.yml
htpasswd=$rootfs/etc/registry_htpasswd
certs_dir=$rootfs/certs
fallback_image=registry:2.7.1

mkdir -p "$data_dir"

image=""
if [ -f "$image_tar" ]; then
  image=$(docker load -i "$image_tar" | sed -n -e 's/^Loaded image: //p' -e 's/^Loaded image ID: //p' | tail -n 1)
fi
image=${image:-$fallback_image}

if docker inspect "$container" >/dev/null 2>&1; then
  docker rm -f "$container" >/dev/null
fi

run_args=(-d --restart=always --net=host --name "$container"
  -v "$data_dir:/var/lib/registry"
  -e "REGISTRY_HTTP_ADDR=0.0.0.0:$port")
if [ -f "$config" ]; then
  run_args+=(-v "$config:/etc/docker/registry/config.yml:ro")
fi
if [ -f "$certs_dir/$domain.crt" ] && [ -f "$certs_dir/$domain.key" ]; then
  run_args+=(-v "$certs_dir:/certs:ro"
    -e "REGISTRY_HTTP_TLS_CERTIFICATE=/certs/$domain.crt"
    -e "REGISTRY_HTTP_TLS_KEY=/certs/$domain.key")
fi
if [ -f "$htpasswd" ]; then
  run_args+=(-v "$htpasswd:/htpasswd:ro"
    -e REGISTRY_AUTH=htpasswd
    -e REGISTRY_AUTH_HTPASSWD_PATH=/htpasswd
    -e "REGISTRY_AUTH_HTPASSWD_REALM=Registry Realm")
fi
docker run "${run_args[@]}" "$image" >/dev/null

status=""
for _ in $(seq 1 10); do
  status=$(docker inspect --format '{{.State.Status}}' "$container" 2>/dev/null || true)
  if [ "$status" = "running" ]; then
    echo "init-registry: $container ($image) serves $data_dir on port $port"
    exit 0
  fi
  sleep 1
done
echo "init-registry: $container is not running (status: ${status:-unknown}); see docker logs $container" >&2
exit 1
