#!/bin/bash
# Undoes init-kube.sh: stops the kubelet and removes its unit, the binaries installed from
# bin/, the kernel settings files and the kubelet's state. Run by clean.sh after sealer has
# reset the node with kubeadm. Keeps going past errors so that a half installed node is
# cleaned as far as possible.

scripts_path=$(cd "$(dirname "$0")" && pwd)
rootfs=$(dirname "$scripts_path")

systemctl disable --now kubelet.service >/dev/null 2>&1 || true

# Volumes of pods that are still mounted must be unmounted before their folders go, or
# rm would delete the data behind them.
if [ -d /var/lib/kubelet ]; then
  awk '$2 ~ "^/var/lib/kubelet/" { print $2 }' /proc/mounts | sort -r | while IFS= read -r mount_point; do
    umount "$mount_point" 2>/dev/null || umount -l "$mount_point" 2>/dev/null || true
  done
  rm -rf /var/lib/kubelet
fi

for file in "$rootfs"/bin/*; do
  if [ -e "$file" ]; then
    rm -f "/usr/bin/$(basename "$file")"
  fi
done
rm -f /usr/bin/kubelet-pre-start.sh

rm -f /etc/systemd/system/kubelet.service
rm -rf /etc/systemd/system/kubelet.service.d
rm -f /etc/sysctl.d/k8s.conf /etc/modules-load.d/k8s.conf
rm -f /etc/kubernetes/audit-policy.yml
systemctl daemon-reload >/dev/null 2>&1 || true

exit 0
