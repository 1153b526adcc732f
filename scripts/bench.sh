#!/usr/bin/env bash
# The clone and backup benchmark: a loopback cluster with a sysbench dataset (1 GiB unless
# --size says otherwise); the agent's clone against the tutorial's pipeline and the backup
# tool's floor, and backups to a real S3 server (Garage) and restores from it, interleaved
# over several runs. Prints the table and writes it to target/bench-results.md.
# Arguments go to the benchmark (target/release/bench --help): --size 4GiB, --runs 9,
# --compare-agent OLD_BINARY, --clone-volume shared, --hold. Runs as root: the clones go to
# a volume of their own (a loop device), as a new replica's do in the StatefulSet.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/setup-s3.sh
cargo build --release --locked -p mysql-agent --bin mysql-agent -p mysql-agent-harness --bin bench
exec target/release/bench "$@"
