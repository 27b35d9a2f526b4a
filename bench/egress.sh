#!/usr/bin/env bash
# Builds the release binary of egress (static musl, as shipped) and runs the egress benchmark
# (netns-tests/benches/egress.rs): DNS qps and latency through egress,
# straight to the resolver and through dnsmasq; PATCH /policy latency;
# answer-to-connect time; binary size and idle RSS. Prints a markdown table
# and writes it to target/bench-egress.md.
#
# Needs root (network namespaces, nftables, cgroup v2); without it the bench
# says SKIPPED. Installs dnsmasq with apt-get when it is missing.
#
# Environment: EGRESS_BIN (benchmark another binary; the release build
# still runs), BENCH_DNS_N (queries per throughput run, default 50000),
# BENCH_WINDOW (outstanding queries, default 16).
set -euo pipefail

cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "SKIPPED egress bench: needs root for network namespaces, cgroups and nftables (run: sudo bash bench/egress.sh)"
    exit 0
fi

if ! command -v dnsmasq >/dev/null 2>&1 && [ ! -x /usr/sbin/dnsmasq ]; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "bench: installing dnsmasq" >&2
        export DEBIAN_FRONTEND=noninteractive
        # Only the binary is used; nothing may start it as a service.
        apt-get install -y dnsmasq >&2 || { apt-get update >&2 && apt-get install -y dnsmasq >&2; }
    else
        echo "bench: dnsmasq not found and no apt-get; its column stays empty" >&2
    fi
fi

# The static musl build is what ships (its allocator gives memory back, and
# costs some speed): measure it when the target is there.
if grep -qx x86_64-unknown-linux-musl <<<"$(rustup target list --installed 2>/dev/null)" && command -v musl-gcc >/dev/null; then
    cargo build --release --target x86_64-unknown-linux-musl -p egress
    export EGRESS_BIN="${EGRESS_BIN:-$PWD/target/x86_64-unknown-linux-musl/release/egress}"
else
    echo "bench: no musl target (run scripts/setup.sh); measuring the glibc build" >&2
    cargo build --release -p egress
    export EGRESS_BIN="${EGRESS_BIN:-$PWD/target/release/egress}"
fi
cargo bench -p netns-tests --bench egress
