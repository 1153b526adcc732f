#!/usr/bin/env bash
# Installs what the demo and the tests need on a Debian machine, once: MariaDB's server and
# backup tool (mariadbd, mariadb-backup, mbstream), ncat (the tutorial's relay) and sysbench
# (the benchmark's dataset).
set -euo pipefail

packages=(mariadb-server mariadb-backup ncat sysbench)

if [[ $(id -u) -ne 0 ]]; then
    echo "setup: run as root; the cluster model runs mysqld and names its pods in /etc/hosts" >&2
    exit 1
fi
for tool in cargo rustc; do
    command -v "$tool" >/dev/null || { echo "setup: $tool not found; install a Rust toolchain (rustup)" >&2; exit 1; }
done

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
