#!/usr/bin/env bash
# Builds the static execd binary and runs it on :44772 (flags are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --target x86_64-unknown-linux-musl -p execd
exec target/x86_64-unknown-linux-musl/release/execd "$@"
