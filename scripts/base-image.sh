#!/usr/bin/env bash
# Builds the Debian image the tests use as a sandbox image, without a
# registry: debootstrap (minbase + procps + ca-certificates) into a directory,
# then `docker import`. Prints the image name.
#
#   BASE_IMAGE     image name (default opensandbox-test/debian:bookworm)
#   DEBIAN_MIRROR  mirror (default: the first Debian one in this machine's
#                  /etc/apt/sources.list*, else http://deb.debian.org/debian)
#   BASE_REBUILD=1 ignore both caches
#
# Caches: nothing is done when the image already exists; the rootfs tarball is
# kept under ${XDG_CACHE_HOME:-$HOME/.cache}/opensandbox/, so importing again
# after `docker image rm` does not run debootstrap again. Idempotent; safe to
# run concurrently (a lock serialises the builds). Needs root (debootstrap).
set -euo pipefail

image=${BASE_IMAGE:-opensandbox-test/debian:bookworm}
suite=bookworm
include=procps,ca-certificates
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
cache=${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/opensandbox
# The tarball's name changes with what goes into it.
tarball=$cache/debian-$suite-$arch-minbase-${include//,/-}.tar.gz

log() { echo "base-image: $*" >&2; }

have_image() { docker image inspect "$image" >/dev/null 2>&1; }

if [ "${BASE_REBUILD:-0}" != 1 ] && have_image; then
  echo "$image"; exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.base-image.lock"
flock 9
# Another run may have built it while this one waited for the lock.
if [ "${BASE_REBUILD:-0}" != 1 ] && have_image; then
  echo "$image"; exit 0
fi

mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local url
  # deb822 "URIs:" lines and one-line "deb URL suite ..." entries; not the security archive.
  url=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | sed -n -e 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' \
                 -e 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]*\)\{0,1\}\([^[:space:]]*\).*/\2/p' \
        | grep -E '^https?://.*/debian/?$' | head -n1 || true)
  echo "${url:-http://deb.debian.org/debian}"
}

if [ "${BASE_REBUILD:-0}" = 1 ] || [ ! -s "$tarball" ]; then
  if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq debootstrap >/dev/null
  fi
  url=$(mirror)
  root=$(mktemp -d "$cache/rootfs.XXXXXX")
  # debootstrap runs in its own process group, so that a stop of this script
  # stops it and its children before the directory goes; and debootstrap
  # mounts proc and sys in the target (unmounting them when it ends): should
  # one stay, never delete through it.
  dpid=""
  remove_root() {
    if [ -n "$dpid" ]; then kill -TERM -- "-$dpid" 2>/dev/null || true; wait "$dpid" 2>/dev/null || true; fi
    awk -v r="$root/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r |
      while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$root"
  }
  trap 'remove_root; rm -f "$tarball.tmp"' EXIT
  trap 'exit 143' TERM
  trap 'exit 130' INT
  log "debootstrap --variant=minbase $suite from $url"
  started=$SECONDS
  setsid -w debootstrap --variant=minbase --include="$include" --arch="$arch" \
    "$suite" "$root" "$url" >"$cache/debootstrap.log" 2>&1 </dev/null &
  dpid=$!
  if ! wait "$dpid"; then
    dpid=""
    tail -n 30 "$cache/debootstrap.log" >&2
    [ -f "$root/debootstrap/debootstrap.log" ] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
    log "debootstrap failed (full log: $cache/debootstrap.log)"; exit 1
  fi
  dpid=""
  # Smaller image: no downloaded packages, no package lists.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/* "$root"/var/tmp/*
  tar --numeric-owner -C "$root" -c . | gzip -1 >"$tarball.tmp"
  mv "$tarball.tmp" "$tarball"
  remove_root
  trap - EXIT TERM INT
  log "rootfs built in $((SECONDS - started)) s: $tarball ($(du -h "$tarball" | cut -f1))"
fi

log "importing $tarball as $image"
docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'CMD ["/bin/bash"]' \
  -m "debootstrap --variant=minbase --include=$include $suite" \
  "$tarball" "$image" >/dev/null
echo "$image"
