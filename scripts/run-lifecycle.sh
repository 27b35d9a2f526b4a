#!/usr/bin/env bash
# Builds the images (scripts/images.sh) and the server, then runs the
# Lifecycle API on 127.0.0.1:8080 against the local Docker engine with
# lifecycle/opensandbox.toml (SANDBOX_CONFIG_PATH to use another file).
#
# An API key is required: OPENSANDBOX_SERVER_API_KEY, or one is generated and
# printed. OPENSANDBOX_INSECURE_SERVER=YES runs without a key instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/images.sh
cargo build --release -p lifecycle
if [ -z "${OPENSANDBOX_SERVER_API_KEY:-}" ] && [ "${OPENSANDBOX_INSECURE_SERVER:-}" != YES ]; then
    OPENSANDBOX_SERVER_API_KEY=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
    export OPENSANDBOX_SERVER_API_KEY
    echo "API key (send it as OPEN-SANDBOX-API-KEY): $OPENSANDBOX_SERVER_API_KEY" >&2
fi
exec target/release/opensandbox-lifecycle --config "${SANDBOX_CONFIG_PATH:-lifecycle/opensandbox.toml}"
