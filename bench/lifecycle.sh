#!/usr/bin/env bash
# Create-to-ready benchmark of the lifecycle server through the official SDK
# (bench/lifecycle_bench.py). Builds the images and the release server,
# makes the SDK venv if needed, starts the server on a free port with a
# temporary store, prints the table. BENCH_N (sequential, default 20),
# BENCH_C (concurrent, default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/images.sh >/dev/null
cargo build --release -p lifecycle
[ -x target/sdk-venv/bin/python ] || { python3 -m venv target/sdk-venv && target/sdk-venv/bin/pip install -q opensandbox==1.1.1; }
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf '[server]\nport = %s\napi_key = "bench-key"\n[docker]\nlabel_prefix = "bench.opensandbox.io/"\n[store]\npath = "%s/store.db"\n' "$port" "$dir" > "$dir/config.toml"
target/release/opensandbox-lifecycle --config "$dir/config.toml" > "$dir/server.log" 2>&1 &
pid=$!
cleanup() {
    kill "$pid" 2>/dev/null || true
    docker ps -aq --filter label=bench.opensandbox.io/id | xargs -r docker rm -f >/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 100); do curl -fsS "127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.1; done
echo "| server | scenario | p50 | p99 / max | notes |"
echo "|---|---|---|---|---|"
OPENSANDBOX_DISABLE_METRICS=1 target/sdk-venv/bin/python bench/lifecycle_bench.py ours "127.0.0.1:$port" bench-key \
    "${BENCH_IMAGE:-opensandbox-test/debian:bookworm}" "${BENCH_N:-20}" "${BENCH_C:-10}"
