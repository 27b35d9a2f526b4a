#!/usr/bin/env bash
# Create-to-ready benchmark through the official SDK (bench/lifecycle_bench.py),
# side by side in one run: our server, and upstream's opensandbox-server 1.1.1
# (PyPI, installed into target/upstream-venv) configured with our images.
# Builds the images and our release server, makes the SDK venv if needed,
# starts both servers on free ports with temporary stores, prints the table.
# BENCH_N (sequential, default 20), BENCH_C (concurrent, default 10),
# BENCH_UPSTREAM=0 to skip upstream.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/images.sh >/dev/null
cargo build --release -p lifecycle
[ -x target/sdk-venv/bin/python ] || { python3 -m venv target/sdk-venv && target/sdk-venv/bin/pip install -q opensandbox==1.1.1; }
image=${BENCH_IMAGE:-opensandbox-test/debian:bookworm}
dir=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    docker ps -aq --filter label=bench.opensandbox.io/id | xargs -r docker rm -f >/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
wait_health() { for _ in $(seq 300); do curl -fsS "127.0.0.1:$1/health" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "server on $1 did not start" >&2; exit 1; }

ours=$(free_port)
printf '[server]\nport = %s\napi_key = "bench-key"\n[docker]\nlabel_prefix = "bench.opensandbox.io/"\n[store]\npath = "%s/store.db"\n' "$ours" "$dir" > "$dir/ours.toml"
target/release/opensandbox-lifecycle --config "$dir/ours.toml" > "$dir/ours.log" 2>&1 &
pids+=($!)
wait_health "$ours"

if [ "${BENCH_UPSTREAM:-1}" = 1 ]; then
    [ -x target/upstream-venv/bin/opensandbox-server ] || { python3 -m venv target/upstream-venv && target/upstream-venv/bin/pip install -q opensandbox-server==1.1.1; }
    up=$(free_port)
    # Upstream reaps every container labelled opensandbox.io/id at start: it
    # must not share a daemon with sandboxes it does not own (ours use the
    # bench. prefix above).
    cat > "$dir/upstream.toml" <<TOML
[server]
host = "127.0.0.1"
port = $up
api_key = "bench-key"
[runtime]
type = "docker"
execd_image = "opensandbox/execd:local"
[store]
type = "sqlite"
path = "$dir/upstream.db"
[docker]
network_mode = "bridge"
port_range_min = 50000
port_range_max = 60000
[ingress]
mode = "direct"
[egress]
image = "opensandbox/egress:local"
mode = "dns"
TOML
    OPENSANDBOX_DISABLE_METRICS=1 target/upstream-venv/bin/opensandbox-server --config "$dir/upstream.toml" > "$dir/upstream.log" 2>&1 &
    pids+=($!)
    wait_health "$up"
fi

echo "| server | scenario | p50 | p99 / max | notes |"
echo "|---|---|---|---|---|"
export OPENSANDBOX_DISABLE_METRICS=1
target/sdk-venv/bin/python bench/lifecycle_bench.py ours "127.0.0.1:$ours" bench-key "$image" "${BENCH_N:-20}" "${BENCH_C:-10}"
if [ "${BENCH_UPSTREAM:-1}" = 1 ]; then
    target/sdk-venv/bin/python bench/lifecycle_bench.py "upstream 1.1.1 + our images" "127.0.0.1:$up" bench-key "$image" "${BENCH_N:-20}" "${BENCH_C:-10}"
fi
rss() { awk '/^VmHWM|^VmRSS/ {printf "%s %.1f MB  ", $1, $2/1000}' "/proc/$1/status"; }
echo "| ours | server memory | | | $(rss "${pids[0]}") |"
if [ "${BENCH_UPSTREAM:-1}" = 1 ]; then
    echo "| upstream 1.1.1 + our images | server memory | | | $(rss "${pids[1]}") |"
fi
