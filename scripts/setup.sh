#!/usr/bin/env bash
# Installs what building and testing the workspace needs on a Debian machine
# with a Rust toolchain (rustup): a C toolchain, musl-tools and the musl target
# for static binaries, and the programs the tests use (iproute2 for network
# namespaces, nftables to check what egress programs; curl and python3 for the image
# smoke test). Idempotent.
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
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  rustup target add x86_64-unknown-linux-musl
fi
