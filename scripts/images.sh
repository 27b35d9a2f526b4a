#!/usr/bin/env bash
# Builds the images the lifecycle server and its tests use, with no registry:
#   - the static (musl) release binaries of execd and egress (as .ci/run does);
#   - $EXECD_IMAGE  (default opensandbox/execd:local)  from Dockerfile.execd;
#   - $EGRESS_IMAGE (default opensandbox/egress:local) from Dockerfile.egress;
#   - $BASE_IMAGE   (default opensandbox-test/debian:bookworm) by scripts/base-image.sh
#     (skipped with NO_BASE_IMAGE=1).
# Checks the execd image as upstream's server reads it: created with
# Cmd=["tail","-f","/dev/null"] and started, /execd and /bootstrap.sh come out
# of the archive API as regular files with mode 0755.
# Idempotent (cargo and docker build caches); prints the image names.
set -euo pipefail
cd "$(dirname "$0")/.."

execd_image=${EXECD_IMAGE:-opensandbox/execd:local}
egress_image=${EGRESS_IMAGE:-opensandbox/egress:local}
target=x86_64-unknown-linux-musl
log() { echo "images: $*" >&2; }

# (Not scripts/setup.sh, which itself runs this script.)
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  rustup target add "$target" >&2
fi
command -v musl-gcc >/dev/null || { log "musl-gcc missing: run scripts/setup.sh (musl-tools)"; exit 1; }
log "cargo build --release --target $target -p execd -p egress"
cargo build -q --release --target "$target" -p execd -p egress >&2

# COPY keeps the context's modes (the legacy builder has no --chmod), and a
# checkout's modes follow its umask: make both files 0755 whatever it was.
chmod 0755 "target/$target/release/execd" "target/$target/release/egress" execd/bootstrap.sh

log "docker build $execd_image, $egress_image"
build() { # quiet (the legacy builder's deprecation notice too) unless it fails
  local out
  out=$(docker build -q -f "$1" -t "$2" . 2>&1) || { echo "$out" >&2; log "docker build -f $1 failed"; exit 1; }
}
build Dockerfile.execd "$execd_image"
build Dockerfile.egress "$egress_image"

# The archive check: exactly what the server does (create with tail -f
# /dev/null, start, get_archive of each file, remove).
probe=opensandbox-images-probe-$$
trap 'docker rm -f "$probe" >/dev/null 2>&1 || true' EXIT
docker create --name "$probe" "$execd_image" tail -f /dev/null >/dev/null
docker start "$probe" >/dev/null
for f in execd bootstrap.sh; do
  entry=$(docker cp "$probe:/$f" - | tar -tvf - "$f")
  case "$entry" in
    "-rwxr-xr-x "*) ;;
    *) log "$execd_image:/$f is not a regular 0755 file: $entry"; exit 1 ;;
  esac
done
docker rm -f "$probe" >/dev/null
trap - EXIT

echo "$execd_image"
echo "$egress_image"
if [ "${NO_BASE_IMAGE:-0}" != 1 ]; then
  bash scripts/base-image.sh
fi
