#!/usr/bin/env bash
# Installs the real S3 server the backup tests and the benchmark run against: Garage, a
# production self-hosted S3 store, built from crates.io into target/tools/bin (about 15
# minutes on 2 cores the first time; a rerun finds it and does nothing). Also musl-tools,
# which the static build needs for zstd's C library.
set -euo pipefail
cd "$(dirname "$0")/.."

garage_version=2.5.0
tools=target/tools

if [[ $(id -u) -eq 0 ]] && ! dpkg-query -W -f='${Status}' musl-tools 2>/dev/null | grep -q "install ok installed"; then
    echo "setup-s3: installing musl-tools"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq musl-tools >/dev/null
fi

if ! "$tools/bin/garage" --version 2>/dev/null | grep -q "cargo:$garage_version"; then
    echo "setup-s3: building Garage $garage_version from crates.io into $tools/bin (once; about 15 minutes on 2 cores)"
    started=$(date +%s)
    cargo install garage --locked --version "$garage_version" --root "$tools" \
        --target-dir "$tools/build" --quiet
    # The build tree is 800 MB; the binary is all the tests need.
    rm -rf "$tools/build"
    echo "setup-s3: Garage built in $(( $(date +%s) - started )) s"
fi
"$tools/bin/garage" --version
