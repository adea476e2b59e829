#!/usr/bin/env bash
# Tools the deploy tests (tests/deploy, docs/deploy.md#tests) need on a fresh Debian CI machine,
# run as root: prometheus + promtool from Debian's package registry, and kubernetes-validate
# (bundles the Kubernetes OpenAPI schemas, validates offline). kubectl is already on the CI
# machines; this script only says so when it is not. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "deploy-tools: run as root to apt-get install prometheus" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # the package's postinst tries to start a system service: in CI there is none to start
    apt-get install -y -q --no-install-recommends prometheus
fi
promtool --version | head -n 1
prometheus --version | head -n 1

python -m pip install -q "kubernetes-validate>=1.32,<1.38"  # bundles the 1.32 schema the tests use

if ! command -v kubectl >/dev/null; then
    echo "deploy-tools: kubectl is missing: install it (the kustomize tests need it)" >&2
    exit 1
fi
kubectl version --client | head -n 1
