#!/usr/bin/env bash
# Builds the static musl release binary of execd and runs the PTY benchmark
# (execd/benches/pty.rs): keystroke-to-echo latency over the WebSocket versus
# a local PTY pair, and output throughput through a PTY and in pipe mode
# versus a local PTY master and a plain pipe, with execd's peak RSS. Prints a
# markdown table and writes it to target/bench-pty.md.
#
# Environment: BENCH_PTY_KEYS (keystrokes per side, default 2000),
# BENCH_PTY_BYTES (output per throughput run, default 1073741824),
# BENCH_PTY_RUNS (throughput runs per side, best kept, default 2),
# EXECD_BIN (benchmark another binary).
set -euo pipefail

cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-musl

if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$TARGET"; then
    rustup target add "$TARGET"
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    dpkg -s musl-tools >/dev/null 2>&1 || apt-get install -y musl-tools >&2 || true
fi

cargo build --release --target "$TARGET" -p execd
cargo bench -p execd --bench pty
