#!/bin/bash
# Kernel prerequisites of a Kubernetes node: the modules kube-proxy (ipvs mode) and the CNI
# use, bridged traffic through iptables, IP forwarding, and no swap.
# Installed as /usr/bin/kubelet-pre-start.sh and run before every kubelet start
# (ExecStartPre in etc/kubelet.service); init-kube.sh also runs it once at install time.
# It never fails: a module missing from the kernel must not keep the kubelet down.

warn() {
  echo "kubelet-pre-start: $*" >&2
}

# $1 >= $2, both dotted versions
version_ge() {
  [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | tail -n 1)" = "$1" ]
}

modules=(overlay br_netfilter ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh)
# nf_conntrack_ipv4 was merged into nf_conntrack in Linux 4.19
kernel_version=$(uname -r | cut -d- -f1)
if version_ge "$kernel_version" 4.19; then
  modules+=(nf_conntrack)
else
  modules+=(nf_conntrack_ipv4)
fi
for module in "${modules[@]}"; do
  if ! modprobe -- "$module" 2>/dev/null; then
    warn "cannot load kernel module $module"
  fi
done

for setting in net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 net.ipv4.ip_forward=1; do
  if ! sysctl -q -w "$setting" >/dev/null 2>&1; then
    warn "cannot set $setting"
  fi
done

if ! swapoff -a; then
  warn "cannot turn swap off"
fi

exit 0
