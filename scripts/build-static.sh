#!/usr/bin/env bash
# Builds the release binary fully static and prints its path: for musl when that target can
# be installed, else for glibc with crt-static (the machine may not reach rustup's servers).
set -euo pipefail
cd "$(dirname "$0")/.."
if rustup target list --installed | grep -qx x86_64-unknown-linux-musl ||
    rustup target add x86_64-unknown-linux-musl >&2; then
    target=x86_64-unknown-linux-musl
    cargo build --release --locked -p mysql-agent --target "$target" >&2
else
    echo "build-static: no musl target here; building a static glibc binary instead" >&2
    target=x86_64-unknown-linux-gnu
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release --locked -p mysql-agent --target "$target" >&2
fi
echo "target/$target/release/mysql-agent"
