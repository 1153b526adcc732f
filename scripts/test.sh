#!/usr/bin/env bash
# Every test: formatting, lints (with and without the test-only failpoints), the packaging
# checks, unit tests, the integration and fault tests on real MariaDB pods and a real S3
# server, and the benchmark on a tiny dataset (to keep it working: its times are not
# asserted).
set -euo pipefail
cd "$(dirname "$0")/.."
# The disk is the resource a test machine runs out of first (the build and the test pods'
# volumes share it): said at the start and at the end, whatever the outcome.
df -h . >&2
trap 'df -h . >&2' EXIT
scripts/setup.sh
scripts/setup-s3.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
scripts/check-packaging.sh
cargo test --workspace --all-features --locked
scripts/bench.sh --size 32MiB --runs 1 --settle 0s --root target/bench-smoke --out target/bench-smoke-results.md \
    --archive-load 8s --archive-interval 2s
