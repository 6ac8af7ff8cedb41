#!/bin/bash
# Installs the Kubernetes node of this ClusterImage on this host: the binaries of bin/
# (kubeadm, kubectl, kubelet, crictl, conntrack, nerdctl, seautil ...), the kubelet unit
# with kubeadm's drop-in, the apiserver audit policy, and the kernel and OS settings that
# kubeadm's preflight checks require. Run by init.sh once the container runtime is up.
# Undone by clean-kube.sh.
set -e

scripts_path=$(cd "$(dirname "$0")" && pwd)
rootfs=$(dirname "$scripts_path")

# Persist what kubelet-pre-start.sh sets at every kubelet start.
persist_kernel_settings() {
  mkdir -p /etc/modules-load.d /etc/sysctl.d
  printf '%s\n' overlay br_netfilter ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh >/etc/modules-load.d/k8s.conf
  cat >/etc/sysctl.d/k8s.conf <<SYSCTL
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward = 1
SYSCTL
  sysctl --system >/dev/null 2>&1 || echo "init-kube: sysctl --system reported errors" >&2
}

# kubelet refuses to run with swap on (failSwapOn); keep it off across reboots.
disable_swap_in_fstab() {
  if [ -f /etc/fstab ] && grep -Eq '^[^#][^[:space:]]*[[:space:]]+[^[:space:]]+[[:space:]]+swap[[:space:]]' /etc/fstab; then
    cp -p /etc/fstab /etc/fstab.sealer.bak
    sed -Ei 's/^([^#][^[:space:]]*[[:space:]]+[^[:space:]]+[[:space:]]+swap[[:space:]].*)$/# \1/' /etc/fstab
  fi
}

# Containers must be able to read the host filesystem (kubeadm's documented requirement).
set_selinux_permissive() {
  if command -v getenforce >/dev/null 2>&1 && [ "$(getenforce)" = "Enforcing" ]; then
    setenforce 0
  fi
  if [ -f /etc/selinux/config ]; then
    sed -i 's/^SELINUX=enforcing$/SELINUX=permissive/' /etc/selinux/config
  fi
}

# Host firewalls block the ports of the apiserver, kubelet, etcd and the CNI.
stop_host_firewall() {
  if systemctl is-active --quiet firewalld 2>/dev/null; then
    systemctl disable --now firewalld || echo "init-kube: cannot stop firewalld" >&2
  fi
  if command -v ufw >/dev/null 2>&1 && ufw status 2>/dev/null | grep -q '^Status: active'; then
    ufw disable || echo "init-kube: cannot disable ufw" >&2
  fi
}

install_binaries() {
  local file
  for file in "$rootfs"/bin/*; do
    if [ -f "$file" ]; then
      install -m 0755 "$file" "/usr/bin/$(basename "$file")"
    fi
  done
}

install_kubelet_unit() {
  install -m 0755 "$scripts_path/kubelet-pre-start.sh" /usr/bin/kubelet-pre-start.sh
  mkdir -p /etc/systemd/system/kubelet.service.d
  install -m 0644 "$rootfs/etc/kubelet.service" /etc/systemd/system/kubelet.service
  install -m 0644 "$rootfs/etc/10-kubeadm.conf" /etc/systemd/system/kubelet.service.d/10-kubeadm.conf
  systemctl daemon-reload
  # kubeadm starts it; enabling it here makes it come back after a reboot
  systemctl enable kubelet.service
}

# The apiserver mounts this file (apiServer.extraVolumes in etc/kubeadm.yml). A policy that
# sealer or the user already put there is kept.
install_audit_policy() {
  mkdir -p /etc/kubernetes /var/log/kubernetes
  if [ ! -f /etc/kubernetes/audit-policy.yml ]; then
    install -m 0644 "$rootfs/statics/audit-policy.yml" /etc/kubernetes/audit-policy.yml
  fi
}

install_binaries
persist_kernel_settings
bash "$scripts_path/kubelet-pre-start.sh"
disable_swap_in_fstab
set_selinux_permissive
stop_host_firewall
install_audit_policy
install_kubelet_unit
