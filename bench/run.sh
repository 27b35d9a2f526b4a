#!/usr/bin/env bash
# Builds the static musl release binary of execd and runs the command
# round-trip benchmark (execd/benches/command_roundtrip.rs), which prints a
# markdown table and writes it to target/bench-command-roundtrip.md.
#
# Environment: BENCH_N (measured round trips per scenario and per floor,
# default 2000), EXECD_BIN (benchmark another binary instead; skips nothing,
# the musl build still runs).
set -euo pipefail

cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-musl

if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$TARGET"; then
    echo "bench: adding rust target $TARGET" >&2
    rustup target add "$TARGET"
fi

if ! command -v musl-gcc >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bench: installing musl-tools" >&2
        apt-get install -y musl-tools >&2
    else
        echo "bench: musl-gcc not found; the build may fail (install musl-tools)" >&2
    fi
fi

cargo build --release --target "$TARGET" -p execd
cargo bench -p execd --bench command_roundtrip
