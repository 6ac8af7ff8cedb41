#!/bin/bash
# Entry point sealer v0.8 runs when it removes a node (after kubeadm reset): undoes init.sh.
# Removes the Kubernetes node (clean-kube.sh), then docker and the registry container
# (uninstall-docker.sh, which sealer v0.9 and later run themselves). Keeps going past errors.

scripts_path=$(cd "$(dirname "$0")" && pwd)

bash "$scripts_path/clean-kube.sh"
bash "$scripts_path/uninstall-docker.sh"

exit 0
