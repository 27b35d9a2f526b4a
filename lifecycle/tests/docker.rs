//! The server against the machine's Docker engine, through HTTP as a client
//! sees it: create, execd through its endpoint, inspect of what Docker was
//! told, pause/resume, renew, expiry, restart, list filters, bad input.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::{
    can_run, create_body, egress_policy, request, run_command, Server, BASE_IMAGE, EGRESS_IMAGE,
    EXECD_IMAGE,
};
use serde_json::json;

const IMAGES: &[&str] = &[EXECD_IMAGE, BASE_IMAGE];

#[tokio::test(flavor = "multi_thread")]
async fn create_use_inspect_and_delete() {
    if !can_run(IMAGES) {
        return;
    }
    let s = Server::start("create");
    let r = s
        .call(
            "POST",
            "/v1/sandboxes",
            Some(create_body(json!({
                "env": {"FOO": "bar", "DROPPED": null},
                "metadata": {"team": "infra"},
                "resourceLimits": {"cpu": "500m", "memory": "256Mi"},
            }))),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let created = r.json();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["status"]["state"], "Running");
    assert_eq!(created["metadata"], json!({"team": "infra"}));
    assert_eq!(created["entrypoint"], json!(["tail", "-f", "/dev/null"]));
    assert!(
        created.get("platform").is_none(),
        "null fields are omitted: {created}"
    );
    assert!(created["expiresAt"].as_str().unwrap().ends_with('Z'));

    let got = s.sandbox(&id).await;
    assert_eq!(got["status"]["state"], "Running");
    assert_eq!(got["image"]["uri"], BASE_IMAGE);
    assert_eq!(got["metadata"], json!({"team": "infra"}));
    assert_eq!(got["expiresAt"], created["expiresAt"]);

    // What Docker was told: limits, dropped capabilities, no-new-privileges.
    let c = s.inspect(&id);
    let hc = &c["HostConfig"];
    assert_eq!(hc["NanoCpus"], 500_000_000);
    assert_eq!(hc["Memory"], 256 << 20);
    assert_eq!(hc["PidsLimit"], 4096);
    let caps: Vec<&str> = hc["CapDrop"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for cap in ["NET_RAW", "NET_ADMIN", "SYS_ADMIN"] {
        assert!(caps.contains(&cap), "{cap} not dropped: {caps:?}");
    }
    assert!(hc["SecurityOpt"].to_string().contains("no-new-privileges"));
    assert_eq!(
        c["Config"]["Entrypoint"],
        json!(["/opt/opensandbox/bootstrap.sh"])
    );

    // execd answers through its endpoint; the environment arrived.
    let ep = s.endpoint(&id, 44772).await;
    assert!(
        ep.starts_with("127.0.0.1:") && ep.ends_with("/proxy/44772"),
        "{ep}"
    );
    let (out, end) = run_command(
        &ep,
        "echo $FOO ${DROPPED:-unset} $OPENSANDBOX_ID; grep CapEff /proc/self/status",
    )
    .await;
    assert_eq!(end, "complete");
    let mut lines = out.lines();
    assert_eq!(lines.next().unwrap(), format!("bar unset {id}"));
    // NET_RAW (bit 13) and NET_ADMIN (bit 12) are not effective.
    let eff =
        u64::from_str_radix(lines.next().unwrap().split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(eff & (1 << 12 | 1 << 13), 0, "CapEff {eff:x}");
    // 8080 is published directly; 18080 answers 200 without a sidecar.
    let http = s.endpoint(&id, 8080).await;
    assert!(!http.contains("/proxy/"), "{http}");
    let e = s
        .call("GET", &format!("/v1/sandboxes/{id}/endpoints/18080"), None)
        .await;
    assert_eq!(e.status, 200);
    assert!(e.json().get("headers").is_none());

    // X-Request-ID is echoed.
    let r = request(
        &format!("127.0.0.1:{}", s.port),
        "GET",
        &format!("/v1/sandboxes/{id}"),
        &[("X-Request-ID".into(), "req-123".into())],
        None,
    )
    .await;
    assert_eq!(r.header("X-Request-ID"), Some("req-123"));

    s.delete_leaving_nothing(&id).await;
    s.call("GET", &format!("/v1/sandboxes/{id}"), None)
        .await
        .assert_error(404, "DOCKER::SANDBOX_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_clear_errors_and_leaves_nothing() {
    if !can_run(IMAGES) {
        return;
    }
    let s = Server::start("bad");
    let cases = [
        (
            json!({"image": {"uri": "127.0.0.1:9/missing:latest"}}),
            500,
            "DOCKER::SANDBOX_IMAGE_PULL_FAILED",
        ),
        (json!({"timeout": 10}), 400, "SANDBOX::INVALID_PARAMETER"),
        (
            json!({"metadata": {"opensandbox.io/id": "x"}}),
            400,
            "INVALID_METADATA_LABEL",
        ),
        (
            json!({"metadata": {"bad key": "x"}}),
            400,
            "SANDBOX::INVALID_METADATA_LABEL",
        ),
        (
            json!({"resourceLimits": {"memory": "lots"}}),
            400,
            "SANDBOX::INVALID_PARAMETER",
        ),
        (
            json!({"resourceLimits": {"cpu": "0"}}),
            400,
            "SANDBOX::INVALID_PARAMETER",
        ),
        (json!({"entrypoint": []}), 400, "DOCKER::INVALID_ENTRYPOINT"),
        (
            json!({"secureAccess": true}),
            400,
            "SANDBOX::INVALID_PARAMETER",
        ),
        (
            json!({"platform": {"os": "windows", "arch": "amd64"}}),
            400,
            "SANDBOX::INVALID_PARAMETER",
        ),
        (
            json!({"extensions": {"poolRef": "p"}}),
            400,
            "SANDBOX::UNSUPPORTED_POOL_REF",
        ),
        // With the image of create_body: two sources.
        (
            json!({"snapshotId": "nope"}),
            400,
            "SANDBOX::INVALID_PARAMETER",
        ),
    ];
    for (extra, status, code) in cases {
        let r = s
            .call("POST", "/v1/sandboxes", Some(create_body(extra.clone())))
            .await;
        r.assert_error(status, code);
    }
    // A user command that ends at once: either execd never answered (503,
    // nothing left) or it did and the sandbox then shows the exit code.
    let r = s
        .call(
            "POST",
            "/v1/sandboxes",
            Some(create_body(json!({"entrypoint": ["sh", "-c", "exit 3"]}))),
        )
        .await;
    if r.status == 202 {
        let id = r.json()["id"].as_str().unwrap().to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = s.sandbox(&id).await;
            if got["status"]["state"] == "Failed" {
                assert_eq!(got["status"]["reason"], "CONTAINER_EXITED_ERROR");
                assert_eq!(
                    got["status"]["message"],
                    "Sandbox container exited with code 3."
                );
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{got}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            s.call("DELETE", &format!("/v1/sandboxes/{id}"), None)
                .await
                .status,
            204
        );
    } else {
        r.assert_error(503, "DOCKER::SANDBOX_EXECD_START_FAILED");
    }
    let raw = request(
        &format!("127.0.0.1:{}", s.port),
        "POST",
        "/v1/sandboxes",
        &[],
        Some(b"{not json".to_vec()),
    )
    .await;
    raw.assert_error(400, "SANDBOX::INVALID_PARAMETER");
    assert!(
        s.containers().is_empty(),
        "left behind: {:?}",
        s.containers()
    );

    let id = "00000000-0000-4000-8000-000000000000";
    s.call("GET", &format!("/v1/sandboxes/{id}"), None)
        .await
        .assert_error(404, "DOCKER::SANDBOX_NOT_FOUND");
    s.call("DELETE", &format!("/v1/sandboxes/{id}"), None)
        .await
        .assert_error(404, "DOCKER::SANDBOX_NOT_FOUND");
    s.call("POST", &format!("/v1/sandboxes/{id}/pause"), None)
        .await
        .assert_error(404, "DOCKER::SANDBOX_NOT_FOUND");
    s.call("GET", "/v1/sandboxes?page=0", None)
        .await
        .assert_error(400, "SANDBOX::INVALID_PARAMETER");
    s.call("GET", "/v1/sandboxes?pageSize=201", None)
        .await
        .assert_error(400, "SANDBOX::INVALID_PARAMETER");
    s.call("GET", "/v1/sandboxes?metadata=a%3D1%26broken", None)
        .await
        .assert_error(400, "INVALID_METADATA_FORMAT");
    let h = s.call("GET", "/health", None).await;
    assert_eq!((h.status, h.json()), (200, json!({"status": "healthy"})));
}

#[tokio::test(flavor = "multi_thread")]
async fn api_key_is_required_when_configured() {
    if !can_run(IMAGES) {
        return;
    }
    let s = Server::start_with("auth", Some("s3cret"), "");
    let base = format!("127.0.0.1:{}", s.port);
    request(&base, "GET", "/v1/sandboxes", &[], None)
        .await
        .assert_error(401, "MISSING_API_KEY");
    request(
        &base,
        "GET",
        "/v1/sandboxes",
        &[("OPEN-SANDBOX-API-KEY".into(), "wrong".into())],
        None,
    )
    .await
    .assert_error(401, "INVALID_API_KEY");
    let ok = s.call("GET", "/v1/sandboxes", None).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["items"], json!([]));
    assert_eq!(
        request(&base, "GET", "/health", &[], None).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_resume_list_renew_restart_and_expiry() {
    if !can_run(IMAGES) {
        return;
    }
    let mut s = Server::start("life");
    let mut ids = Vec::new();
    for (i, team) in ["infra", "infra", "web"].iter().enumerate() {
        let r = s
            .call(
                "POST",
                "/v1/sandboxes",
                Some(create_body(
                    json!({"metadata": {"team": team, "n": i.to_string()}}),
                )),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    // Pause and resume, with the wrong-state answers.
    let id = ids[0].clone();
    assert_eq!(s.act(&id, "resume").await, 409);
    assert_eq!(s.act(&id, "pause").await, 202);
    let got = s.sandbox(&id).await;
    assert_eq!(got["status"]["state"], "Paused");
    s.call("POST", &format!("/v1/sandboxes/{id}/pause"), None)
        .await
        .assert_error(409, "DOCKER::SANDBOX_NOT_RUNNING");

    // List: filters and pagination, newest first.
    let l = s
        .call("GET", "/v1/sandboxes?state=paused", None)
        .await
        .json();
    assert_eq!(l["items"].as_array().unwrap().len(), 1);
    assert_eq!(l["items"][0]["id"], id.as_str());
    let l = s
        .call(
            "GET",
            "/v1/sandboxes?metadata=team%3Dinfra&pageSize=1",
            None,
        )
        .await
        .json();
    assert_eq!(
        l["pagination"],
        json!({"page": 1, "pageSize": 1, "totalItems": 2, "totalPages": 2, "hasNextPage": true})
    );
    assert_eq!(l["items"][0]["id"], ids[1].as_str());
    let l = s
        .call(
            "GET",
            "/v1/sandboxes?metadata=team%3Dinfra&pageSize=1&page=3",
            None,
        )
        .await
        .json();
    assert_eq!(l["items"], json!([]));
    let l = s
        .call("GET", "/v1/sandboxes?state=Running&state=Paused", None)
        .await
        .json();
    assert_eq!(l["pagination"]["totalItems"], 3);

    assert_eq!(s.act(&id, "resume").await, 202);
    let got = s.sandbox(&id).await;
    assert_eq!(got["status"]["state"], "Running");

    // Metadata patch: merge, null deletes, reserved keys refused.
    let p = s
        .call(
            "PATCH",
            &format!("/v1/sandboxes/{id}/metadata"),
            Some(json!({"team": null, "env": "stage"})),
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.text());
    assert_eq!(p.json()["metadata"], json!({"env": "stage", "n": "0"}));
    s.call(
        "PATCH",
        &format!("/v1/sandboxes/{id}/metadata"),
        Some(json!({"opensandbox.io/x": "1"})),
    )
    .await
    .assert_error(400, "INVALID_METADATA_LABEL");

    // Renew, then restart the server: the renewal and metadata survive.
    let later = lifecycle::model::format_time(SystemTime::now() + Duration::from_secs(3600));
    let r = s
        .call(
            "POST",
            &format!("/v1/sandboxes/{id}/renew-expiration"),
            Some(json!({"expiresAt": later})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let renewed = r.json()["expiresAt"].as_str().unwrap().to_string();
    s.call(
        "POST",
        &format!("/v1/sandboxes/{id}/renew-expiration"),
        Some(json!({"expiresAt": "2000-01-01T00:00:00Z"})),
    )
    .await
    .assert_error(400, "DOCKER::INVALID_EXPIRATION");
    s.restart();
    let got = s.sandbox(&id).await;
    assert_eq!(got["expiresAt"].as_str().unwrap(), renewed);
    assert_eq!(got["metadata"], json!({"env": "stage", "n": "0"}));

    // Expiry is enforced by the running server...
    let r = s.renew_in(&ids[1], 2).await;
    assert_eq!(r.status, 200);
    // ...and by a server that was down when the sandbox expired.
    let r = s.renew_in(&ids[2], 2).await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let gone1 = s
            .call("GET", &format!("/v1/sandboxes/{}", ids[1]), None)
            .await
            .status
            == 404;
        let gone2 = s
            .call("GET", &format!("/v1/sandboxes/{}", ids[2]), None)
            .await
            .status
            == 404;
        if gone1 && gone2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expired sandboxes still there"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(s.containers().len(), 1, "{:?}", s.containers());
    // Expiry while running (timer), on the survivor.
    let soon = lifecycle::model::format_time(SystemTime::now() + Duration::from_secs(1));
    s.call(
        "POST",
        &format!("/v1/sandboxes/{id}/renew-expiration"),
        Some(json!({"expiresAt": soon})),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s
        .call("GET", &format!("/v1/sandboxes/{id}"), None)
        .await
        .status
        != 404
    {
        assert!(
            std::time::Instant::now() < deadline,
            "timer did not expire the sandbox"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(s.containers().is_empty(), "{:?}", s.containers());
}

#[tokio::test(flavor = "multi_thread")]
async fn network_policy_runs_an_egress_sidecar() {
    if !can_run(&[EXECD_IMAGE, BASE_IMAGE, EGRESS_IMAGE]) {
        return;
    }
    let s = Server::start("egress");
    let id = s.create_sandbox(create_body(json!({
                "networkPolicy": {"defaultAction": "deny", "egress": [{"action": "allow", "target": "*.allowed.test"}]}
            }))).await;
    assert_eq!(
        s.containers().len(),
        2,
        "sandbox and sidecar: {:?}",
        s.containers()
    );
    let c = s.inspect(&id);
    assert!(c["HostConfig"]["NetworkMode"]
        .as_str()
        .unwrap()
        .starts_with("container:"));

    // The egress API through the sandbox's endpoint, with the token header.
    let e = s
        .call("GET", &format!("/v1/sandboxes/{id}/endpoints/18080"), None)
        .await
        .json();
    let pol = egress_policy(&e).await;
    assert_eq!(pol["policy"]["defaultAction"], "deny", "{pol}");
    assert_eq!(pol["enforcementMode"], "dns+nft", "{pol}");
    assert_eq!(
        pol["policy"]["egress"][0]["target"], "*.allowed.test",
        "{pol}"
    );

    // Inside: a denied name does not resolve, and there is no NET_ADMIN.
    let ep = s.endpoint(&id, 44772).await;
    let (out, _) = run_command(
        &ep,
        "getent hosts blocked.example.com && echo RESOLVED || echo REFUSED",
    )
    .await;
    assert_eq!(out.trim(), "REFUSED");

    s.delete_leaving_nothing(&id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_engine_that_is_down_gets_503_and_the_server_recovers() {
    if !can_run(IMAGES) {
        return;
    }
    let mut s = Server::start("down");
    let id = s.create_sandbox(create_body(json!({}))).await;
    // Restart against a Docker socket that does not exist.
    s.restart_with_env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    assert_eq!(s.call("GET", "/health", None).await.status, 200);
    s.call("POST", "/v1/sandboxes", Some(create_body(json!({}))))
        .await
        .assert_error(503, "DOCKER::INITIALIZATION_ERROR");
    s.call("GET", "/v1/sandboxes", None)
        .await
        .assert_error(503, "DOCKER::INITIALIZATION_ERROR");
    s.call("GET", &format!("/v1/sandboxes/{id}"), None)
        .await
        .assert_error(503, "DOCKER::INITIALIZATION_ERROR");
    // Back on the real engine: the sandbox is found again.
    s.env.clear();
    s.restart();
    assert_eq!(s.sandbox(&id).await["status"]["state"], "Running");
}

/// A TCP server in its own container on the default bridge (a host the test
/// creates), answering `hello <name>` to every connection; returns its IP.
fn world_server(s: &Server, name: &str) -> String {
    let script = format!(
        "use IO::Socket::INET; my $l = IO::Socket::INET->new(LocalPort => 7000, Listen => 16, ReuseAddr => 1) or die; \
         while (my $c = $l->accept) {{ print $c \"hello {name}\\n\"; close $c; }}"
    );
    let out = std::process::Command::new("docker")
        .args(["run", "-d", "--label"])
        .arg(format!("{}egress-sidecar-for=world-{name}", s.prefix))
        .args([BASE_IMAGE, "perl", "-e", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let ip = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&ip.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn egress_policy_really_blocks_and_allows_and_patches_apply() {
    if !can_run(&[EXECD_IMAGE, BASE_IMAGE, EGRESS_IMAGE]) {
        return;
    }
    let s = Server::start("policy");
    let a = world_server(&s, "a");
    let b = world_server(&s, "b");
    let id = s
        .create_sandbox(create_body(json!({
            "networkPolicy": {"defaultAction": "deny", "egress": [{"action": "allow", "target": a}]}
        })))
        .await;
    let ep = s.endpoint(&id, 44772).await;
    let dial = |ip: &str| {
        format!("timeout 3 bash -c 'exec 3<>/dev/tcp/{ip}/7000 && head -1 <&3' || echo BLOCKED")
    };
    // The server processes may need a moment to listen.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (out, _) = run_command(&ep, &dial(&a)).await;
        if out.trim() == "hello a" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "allowed server unreachable: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (out, _) = run_command(&ep, &dial(&b)).await;
    assert_eq!(out.trim(), "BLOCKED", "denied address reachable");

    // PATCH through the egress API takes effect for new connections.
    let e = s
        .call("GET", &format!("/v1/sandboxes/{id}/endpoints/18080"), None)
        .await
        .json();
    let token = e["headers"]["OPENSANDBOX-EGRESS-AUTH"]
        .as_str()
        .unwrap()
        .to_string();
    let (authority, prefix) = e["endpoint"].as_str().unwrap().split_once('/').unwrap();
    let p = request(
        authority,
        "PATCH",
        &format!("/{prefix}/policy"),
        &[("OPENSANDBOX-EGRESS-AUTH".into(), token)],
        Some(
            json!([{"action": "allow", "target": b}])
                .to_string()
                .into_bytes(),
        ),
    )
    .await;
    assert_eq!(p.status, 200, "{}", p.text());
    let (out, _) = run_command(&ep, &dial(&b)).await;
    assert_eq!(out.trim(), "hello b", "patched allow rule not applied");

    // Diagnostics: the container's log and the recorded transitions.
    let logs = s
        .call(
            "GET",
            &format!("/v1/sandboxes/{id}/diagnostics/logs?scope=container"),
            None,
        )
        .await;
    assert_eq!(logs.status, 200, "{}", logs.text());
    let logs = logs.json();
    assert_eq!(logs["kind"], "logs");
    assert!(
        logs["content"]
            .as_str()
            .unwrap()
            .contains("execd listening"),
        "{logs}"
    );
    let events = s
        .call(
            "GET",
            &format!("/v1/sandboxes/{id}/diagnostics/events?scope=runtime"),
            None,
        )
        .await
        .json();
    assert!(
        events["content"]
            .as_str()
            .unwrap()
            .contains("Running CONTAINER_RUNNING"),
        "{events}"
    );
    s.call(
        "GET",
        &format!("/v1/sandboxes/{id}/diagnostics/logs?scope=nope"),
        None,
    )
    .await
    .assert_error(400, "DIAGNOSTICS_SCOPE_UNSUPPORTED");
}
