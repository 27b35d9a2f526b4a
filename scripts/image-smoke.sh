#!/usr/bin/env bash
# Builds the two images from the static binaries and checks them as a runtime
# would start them: execd answers /ping; egress (NET_ADMIN, its own network
# namespace) answers /healthz, installs its table and redirects DNS to its
# proxy. On a cgroup-v1 Docker host this exercises the socket-mark fallback.
# Talks only to loopback inside the containers' namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! docker info >/dev/null 2>&1; then
  echo "SKIPPED image smoke: no Docker engine"; exit 0
fi
tag=ci-$$
cleanup() { docker rm -f "egress-$tag" "execd-$tag" >/dev/null 2>&1 || true
            docker rmi "opensandbox/egress:$tag" "opensandbox/execd:$tag" >/dev/null 2>&1 || true; }
trap cleanup EXIT
docker build -q -f Dockerfile.execd -t "opensandbox/execd:$tag" . >/dev/null
docker build -q -f Dockerfile.egress -t "opensandbox/egress:$tag" . >/dev/null

docker run -d --name "execd-$tag" "opensandbox/execd:$tag" >/dev/null
pid=$(docker inspect -f '{{.State.Pid}}' "execd-$tag")
for _ in $(seq 50); do nsenter -t "$pid" -n curl -fsS -m 2 127.0.0.1:44772/ping >/dev/null 2>&1 && break; sleep 0.1; done
nsenter -t "$pid" -n curl -fsS -m 2 -o /dev/null -w 'execd /ping %{http_code}\n' 127.0.0.1:44772/ping

docker run -d --name "egress-$tag" --cap-add NET_ADMIN \
  -e OPENSANDBOX_EGRESS_MODE=dns+nft \
  -e 'OPENSANDBOX_EGRESS_RULES={"defaultAction":"deny","egress":[{"action":"allow","target":"allowed.test"}]}' \
  "opensandbox/egress:$tag" >/dev/null
pid=$(docker inspect -f '{{.State.Pid}}' "egress-$tag")
for _ in $(seq 50); do nsenter -t "$pid" -n curl -fsS -m 2 127.0.0.1:18080/healthz >/dev/null 2>&1 && break; sleep 0.1; done
echo "egress /healthz $(nsenter -t "$pid" -n curl -fsS -m 2 127.0.0.1:18080/healthz)"
# (captured first: grep -q closing the pipe early would fail the pipeline under pipefail)
ruleset=$(nsenter -t "$pid" -n nft list table inet opensandbox)
grep -Eq 'socket (mark|cgroupv2)' <<<"$ruleset" \
  || { echo "egress: no own-traffic exemption in the ruleset"; echo "$ruleset"; docker logs "egress-$tag"; exit 1; }
# A query to any resolver address is answered by the proxy: NXDOMAIN (rcode 3) for a denied name.
rcode=$(nsenter -t "$pid" -n python3 - <<'PY'
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
name = b"".join(bytes([len(l)]) + l for l in b"denied.test".split(b".")) + b"\0"
s.sendto(struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1), ("127.0.0.1", 53))
print(s.recv(512)[3] & 0xF)
PY
)
[ "$rcode" = 3 ] || { echo "egress: denied name got rcode $rcode, want 3"; docker logs "egress-$tag"; exit 1; }
echo "egress DNS redirect: denied.test NXDOMAIN"
logs=$(docker logs "egress-$tag" 2>&1)
grep -q 'socket mark' <<<"$logs" && echo "egress: socket-mark fallback (no cgroup v2 of its own)" || true
# As PID 1, egress must end on SIGTERM itself (a pod would wait out its grace period).
start=$(date +%s)
docker stop -t 20 "egress-$tag" >/dev/null
took=$(( $(date +%s) - start )); code=$(docker inspect -f '{{.State.ExitCode}}' "egress-$tag")
[ "$took" -lt 5 ] && [ "$code" = 0 ] || { echo "egress: docker stop took ${took}s, exit code $code"; docker logs "egress-$tag"; exit 1; }
echo "egress: stops on SIGTERM in ${took}s (exit 0)"
echo "image smoke ok"
