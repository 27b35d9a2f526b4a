"""End-to-end check with the official OpenSandbox Python SDK (opensandbox 1.1.1)
against our lifecycle server, our execd and our egress, on the machine's Docker.

Usage: python sdk_e2e.py <server host:port> <sandbox image> [--egress]
(API key in E2E_API_KEY, default "e2e-key"). Run by lifecycle/tests/sdk.rs,
which starts our server; pointed at upstream's opensandbox-server configured
with our images it checks them as drop-ins. Exits non-zero with
the failing check's message on any failure; kills every sandbox it made.
"""

import os
import sys
import time
from datetime import timedelta

from opensandbox import Sandbox, SandboxManager  # noqa: F401  (async names exist too)
from opensandbox.config.connection_sync import ConnectionConfigSync
from opensandbox.exceptions import SandboxApiException
from opensandbox.models.execd import RunCommandOpts
from opensandbox.models.execd_sync import ExecutionHandlersSync
from opensandbox.models.filesystem import SearchEntry, WriteEntry
from opensandbox.models.sandboxes import NetworkPolicy, NetworkRule, SandboxFilter
from opensandbox.sync.manager import SandboxManagerSync
from opensandbox.sync.sandbox import SandboxSync

domain, image = sys.argv[1], sys.argv[2]
with_egress = "--egress" in sys.argv
conn = ConnectionConfigSync(domain=domain, api_key=os.environ.get("E2E_API_KEY", "e2e-key"),
                            request_timeout=timedelta(seconds=120))
made = []


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}", flush=True)


def create(**kw):
    sb = SandboxSync.create(image, connection_config=conn, ready_timeout=timedelta(seconds=60), **kw)
    made.append(sb)
    return sb


try:
    # Create, then commands with streaming handlers and exit codes.
    sb = create(metadata={"suite": "e2e", "kind": "main"}, env={"GREETING": "hello"},
                resource={"cpu": "1", "memory": "512Mi"})
    info = sb.get_info()
    check(info.status.state == "Running", f"created sandbox is Running ({info.status.state})")
    check(info.metadata.get("suite") == "e2e", "metadata round trip")
    seen = []
    ex = sb.commands.run("echo $GREETING; echo second",
                         handlers=ExecutionHandlersSync(on_stdout=lambda m: seen.append(m.text)))
    check(ex.exit_code == 0, f"exit code 0 ({ex.exit_code})")
    check(seen == ["hello", "second"], f"stdout streamed to the handler in order ({seen})")
    ex = sb.commands.run("echo oops >&2; exit 7")
    check(ex.exit_code == 7, f"exit code 7 ({ex.exit_code})")
    check([m.text for m in ex.logs.stderr] == ["oops"], "stderr collected")
    bg = sb.commands.run("for i in 1 2 3; do echo line$i; done; sleep 0.2",
                         opts=RunCommandOpts(background=True))
    time.sleep(1.0)
    logs = sb.commands.get_background_command_logs(bg.id)
    check("line3" in logs.content, f"background command logs ({logs.content!r})")
    sid = sb.commands.create_session()
    sb.commands.run_in_session(sid, "cd /tmp && X=42")
    ex = sb.commands.run_in_session(sid, "echo $X $(pwd)")
    check([m.text for m in ex.logs.stdout] == ["42 /tmp"], "bash session keeps state")

    # Files round trip.
    sb.files.write_files([WriteEntry(path="/tmp/e2e/a.txt", data="alpha\nbeta\n", mode=644),
                          WriteEntry(path="/tmp/e2e/b.bin", data=bytes(range(256)))])
    check(sb.files.read_file("/tmp/e2e/a.txt") == "alpha\nbeta\n", "text file round trip")
    check(sb.files.read_bytes("/tmp/e2e/b.bin") == bytes(range(256)), "binary file round trip")
    info_map = sb.files.get_file_info(["/tmp/e2e/a.txt"])
    check(info_map["/tmp/e2e/a.txt"].mode == 644, "mode 644 as octal digits")
    found = sb.files.search(SearchEntry(path="/tmp/e2e", pattern="*.txt"))
    check([f.path for f in found] == ["/tmp/e2e/a.txt"], "search by pattern")
    sb.files.delete_files(["/tmp/e2e/b.bin"])
    check(sb.files.search(SearchEntry(path="/tmp/e2e", pattern="*.bin")) == [], "delete")

    # Renew, pause/resume, list with filters.
    before = sb.get_info().expires_at
    sb.renew(timedelta(minutes=30))
    after = sb.get_info().expires_at
    check(after > before, f"renew moves the expiry ({before} -> {after})")
    mgr = SandboxManagerSync.create(connection_config=conn)
    other = create(metadata={"suite": "e2e", "kind": "other"})
    page = mgr.list_sandbox_infos(SandboxFilter(metadata={"suite": "e2e", "kind": "other"}))
    check([s.id for s in page.sandbox_infos] == [other.id], "list filtered by metadata")
    sb.pause()
    check(sb.get_info().status.state == "Paused", "pause")
    paused = mgr.list_sandbox_infos(SandboxFilter(states=["Paused"], metadata={"suite": "e2e"}))
    check([s.id for s in paused.sandbox_infos] == [sb.id], "list filtered by state")
    sb = SandboxSync.resume(sb.id, connection_config=conn)
    check(sb.get_info().status.state == "Running", "resume")
    check(sb.commands.run("echo back").exit_code == 0, "commands work after resume")

    # Errors arrive as SDK exceptions with the server's code.
    try:
        mgr.get_sandbox_info("00000000-0000-4000-8000-000000000000")
        check(False, "unknown sandbox raises")
    except SandboxApiException as e:
        check(e.status_code == 404, f"unknown sandbox is a 404 ({e.status_code})")

    if with_egress:
        eg = create(metadata={"suite": "e2e", "kind": "egress"},
                    network_policy=NetworkPolicy(default_action="deny",
                                                 egress=[NetworkRule(action="allow", target="pkg.example.test")]))
        policy = eg.get_egress_policy()
        check(policy.default_action == "deny", "egress policy readable through the SDK")
        eg.patch_egress_rules([NetworkRule(action="allow", target="*.extra.test")])
        targets = [r.target for r in eg.get_egress_policy().egress]
        check("*.extra.test" in targets, f"egress rules patched ({targets})")
        ex = eg.commands.run("getent hosts denied.example.com && echo RESOLVED || echo REFUSED")
        check([m.text for m in ex.logs.stdout] == ["REFUSED"], "denied name does not resolve")

    # Kill: gone afterwards.
    for s in list(made):
        s.kill()
        made.remove(s)
    try:
        mgr.get_sandbox_info(other.id)
        check(False, "killed sandbox is gone")
    except SandboxApiException as e:
        check(e.status_code == 404, "killed sandbox is gone")
    print("SDK E2E PASSED", flush=True)
finally:
    for s in made:
        try:
            s.kill()
        except Exception as e:  # noqa: BLE001
            print(f"cleanup: {e}", file=sys.stderr)
