#!/usr/bin/env bash
# Tests execd/bootstrap.sh the way the lifecycle server uses it: execd and
# bootstrap.sh are read out of the execd image with the archive API (a
# container created with `tail -f /dev/null`), put into a created (not yet
# started) container of the Debian base image under /opt/opensandbox, and the
# container runs with ENTRYPOINT /opt/opensandbox/bootstrap.sh and the user
# command as CMD. execd's /ping is reached through a port published on
# 127.0.0.1. Builds what it needs with scripts/images.sh.
# Prints PASS/FAIL per check; exits non-zero if any failed. Removes its
# containers whatever happens.
# shellcheck disable=SC2016,SC2034 # single-quoted on purpose: expanded by eval, or in the container
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
if ! docker info >/dev/null 2>&1; then
  echo "SKIPPED bootstrap tests: no Docker engine"; exit 0
fi

images=$(bash scripts/images.sh) || { echo "FAIL: scripts/images.sh"; exit 1; }
execd_image=$(sed -n 1p <<<"$images")
base_image=$(sed -n 3p <<<"$images")

tag=bst-$$
tmp=$(mktemp -d)
names=()
cleanup() {
  ((${#names[@]})) && docker rm -f "${names[@]}" >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT
passed=0 failed=0
pass() { echo "PASS: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
# check NAME CONDITION-COMMAND...: PASS when the command succeeds.
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }

# 1. The files, as the server gets them.
src=$tag-execd; names+=("$src")
docker create --name "$src" "$execd_image" tail -f /dev/null >/dev/null
docker start "$src" >/dev/null
mkdir -p "$tmp/root/opt/opensandbox"
chmod 0755 "$tmp/root/opt" "$tmp/root/opt/opensandbox"
for f in execd bootstrap.sh; do
  docker cp "$src:/$f" - | tar -x -C "$tmp/root/opt/opensandbox" || { echo "FAIL: get /$f from $execd_image"; exit 1; }
done
docker rm -f "$src" >/dev/null
# A pre-script for (c): its export must reach execd and the user command;
# it fails at the end, which is reported and does not stop the start.
printf 'export PRE_VAR=from-pre\nfalse\n' >"$tmp/root/opt/opensandbox/pre.sh"
tar -C "$tmp/root" -cf "$tmp/opensandbox.tar" opt

# sandbox NAME DOCKER-CREATE-ARGS... IMAGE CMD...: create, copy the files in, start.
sandbox() {
  local name=$tag-$1; shift
  names+=("$name")
  docker create --name "$name" --entrypoint /opt/opensandbox/bootstrap.sh \
    -p 127.0.0.1::44772 "$@" >/dev/null &&
    docker cp - "$name:/" <"$tmp/opensandbox.tar" &&
    docker start "$name" >/dev/null
}
# ping NAME: execd answers /ping within 10 s.
ping() {
  local addr _
  for _ in $(seq 100); do
    addr=$(docker port "$tag-$1" 44772/tcp 2>/dev/null | head -n1)
    [ -n "$addr" ] && curl -fsS -m 1 -o /dev/null "http://$addr/ping" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
# exit_code NAME: waits (at most 20 s) for the container to end, prints its exit code.
exit_code() { timeout 20 docker wait "$tag-$1" 2>/dev/null || echo "none (still running?)"; }
ms() { date +%s%3N; }
logs() { docker logs "$tag-$1" 2>&1 | sed 's/^/    | /'; }

# (a) the user command's exit status is the container's; execd answered meanwhile.
sandbox a "$base_image" sh -c 'while [ ! -e /tmp/go ]; do sleep 0.05; done; exit 7'
check "(a) execd answers /ping while the user command runs" ping a
docker exec "$tag-a" touch /tmp/go
code=$(exit_code a)
check "(a) user command 'exit 7' -> container exit code 7 (got $code)" [ "$code" = 7 ]

# (b) docker stop: SIGTERM is forwarded, the command's own status comes back.
sandbox b "$base_image" sh -c 'trap "exit 3" TERM; while :; do sleep 0.1; done'
ping b || fail "(b) execd did not answer"
t0=$(ms); docker stop -t 10 "$tag-b" >/dev/null; took=$(($(ms) - t0))
code=$(exit_code b)
check "(b) docker stop -> TERM forwarded, exit code 3 (got $code) in ${took} ms (< 5000)" \
  eval '[ "$code" = 3 ] && [ "$took" -lt 5000 ]'

# (c) -c "<string>" sees the container env and the pre-script's export; so does execd.
sandbox c -e FOO=bar -e EXECD_BOOTSTRAP_PRE_SCRIPT=/opt/opensandbox/pre.sh "$base_image" \
  -c 'echo "$FOO $PRE_VAR" > /tmp/x; sleep 60'
ping c || fail "(c) execd did not answer"
got=""
for _ in $(seq 50); do got=$(docker exec "$tag-c" cat /tmp/x 2>/dev/null) && break; sleep 0.1; done
check "(c) -c string ran with FOO and the pre-script's PRE_VAR (got '$got')" [ "$got" = "bar from-pre" ]
execd_env=$(docker exec "$tag-c" sh -c 'tr "\0" "\n" </proc/$(pgrep -xo execd)/environ')
check "(c) execd has PRE_VAR and EXECD_ENVS=/opt/opensandbox/.env" \
  eval 'grep -qx PRE_VAR=from-pre <<<"$execd_env" && grep -qx EXECD_ENVS=/opt/opensandbox/.env <<<"$execd_env"'
check "(c) EXECD_ENVS file created" docker exec "$tag-c" test -f /opt/opensandbox/.env
check "(c) the failing pre-script was reported" grep -q 'pre-script .* returned 1' <<<"$(docker logs "$tag-c" 2>&1)"
docker rm -f "$tag-c" >/dev/null

# (d) no command: the container stays up with execd, and stops promptly.
sandbox d "$base_image"
check "(d) no command: execd answers" ping d
sleep 1
check "(d) still running after 1 s" [ "$(docker inspect -f '{{.State.Running}}' "$tag-d")" = true ]
t0=$(ms); docker stop -t 10 "$tag-d" >/dev/null; took=$(($(ms) - t0))
code=$(exit_code d)
check "(d) docker stop ends it in ${took} ms (< 3000), exit code $code (0)" eval '[ "$took" -lt 3000 ] && [ "$code" = 0 ]'

# (e) EXECD_INIT=1: execd is the main process (PID 1) and answers.
sandbox e -e EXECD_INIT=1 "$base_image"
check "(e) EXECD_INIT=1: execd answers" ping e
pid1=$(docker exec "$tag-e" readlink /proc/1/exe 2>/dev/null)
check "(e) PID 1 is $pid1 (/opt/opensandbox/execd)" [ "$pid1" = /opt/opensandbox/execd ]
docker rm -f "$tag-e" >/dev/null

# (f) BOOTSTRAP_CMD wins over the arguments.
sandbox f -e 'BOOTSTRAP_CMD=exit 5' "$base_image" sleep 60
code=$(exit_code f)
check "(f) BOOTSTRAP_CMD='exit 5' -> exit code 5 (got $code)" [ "$code" = 5 ]

# (g) SIGINT is forwarded too.
sandbox g "$base_image" sh -c 'trap "exit 4" INT; while :; do sleep 0.1; done'
ping g || fail "(g) execd did not answer"
docker kill -s INT "$tag-g" >/dev/null
code=$(exit_code g)
check "(g) docker kill -s INT -> forwarded, exit code 4 (got $code)" [ "$code" = 4 ]

# (h) MITM CA: waited for (it arrives 2 s after the start), trusted, exported.
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$tmp/ca.key" -out "$tmp/mitmproxy-ca-cert.pem" \
  -days 1 -subj "/CN=opensandbox-test-mitm" >/dev/null 2>&1
sandbox h -e OPENSANDBOX_EGRESS_MITMPROXY_TRANSPARENT=True "$base_image" \
  -c 'echo "$NODE_EXTRA_CA_CERTS $REQUESTS_CA_BUNDLE $SSL_CERT_FILE" > /tmp/env; sleep 60'
sleep 2
check "(h) MITM: execd not started before the CA exists" bash -c "! curl -fsS -m 1 -o /dev/null http://$(docker port "$tag-h" 44772/tcp | head -n1)/ping 2>/dev/null"
docker cp "$tmp/mitmproxy-ca-cert.pem" "$tag-h:/opt/opensandbox/mitmproxy-ca-cert.pem"
check "(h) MITM: execd answers once the CA exists" ping h
got=""
for _ in $(seq 50); do got=$(docker exec "$tag-h" cat /tmp/env 2>/dev/null) && break; sleep 0.1; done
want="/opt/opensandbox/mitmproxy-ca-cert.pem /opt/opensandbox/merged-ca-certificates.pem /opt/opensandbox/merged-ca-certificates.pem"
check "(h) MITM: NODE_EXTRA_CA_CERTS, REQUESTS_CA_BUNDLE, SSL_CERT_FILE exported (got '$got')" [ "$got" = "$want" ]
cert_line=$(sed -n 2p "$tmp/mitmproxy-ca-cert.pem")
check "(h) MITM: the merged bundle and the system store hold the CA" \
  docker exec "$tag-h" sh -c "grep -q '$cert_line' /opt/opensandbox/merged-ca-certificates.pem &&
    test -e /etc/ssl/certs/opensandbox-mitmproxy-ca.pem &&
    grep -q '$cert_line' /etc/ssl/certs/ca-certificates.crt"
docker rm -f "$tag-h" >/dev/null

# (i) MITM CA that never comes: a warning, and the command runs anyway. (The
# logs are captured before grep -q: under pipefail, grep leaving early would
# fail the pipeline whenever docker logs is still writing.)
sandbox i -e OPENSANDBOX_EGRESS_MITMPROXY_TRANSPARENT=yes -e OPENSANDBOX_MITM_CA_WAIT_SECONDS=1 \
  "$base_image" sh -c 'exit 6'
code=$(exit_code i)
check "(i) MITM CA missing after 1 s: warned, command ran (exit code $code, want 6)" \
  eval '[ "$code" = 6 ] && grep -q "warning: no /opt/opensandbox/mitmproxy-ca-cert.pem" <<<"$(docker logs "$tag-i" 2>&1)"'

if ((failed)); then
  for n in "${names[@]}"; do
    n=${n#"$tag-"}
    docker inspect "$tag-$n" >/dev/null 2>&1 && { echo "  logs of $n:"; logs "$n"; }
  done
fi
echo "bootstrap: $passed passed, $failed failed"
((failed == 0))
