#!/usr/bin/env bash
# The tutorial end to end on a loopback cluster: three pods driven by mysql-agent, a write on
# mysql-0 read back from every replica, then a scale to four pods.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p mysql-agent
cargo run --release --locked --quiet -p mysql-agent-harness --bin demo -- --agent target/release/mysql-agent "$@"
