#!/usr/bin/env bash
# demo-cache.sh -- build a demo OSS cache for rootfs-mount (layout: docs/DESIGN.md §4).
#
# Usage: scripts/demo-cache.sh DIR [VERSION ...]
#
# Creates, fully offline, deterministically and idempotently, a demo cache in DIR for the
# arches amd64 and arm64 and the given Kubernetes versions (default: v1.23.4 v1.24.0
# v1.27.16 v1.31.1):
#
#   oss/<arch>/bin/conntrack, seautil                    plain stand-ins (0755)
#   oss/<arch>/bin/seautil.tar.gz                        member: seautil (the release
#                                                        tarball fetch fills; the plain
#                                                        seautil above wins over it)
#   oss/<arch>/bin/crictl.tar.gz                         member: crictl
#   oss/<arch>/bin/nerdctl.tar.gz                        members: nerdctl,
#                                                        containerd-rootless-setuptool.sh,
#                                                        containerd-rootless.sh
#   oss/<arch>/bin/bigblob                               only with DEMO_CACHE_BIG_MB=N > 0
#   kube/<version>/<arch>/kubeadm, kubectl, kubelet      stand-ins (0755)
#   cri/docker/<arch>/docker.tar.gz                      docker/{containerd,docker,dockerd,runc}
#   cri/docker/<arch>/registry.tar.gz                    `docker save`-style registry:2 stand-in
#   cri/containerd/<arch>/containerd.tar.gz              usr/local/bin/..., usr/local/sbin/runc
#   cri/containerd/<arch>/lib64/libseccomp.so.2.5.1      stand-in regular file
#   cri/containerd/<arch>/lib64/libseccomp.so.2          -> libseccomp.so.2.5.1 (relative)
#   cri/containerd/<arch>/registry.tar.gz                same bytes as the docker one
#   registry/docker/registry/v2/...                      registry v2 storage, 3 sample images
#
# Every binary is a clearly labelled stand-in: a small shell script that prints e.g.
# "rootfs-mount demo stand-in: kubeadm v1.23.4 linux/amd64" and exits 0. Contents differ
# per name, version and arch, so byte-equality tests are meaningful. Tarballs are built
# with fixed mtimes/owners and `gzip -n`, so every run produces the same bytes.
#
# Re-running over an existing DIR is fine: files whose bytes are already right are left
# untouched (same inode and mtime), others are replaced atomically (write + rename).
# Nothing outside the layout above is created, modified or removed, except that
# oss/<arch>/bin/bigblob is removed when DEMO_CACHE_BIG_MB is 0 (it belongs to this script).
#
# Environment:
#   DEMO_CACHE_BIG_MB=N   (default 0) add oss/<arch>/bin/bigblob, N MiB of deterministic
#                         pseudo-random bytes (seeded per arch; needs python3), for read
#                         benchmarks.
#
# Exit status: 0 on success, 2 on bad usage, 1 on any other failure.

set -euo pipefail
export LC_ALL=C
umask 022

readonly ARCHES=(amd64 arm64)
readonly DEFAULT_VERSIONS=(v1.23.4 v1.24.0 v1.27.16 v1.31.1)
readonly EPOCH=1700000000           # fixed mtime inside every archive
readonly CREATED="2023-11-14T22:13:20Z" # the same instant, for image configs

# Pinned (stand-in) versions of the non-Kubernetes tools.
readonly CONNTRACK_VERSION=v1.4.6
readonly SEAUTIL_VERSION=v0.9.3
readonly CRICTL_VERSION=v1.26.0
readonly NERDCTL_VERSION=v1.7.6
readonly DOCKER_VERSION=19.03.15
readonly CONTAINERD_VERSION=1.6.8
readonly RUNC_VERSION=v1.1.4
readonly REGISTRY_VERSION=2.8.1
readonly LIBSECCOMP_VERSION=2.5.1

prog=${0##*/}

usage() {
    echo "usage: $prog DIR [VERSION ...]   (VERSION like v1.23.4; default: ${DEFAULT_VERSIONS[*]})"
}

die() {
    echo "$prog: error: $*" >&2
    exit 1
}

# ---------------------------------------------------------------- arguments

if [[ $# -ge 1 && ( $1 == -h || $1 == --help ) ]]; then
    usage
    exit 0
fi
if [[ $# -ge 1 && $1 == -- ]]; then
    shift
fi
if [[ $# -lt 1 || -z $1 ]]; then
    usage >&2
    exit 2
fi
if [[ $1 == -* ]]; then
    echo "$prog: error: unknown option '$1'" >&2
    usage >&2
    exit 2
fi

dir=$1
shift
if [[ $# -gt 0 ]]; then
    versions=("$@")
else
    versions=("${DEFAULT_VERSIONS[@]}")
fi
for v in "${versions[@]}"; do
    if ! [[ $v =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
        echo "$prog: error: bad version '$v' (expected vMAJOR.MINOR.PATCH, e.g. v1.23.4)" >&2
        exit 2
    fi
done

big_mb=${DEMO_CACHE_BIG_MB:-0}
if ! [[ $big_mb =~ ^[0-9]+$ ]]; then
    echo "$prog: error: DEMO_CACHE_BIG_MB must be a non-negative integer (MiB), got '$big_mb'" >&2
    exit 2
fi
big_mb=$((10#$big_mb))
if ((big_mb > 0)) && ! command -v python3 >/dev/null 2>&1; then
    die "DEMO_CACHE_BIG_MB=$big_mb needs python3, which is not on PATH"
fi

for tool in tar gzip sha256sum stat cmp; do
    command -v "$tool" >/dev/null 2>&1 || die "required tool '$tool' not found on PATH"
done

if [[ -e $dir && ! -d $dir ]]; then
    die "'$dir' exists and is not a directory"
fi
mkdir -p -- "$dir"
dir=$(cd -- "$dir" && pwd -P)

# Scratch space inside DIR, so that every file lands with an atomic rename. It is hidden
# and removed on exit; the daemon only ever looks at oss/, kube/, cri/, registry/, index/.
work=$(mktemp -d "$dir/.demo-cache.tmp.XXXXXX")
cleanup() { rm -rf -- "$work"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers

declare -A placed=()   # every cache path written (or verified) by this run

# place SRC DEST MODE: install SRC as DEST with MODE. If DEST already holds the same
# bytes it is kept (only its mode is fixed); otherwise SRC is renamed over it.
place() {
    local src=$1 dest=$2 mode=$3
    mkdir -p -- "${dest%/*}"
    if [[ -f $dest && ! -L $dest ]] && cmp -s -- "$src" "$dest"; then
        chmod "$mode" -- "$dest"
        rm -f -- "$src"
    else
        chmod "$mode" -- "$src"
        mv -fT -- "$src" "$dest"
    fi
    placed[$dest]=1
}

# place_symlink TARGET DEST: DEST becomes a symlink to TARGET (kept if already right).
place_symlink() {
    local target=$1 dest=$2
    mkdir -p -- "${dest%/*}"
    if [[ ! -L $dest || $(readlink -- "$dest") != "$target" ]]; then
        ln -sfnT -- "$target" "$dest"
    fi
    placed[$dest]=1
}

# standin NAME VERSION ARCH OUT: write a labelled stand-in executable to OUT (0755).
standin() {
    local name=$1 ver=$2 arch=$3 out=$4
    mkdir -p -- "${out%/*}"
    cat >"$out" <<EOF
#!/bin/sh
# rootfs-mount demo stand-in -- NOT the real $name.
# Written by scripts/demo-cache.sh into a demo OSS cache (docs/DESIGN.md §4).
# name=$name version=$ver platform=linux/$arch
echo "rootfs-mount demo stand-in: $name $ver linux/$arch"
exit 0
EOF
    chmod 0755 -- "$out"
}

# mktar OUT STAGE MEMBER...: reproducible (uncompressed) tar of MEMBERs relative to STAGE.
mktar() {
    local out=$1 stage=$2
    shift 2
    tar --create --file="$out" --directory="$stage" \
        --format=gnu --sort=name --mtime="@$EPOCH" \
        --owner=0 --group=0 --numeric-owner \
        --no-acls --no-xattrs --no-selinux \
        -- "$@"
}

# mktgz OUT STAGE MEMBER...: the same, gzipped without name or timestamp.
mktgz() {
    local out=$1
    shift
    mktar "$out.tar" "$@"
    gzip -n -9 <"$out.tar" >"$out"
    rm -f -- "$out.tar"
}

# sha256_of FILE -> sets SHA (hex); size_of FILE -> sets SIZE (bytes).
sha256_of() {
    local h _rest
    read -r h _rest < <(sha256sum -- "$1")
    SHA=$h
}
size_of() {
    SIZE=$(stat -c %s -- "$1")
}

# fresh_stage NAME: an empty scratch directory, path in STAGE.
fresh_stage() {
    STAGE=$work/stage-$1
    rm -rf -- "$STAGE"
    mkdir -p -- "$STAGE"
}

platform_json() { # ARCH -> JSON object body for an image platform
    if [[ $1 == arm64 ]]; then
        printf '"architecture":"arm64","os":"linux","variant":"v8"'
    else
        printf '"architecture":"%s","os":"linux"' "$1"
    fi
}

# ---------------------------------------------------------------- oss/<arch>/bin

for arch in "${ARCHES[@]}"; do
    bin=$dir/oss/$arch/bin

    standin conntrack "$CONNTRACK_VERSION" "$arch" "$work/conntrack"
    place "$work/conntrack" "$bin/conntrack" 0755
    standin seautil "$SEAUTIL_VERSION" "$arch" "$work/seautil"
    place "$work/seautil" "$bin/seautil" 0755

    fresh_stage seautil
    standin seautil "$SEAUTIL_VERSION" "$arch" "$STAGE/seautil"
    mktgz "$work/seautil.tar.gz" "$STAGE" seautil
    place "$work/seautil.tar.gz" "$bin/seautil.tar.gz" 0644

    fresh_stage crictl
    standin crictl "$CRICTL_VERSION" "$arch" "$STAGE/crictl"
    mktgz "$work/crictl.tar.gz" "$STAGE" crictl
    place "$work/crictl.tar.gz" "$bin/crictl.tar.gz" 0644

    fresh_stage nerdctl
    for m in nerdctl containerd-rootless-setuptool.sh containerd-rootless.sh; do
        standin "$m" "$NERDCTL_VERSION" "$arch" "$STAGE/$m"
    done
    mktgz "$work/nerdctl.tar.gz" "$STAGE" \
        containerd-rootless-setuptool.sh containerd-rootless.sh nerdctl
    place "$work/nerdctl.tar.gz" "$bin/nerdctl.tar.gz" 0644

    if ((big_mb > 0)); then
        python3 - "$big_mb" "rootfs-mount-demo-bigblob-$arch" "$work/bigblob" <<'PY'
import random, sys
mib, seed, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rng = random.Random(seed)  # str seeds are hashed with SHA-512: stable across runs
chunk = 1 << 20
with open(out, "wb") as f:
    for _ in range(mib):
        # same bytes as rng.randbytes(chunk) (Python >= 3.9), but works on older ones too
        f.write(rng.getrandbits(chunk * 8).to_bytes(chunk, "little"))
PY
        place "$work/bigblob" "$bin/bigblob" 0644
    else
        rm -f -- "$bin/bigblob"
    fi
done

# ---------------------------------------------------------------- kube/<version>/<arch>

for ver in "${versions[@]}"; do
    for arch in "${ARCHES[@]}"; do
        for name in kubeadm kubectl kubelet; do
            standin "$name" "$ver" "$arch" "$work/$name"
            place "$work/$name" "$dir/kube/$ver/$arch/$name" 0755
        done
    done
done

# ---------------------------------------------------------------- registry:2 image (docker save)

# build_registry_image ARCH OUT: a small `docker save` tar.gz of a registry:2 stand-in.
build_registry_image() {
    local arch=$1 out=$2 layer_sha config config_sha layer_id

    # the single layer
    fresh_stage reglayer
    mkdir -p "$STAGE/bin" "$STAGE/etc/docker/registry" "$STAGE/var/lib/registry"
    standin registry "$REGISTRY_VERSION" "$arch" "$STAGE/bin/registry"
    standin entrypoint.sh "$REGISTRY_VERSION" "$arch" "$STAGE/entrypoint.sh"
    cat >"$STAGE/etc/docker/registry/config.yml" <<'EOF'
# rootfs-mount demo stand-in for the registry:2 image's config.yml
version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
EOF
    chmod 0644 "$STAGE/etc/docker/registry/config.yml"
    find "$STAGE" -type d -exec chmod 0755 {} +
    mktar "$work/layer.tar" "$STAGE" bin entrypoint.sh etc var
    sha256_of "$work/layer.tar"
    layer_sha=$SHA

    # the image config
    config=$(printf '{%s,"config":{"Cmd":["/etc/docker/registry/config.yml"],"Entrypoint":["/entrypoint.sh"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"ExposedPorts":{"5000/tcp":{}},"Volumes":{"/var/lib/registry":{}}},"created":"%s","history":[{"created":"%s","created_by":"rootfs-mount demo stand-in for registry:%s (scripts/demo-cache.sh)"}],"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$(platform_json "$arch")" "$CREATED" "$CREATED" "$REGISTRY_VERSION" "$layer_sha")
    printf '%s' "$config" >"$work/config.json"
    sha256_of "$work/config.json"
    config_sha=$SHA

    # legacy v1 layer id, as `docker save` writes (any stable 64-hex id will do)
    SHA=$(printf 'rootfs-mount-demo-layer-id %s %s' "$arch" "$layer_sha" | sha256sum)
    layer_id=${SHA%% *}

    fresh_stage regsave
    mkdir -p "$STAGE/$layer_id"
    mv "$work/layer.tar" "$STAGE/$layer_id/layer.tar"
    printf '1.0' >"$STAGE/$layer_id/VERSION"
    printf '{"id":"%s","created":"%s",%s}' "$layer_id" "$CREATED" "$(platform_json "$arch")" \
        >"$STAGE/$layer_id/json"
    mv "$work/config.json" "$STAGE/$config_sha.json"
    printf '[{"Config":"%s.json","RepoTags":["registry:2"],"Layers":["%s/layer.tar"]}]' \
        "$config_sha" "$layer_id" >"$STAGE/manifest.json"
    printf '{"registry":{"2":"%s"}}' "$layer_id" >"$STAGE/repositories"
    find "$STAGE" -type f -exec chmod 0644 {} +
    find "$STAGE" -type d -exec chmod 0755 {} +
    mktgz "$out" "$STAGE" "$layer_id" "$config_sha.json" manifest.json repositories
}

# ---------------------------------------------------------------- cri/docker, cri/containerd

for arch in "${ARCHES[@]}"; do
    build_registry_image "$arch" "$work/registry-$arch.tar.gz"
    cp -- "$work/registry-$arch.tar.gz" "$work/registry-$arch-2.tar.gz"

    # docker
    ddir=$dir/cri/docker/$arch
    fresh_stage docker
    mkdir -p "$STAGE/docker"
    standin docker "$DOCKER_VERSION" "$arch" "$STAGE/docker/docker"
    standin dockerd "$DOCKER_VERSION" "$arch" "$STAGE/docker/dockerd"
    standin containerd "v$CONTAINERD_VERSION" "$arch" "$STAGE/docker/containerd"
    standin runc "$RUNC_VERSION" "$arch" "$STAGE/docker/runc"
    chmod 0755 "$STAGE/docker"
    mktgz "$work/docker.tar.gz" "$STAGE" docker
    place "$work/docker.tar.gz" "$ddir/docker.tar.gz" 0644
    place "$work/registry-$arch.tar.gz" "$ddir/registry.tar.gz" 0644

    # containerd
    cdir=$dir/cri/containerd/$arch
    fresh_stage containerd
    mkdir -p "$STAGE/usr/local/bin" "$STAGE/usr/local/sbin"
    for m in containerd containerd-shim-runc-v2 ctr; do
        standin "$m" "v$CONTAINERD_VERSION" "$arch" "$STAGE/usr/local/bin/$m"
    done
    standin runc "$RUNC_VERSION" "$arch" "$STAGE/usr/local/sbin/runc"
    find "$STAGE" -type d -exec chmod 0755 {} +
    mktgz "$work/containerd.tar.gz" "$STAGE" usr
    place "$work/containerd.tar.gz" "$cdir/containerd.tar.gz" 0644

    printf 'rootfs-mount demo stand-in: libseccomp.so.%s linux/%s (not a real shared object)\n' \
        "$LIBSECCOMP_VERSION" "$arch" >"$work/libseccomp"
    place "$work/libseccomp" "$cdir/lib64/libseccomp.so.$LIBSECCOMP_VERSION" 0755
    place_symlink "libseccomp.so.$LIBSECCOMP_VERSION" "$cdir/lib64/libseccomp.so.2"
    place "$work/registry-$arch-2.tar.gz" "$cdir/registry.tar.gz" 0644
done

# ---------------------------------------------------------------- registry/docker/registry/v2

v2=$dir/registry/docker/registry/v2

# put_blob FILE: store FILE as a blob; sets BLOB_SHA and BLOB_SIZE.
put_blob() {
    sha256_of "$1"
    size_of "$1"
    BLOB_SHA=$SHA
    BLOB_SIZE=$SIZE
    place "$1" "$v2/blobs/sha256/${SHA:0:2}/$SHA/data" 0644
}

# put_link PATH SHA: a registry link file holding "sha256:<hex>" (no newline).
put_link() {
    printf 'sha256:%s' "$2" >"$work/link"
    place "$work/link" "$1/link" 0644
}

# sample_image NAME TAG: a two-arch image (manifest list + one schema2 manifest per arch).
sample_image() {
    local name=$1 tag=$2 repo arch entries="" sep="" layer_sha layer_size config_sha config_size
    repo=$v2/repositories/$name
    for arch in "${ARCHES[@]}"; do
        # layer blob (tar.gz)
        fresh_stage img
        mkdir -p "$STAGE/usr/local/bin"
        standin "${name##*/}" "$tag" "$arch" "$STAGE/usr/local/bin/${name##*/}"
        printf 'rootfs-mount demo stand-in image %s:%s linux/%s\n' "$name" "$tag" "$arch" \
            >"$STAGE/DEMO-IMAGE.txt"
        chmod 0644 "$STAGE/DEMO-IMAGE.txt"
        find "$STAGE" -type d -exec chmod 0755 {} +
        mktar "$work/img-layer.tar" "$STAGE" DEMO-IMAGE.txt usr
        sha256_of "$work/img-layer.tar"
        local diff_id=$SHA
        gzip -n -9 <"$work/img-layer.tar" >"$work/img-layer.tar.gz"
        rm -f -- "$work/img-layer.tar"
        put_blob "$work/img-layer.tar.gz"
        layer_sha=$BLOB_SHA layer_size=$BLOB_SIZE
        put_link "$repo/_layers/sha256/$layer_sha" "$layer_sha"

        # config blob
        printf '{%s,"config":{"Entrypoint":["/usr/local/bin/%s"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},"created":"%s","history":[{"created":"%s","created_by":"rootfs-mount demo stand-in for %s:%s (scripts/demo-cache.sh)"}],"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
            "$(platform_json "$arch")" "${name##*/}" "$CREATED" "$CREATED" "$name" "$tag" "$diff_id" \
            >"$work/img-config.json"
        put_blob "$work/img-config.json"
        config_sha=$BLOB_SHA config_size=$BLOB_SIZE
        put_link "$repo/_layers/sha256/$config_sha" "$config_sha"

        # per-arch manifest
        printf '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":%s,"digest":"sha256:%s"},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":%s,"digest":"sha256:%s"}]}' \
            "$config_size" "$config_sha" "$layer_size" "$layer_sha" >"$work/img-manifest.json"
        put_blob "$work/img-manifest.json"
        put_link "$repo/_manifests/revisions/sha256/$BLOB_SHA" "$BLOB_SHA"
        entries+=$(printf '%s{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":%s,"digest":"sha256:%s","platform":{%s}}' \
            "$sep" "$BLOB_SIZE" "$BLOB_SHA" "$(platform_json "$arch")")
        sep=,
    done

    # manifest list, tagged
    printf '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[%s]}' \
        "$entries" >"$work/img-index.json"
    put_blob "$work/img-index.json"
    put_link "$repo/_manifests/revisions/sha256/$BLOB_SHA" "$BLOB_SHA"
    put_link "$repo/_manifests/tags/$tag/current" "$BLOB_SHA"
    put_link "$repo/_manifests/tags/$tag/index/sha256/$BLOB_SHA" "$BLOB_SHA"
}

sample_image pause 3.6
sample_image etcd 3.5.1-0
sample_image coredns/coredns v1.8.6

# ---------------------------------------------------------------- summary

echo "demo cache ready: $dir (${#placed[@]} files; versions: ${versions[*]}; arches: ${ARCHES[*]})"
