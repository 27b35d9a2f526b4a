"""The official OpenSandbox Python SDK (opensandbox 1.1.1) with
use_server_proxy=True: every execd request goes through the lifecycle
server's /v1/sandboxes/{id}/proxy/{port} route instead of the sandbox's
published port.

Usage: python sdk_proxy_e2e.py <server host:port> <sandbox image>
Run by lifecycle/tests/sdk_proxy.rs, which starts the server. Exits non-zero
with the failing check's message on any failure; kills the sandbox it made.
"""

import sys
from datetime import timedelta

from opensandbox.config.connection_sync import ConnectionConfigSync
from opensandbox.models.filesystem import WriteEntry
from opensandbox.sync.sandbox import SandboxSync

domain, image = sys.argv[1], sys.argv[2]
conn = ConnectionConfigSync(domain=domain, api_key="e2e-key", use_server_proxy=True,
                            request_timeout=timedelta(seconds=120))
sb = None


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}", flush=True)


try:
    sb = SandboxSync.create(image, connection_config=conn, ready_timeout=timedelta(seconds=60))
    ep = sb.get_endpoint(44772)
    check(ep.endpoint == f"{domain}/v1/sandboxes/{sb.id}/proxy/44772",
          f"execd endpoint is the server proxy ({ep.endpoint})")
    ex = sb.commands.run("echo via-server")
    check(ex.exit_code == 0, f"exit code 0 ({ex.exit_code})")
    check([m.text for m in ex.logs.stdout] == ["via-server"], "stdout through the server proxy")
    sb.files.write_files([WriteEntry(path="/tmp/sp/a.txt", data="alpha\nbeta\n"),
                          WriteEntry(path="/tmp/sp/b.bin", data=bytes(range(256)) * 64)])
    check(sb.files.read_file("/tmp/sp/a.txt") == "alpha\nbeta\n", "text file round trip")
    check(sb.files.read_bytes("/tmp/sp/b.bin") == bytes(range(256)) * 64, "binary file round trip")
    sb.kill()
    sb = None
    print("SDK PROXY E2E PASSED", flush=True)
finally:
    if sb is not None:
        try:
            sb.kill()
        except Exception as e:  # noqa: BLE001
            print(f"cleanup: {e}", file=sys.stderr)
