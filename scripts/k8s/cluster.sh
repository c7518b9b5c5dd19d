#!/usr/bin/env bash
# Brings up the local Kubernetes control plane that tests/e2e uses (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kwok with 3 fake nodes, all on 127.0.0.1,
# service IPs 127.1.0.0/16, pod IPs 127.N.0.0/16: N from 2 up, the first that no other
# cluster on this machine holds), prints its KUBECONFIG, and tears it down on Ctrl-C.
# Builds the binaries first if this machine has none.
#   bash scripts/k8s/cluster.sh [--workdir DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/k8s/build.sh >/dev/null
python=${PYTHON:-.venv/bin/python}
exec "$python" -m tests.e2e.cluster "$@"
