#!/usr/bin/env bash
# Installs what building and testing the workspace needs on a Debian machine
# with a Rust toolchain (rustup): a C toolchain, musl-tools and the musl target
# for static binaries, and the programs the tests use (iproute2 for network
# namespaces, nftables to check what egress programs; curl and python3 for the image
# smoke test). When a Docker engine is reachable it also builds the images the
# lifecycle tests run (scripts/images.sh) and a virtual environment with the
# official SDK (target/sdk-venv, opensandbox 1.1.1). Idempotent.
set -euo pipefail

need=()
command -v cc >/dev/null || need+=(build-essential)
command -v musl-gcc >/dev/null || need+=(musl-tools)
command -v bash >/dev/null || need+=(bash)
command -v setsid >/dev/null || need+=(util-linux)
command -v file >/dev/null || need+=(file)
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  rustup target add x86_64-unknown-linux-musl
fi

cd "$(dirname "$0")/.."
if docker info >/dev/null 2>&1; then
  bash scripts/images.sh >/dev/null
  if ! target/sdk-venv/bin/python -c 'import opensandbox' >/dev/null 2>&1; then
    python3 -m venv target/sdk-venv
    target/sdk-venv/bin/pip install -q opensandbox==1.1.1
  fi
else
  echo "setup: no Docker engine; the lifecycle tests will skip" >&2
fi
