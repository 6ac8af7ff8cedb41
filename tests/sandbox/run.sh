#!/bin/bash
# Runs a ClusterImage entry script the way sealer runs it on a node, without touching this
# host: tests/sealer_image.rs calls
#   unshare --mount --propagation private bash run.sh STATE IMAGE_ROOT DIR COMMAND...
# in a private mount namespace. Every folder the scripts write (/etc, /usr, /var, /opt,
# /run, /tmp; /usr/lib64, /lib and /sbin are inside /usr here) gets an overlay whose upper
# layer is STATE/upper/<folder>, so what a script installs lands there and nowhere else, and
# a second call with the same STATE sees what the first one left (init, then clean).
# Commands that would reach the host (systemctl, modprobe, sysctl, swapoff, ip, the CRI
# CLIs, SELinux and firewall tools) are stubs in STATE/stubs that log their arguments to
# STATE/calls.log. COMMAND runs in IMAGE_ROOT/DIR, as sealer's `cd ... && bash ...` does.
set -euo pipefail

state=$1
image_root=$2
dir=$3
shift 3

# The namespace must be private, or the overlays below would show on the host.
if grep -q ' / / .*shared:' /proc/self/mountinfo; then
  echo "run.sh: / is shared in this mount namespace; run under unshare --propagation private" >&2
  exit 1
fi

folders=(etc usr var opt run tmp)
mkdir -p "$state/stubs"
touch "$state/calls.log"
for folder in "${folders[@]}"; do
  mkdir -p "$state/upper/$folder" "$state/work/$folder"
done
# STATE and IMAGE_ROOT may themselves lie below an overlaid folder (a checkout in /tmp or
# /var): they are opened before the first overlay and reached through those descriptors
# from then on (an upper layer below an overlay would be refused), and bound back onto
# their paths once the overlays are up, so that they stay the real folders. mount(8) must
# not canonicalize the /proc paths.
exec {state_fd}<"$state" {image_fd}<"$image_root"
real_state=/proc/self/fd/$state_fd
for folder in "${folders[@]}"; do
  mount --no-canonicalize -t overlay overlay \
    -o "lowerdir=/$folder,upperdir=$real_state/upper/$folder,workdir=$real_state/work/$folder" "/$folder"
done
mount --no-canonicalize --bind "/proc/self/fd/$state_fd" "$state"
mount --no-canonicalize --bind "/proc/self/fd/$image_fd" "$image_root"

# A node without a container runtime: runtimes of the machine running the test are hidden
# (the removals are whiteouts in the upper layer), once, before the first script.
[ -e "$state/hidden" ] || for runtime in dockerd containerd containerd-shim-runc-v2 runc ctr nerdctl docker crictl kubelet kubeadm kubectl; do
  for prefix in /usr/bin /usr/sbin /usr/local/bin /usr/local/sbin; do
    if [ -e "$prefix/$runtime" ] || [ -L "$prefix/$runtime" ]; then
      rm -f "$prefix/$runtime"
    fi
  done
done
touch "$state/hidden"

stub() {
  local name=$1 body=${2:-}
  cat >"$state/stubs/$name" <<STUB
#!/bin/bash
printf '%s\n' "$name \$*" >>"$state/calls.log"
$body
exit 0
STUB
  chmod 0755 "$state/stubs/$name"
}
for name in systemctl modprobe sysctl swapoff ip setenforce getenforce ufw iptables; do
  stub "$name"
done
# The CRI CLIs answer what the scripts ask: a loaded image, a running container.
for cli in docker nerdctl; do
  # shellcheck disable=SC2016 # expanded by the stub
  stub "$cli" 'case "$1" in
load) echo "Loaded image: registry:2.8.1" ;;
inspect | container) echo running ;;
esac'
done
# ctr answers for containerd.sh's readiness check; the socket it waits for is made here.
stub ctr
mkdir -p /run/containerd
[ -S /run/containerd/containerd.sock ] || python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' /run/containerd/containerd.sock

cd "$image_root/$dir"
PATH="$state/stubs:$PATH" "$@"
