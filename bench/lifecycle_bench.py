"""Create-to-ready through the official SDK: SandboxSync.create returns once
the server answered 202, both endpoints were resolved and execd answered
/ping. Sequential (p50/p99 over N) and concurrent (C at once).

Usage: lifecycle_bench.py <label> <host:port> <api key> <image> [N] [C]
Prints one markdown table row per scenario.
"""
import statistics
import sys
import threading
import time
from datetime import timedelta

from opensandbox.config.connection_sync import ConnectionConfigSync
from opensandbox.sync.sandbox import SandboxSync

label, domain, key, image = sys.argv[1:5]
n = int(sys.argv[5]) if len(sys.argv) > 5 else 20
c = int(sys.argv[6]) if len(sys.argv) > 6 else 10
conn = ConnectionConfigSync(domain=domain, api_key=key, request_timeout=timedelta(seconds=120))


def create():
    t = time.perf_counter()
    sb = SandboxSync.create(image, connection_config=conn, ready_timeout=timedelta(seconds=120),
                            health_check_polling_interval=timedelta(milliseconds=20))
    return time.perf_counter() - t, sb


def pct(v, p):
    s = sorted(v)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


for _ in range(2):  # warm-up: image caches, first bundle read
    _, sb = create()
    sb.kill()
seq = []
for _ in range(n):
    d, sb = create()
    seq.append(d)
    sb.kill()
results = [None] * c
def one(i):
    results[i] = create()
threads = [threading.Thread(target=one, args=(i,)) for i in range(c)]
t0 = time.perf_counter()
for t in threads:
    t.start()
for t in threads:
    t.join()
wall = time.perf_counter() - t0
conc = [r[0] for r in results]
for _, sb in results:
    sb.kill()
print(f"| {label} | sequential x{n} | {pct(seq, 50)*1000:.0f} ms | {pct(seq, 99)*1000:.0f} ms | mean {statistics.mean(seq)*1000:.0f} ms |")
print(f"| {label} | {c} concurrent | {pct(conc, 50)*1000:.0f} ms | {max(conc)*1000:.0f} ms (max) | wall {wall*1000:.0f} ms; sum/wall {sum(conc)/wall:.1f}x |")
