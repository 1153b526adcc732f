#!/usr/bin/env bash
# Every test: formatting, lints, unit tests, and the integration tests on real MariaDB pods.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
