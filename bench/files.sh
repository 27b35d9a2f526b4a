#!/usr/bin/env bash
# Builds the static musl release binary of execd and runs the file transfer
# benchmark (execd/benches/files_transfer.rs): 1 MiB and 1 GiB uploads and
# downloads against python3 http.server, nginx (installed here when root and
# apt is available) and a raw pipe-to-file floor. Prints a markdown table and
# writes it to target/bench-files.md.
#
# Environment: BENCH_SMALL_N (1 MiB transfers per side, default 300),
# BENCH_BIG_N (1 GiB transfers per side, default 3), BENCH_DIR (default
# /dev/shm), EXECD_BIN (benchmark another binary).
set -euo pipefail

cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-musl

if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$TARGET"; then
    rustup target add "$TARGET"
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    for pkg in musl-tools nginx-light; do
        dpkg -s "$pkg" >/dev/null 2>&1 || apt-get install -y "$pkg" >&2 || true
    done
fi

cargo build --release --target "$TARGET" -p execd
cargo bench -p execd --bench files_transfer
