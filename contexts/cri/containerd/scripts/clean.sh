#!/bin/bash
# Entry point sealer v0.8 runs when it removes a node (after kubeadm reset): undoes init.sh.
# Removes the Kubernetes node (clean-kube.sh), then containerd and the registry container
# (uninstall-containerd.sh, which sealer v0.9 and later run themselves). Keeps going past
# errors.

scripts_path=$(cd "$(dirname "$0")" && pwd)

bash "$scripts_path/clean-kube.sh"
bash "$scripts_path/uninstall-containerd.sh"

exit 0
