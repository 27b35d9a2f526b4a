//! The server proxy (`/v1/sandboxes/{id}/proxy/{port}/…`) against real
//! sandboxes: no API key needed (and none passed on), execd reached through
//! it with events streamed, a service on 8080 and on another port reached,
//! upgrades tunnelled, errors (unknown sandbox, nothing listening, `..`,
//! paused), and `use_server_proxy=true` endpoints.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    can_run, create_body, egress_policy, request, Resp, Server, BASE_IMAGE, EGRESS_IMAGE,
    EXECD_IMAGE,
};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "proxy-key";

/// A tiny HTTP server for the sandbox (perl is in the base image, python is
/// not): answers any request with its own request line and headers, and an
/// `Upgrade: websocket` with a 101, then echoes raw bytes.
const PERL_SERVER: &str = r#"use strict; use IO::Socket::INET;
$SIG{CHLD} = "IGNORE";
my $s = IO::Socket::INET->new(LocalAddr => "0.0.0.0", LocalPort => $ARGV[0], Listen => 16, ReuseAddr => 1) or die "listen: $!";
while (1) {
  my $c = $s->accept or next;
  if (fork) { close $c; next }
  close $s;
  my $req = "";
  while (defined(my $l = <$c>)) { $req .= $l; last if $l eq "\r\n" }
  $c->autoflush(1);
  if ($req =~ /^upgrade:\s*websocket/mi) {
    print $c "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    while (sysread($c, my $buf, 4096)) { syswrite($c, $buf) }
  } else {
    my $n = length $req;
    print $c "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: $n\r\nConnection: close\r\n\r\n$req";
  }
  exit 0;
}
"#;

/// A request to the server without the API key.
async fn anon(s: &Server, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    request(
        &format!("127.0.0.1:{}", s.port),
        method,
        path,
        &headers,
        None,
    )
    .await
}

/// Runs `cmd` through the server proxy to execd and collects the events as
/// they arrive: each with the time since the request was sent.
async fn run_streamed(s: &Server, id: &str, cmd: &str) -> Vec<(Duration, Value)> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("/v1/sandboxes/{id}/proxy/44772/command"))
        .header("Host", format!("127.0.0.1:{}", s.port))
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(
            json!({ "command": cmd }).to_string(),
        )))
        .unwrap();
    let start = Instant::now();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut buf = String::new();
    let mut events = Vec::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(60), body.frame())
        .await
        .expect("an event within 60 s")
    {
        if let Ok(data) = frame.unwrap().into_data() {
            buf.push_str(std::str::from_utf8(&data).unwrap());
            while let Some(i) = buf.find("\n\n") {
                let ev: String = buf.drain(..i + 2).collect();
                if !ev.trim().is_empty() {
                    events.push((start.elapsed(), serde_json::from_str(ev.trim()).unwrap()));
                }
            }
        }
    }
    events
}

fn stdout(events: &[(Duration, Value)]) -> Vec<String> {
    events
        .iter()
        .filter(|(_, e)| e["type"] == "stdout")
        .map(|(_, e)| e["text"].as_str().unwrap().to_string())
        .collect()
}

/// Upgrades `path` on the server to a raw tunnel, sends `msg` through it
/// and returns what comes back.
async fn tunnel(s: &Server, path: &str, msg: &[u8]) -> Vec<u8> {
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .unwrap();
    c.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut byte).await.unwrap(), 1, "closed in the head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    c.write_all(msg).await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut back))
        .await
        .expect("tunnel closed within 20 s")
        .unwrap();
    back
}

#[tokio::test]
async fn server_proxy_reaches_sandbox_services() {
    if !can_run(&[EXECD_IMAGE, BASE_IMAGE]) {
        return;
    }
    let s = Server::start_with("proxy", Some(KEY), "");
    let id = s.create_sandbox(create_body(json!({}))).await;

    // execd through the proxy, without the API key, at both mounts; a wrong
    // key is not checked either (and not passed on).
    for path in [
        format!("/v1/sandboxes/{id}/proxy/44772/ping"),
        format!("/sandboxes/{id}/proxy/44772/ping"),
    ] {
        let r = anon(&s, "GET", &path, &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(r.header("X-Request-ID").is_some());
    }
    let r = anon(
        &s,
        "GET",
        &format!("/v1/sandboxes/{id}/proxy/44772/ping"),
        &[("OPEN-SANDBOX-API-KEY", "wrong")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A command's events stream through: the first line arrives long
    // before the command ends.
    let events = run_streamed(&s, &id, "echo hi; sleep 2; echo bye").await;
    assert_eq!(stdout(&events), ["hi", "bye"], "{events:?}");
    let first = events
        .iter()
        .find(|(_, e)| e["type"] == "stdout")
        .unwrap()
        .0;
    let last = events.last().unwrap().0;
    assert!(
        last >= Duration::from_secs(2) && first + Duration::from_millis(1500) < last,
        "events were not streamed: first at {first:?}, last at {last:?}"
    );

    // Nothing listens on 8080 yet: 502.
    let r = anon(&s, "GET", &format!("/v1/sandboxes/{id}/proxy/8080/"), &[]).await;
    let msg = r.assert_error(502, "GENERAL::UNKNOWN_ERROR");
    assert!(
        msg.starts_with("Could not connect to the backend sandbox"),
        "{msg}"
    );

    // Services on 8080 (its published port) and 9000 (through execd).
    let script = format!("cat > /tmp/srv.pl <<'EOF'\n{PERL_SERVER}EOF");
    let events = run_streamed(&s, &id, &script).await;
    assert!(
        events
            .iter()
            .any(|(_, e)| e["type"] == "execution_complete"),
        "{events:?}"
    );
    for port in [8080, 9000] {
        let r = s
            .call(
                "POST",
                &format!("/v1/sandboxes/{id}/proxy/44772/command"),
                Some(json!({"command": format!("perl /tmp/srv.pl {port}"), "background": true})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for port in [8080, 9000] {
        let path = format!("/v1/sandboxes/{id}/proxy/{port}/hello/a%20b?x=1&y=2");
        let deadline = Instant::now() + Duration::from_secs(20);
        let r = loop {
            let r = anon(
                &s,
                "GET",
                &path,
                &[
                    ("Authorization", "Bearer secret"),
                    ("Cookie", "session=secret"),
                    ("OPEN-SANDBOX-API-KEY", KEY),
                    ("X-Custom", "kept"),
                ],
            )
            .await;
            if r.status == 200 || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(r.status, 200, "port {port}: {}", r.text());
        let seen = r.text().to_ascii_lowercase();
        assert!(
            seen.starts_with("get /hello/a%20b?x=1&y=2 http/1.1\r\n"),
            "port {port}: {seen}"
        );
        assert!(seen.contains("\r\nx-custom: kept\r\n"), "{seen}");
        assert!(seen.contains("\r\nx-forwarded-proto: http\r\n"), "{seen}");
        assert!(seen.contains("\r\nx-forwarded-for: "), "{seen}");
        for gone in ["authorization", "cookie", "open-sandbox-api-key", "secret"] {
            assert!(
                !seen.contains(gone),
                "port {port}: {gone} passed on: {seen}"
            );
        }
        if port == 8080 {
            // Straight to the published port: the server's Host comes along.
            assert!(
                seen.contains(&format!("\r\nx-forwarded-host: 127.0.0.1:{}\r\n", s.port)),
                "{seen}"
            );
        }

        // Upgrades are tunnelled byte for byte.
        let msg = format!("raw bytes through {port} \u{1}\u{2}\u{3}").repeat(500);
        let back = tunnel(
            &s,
            &format!("/v1/sandboxes/{id}/proxy/{port}/ws"),
            msg.as_bytes(),
        )
        .await;
        assert_eq!(back, msg.as_bytes(), "port {port}");
    }

    // Errors: unknown sandbox, `..`, a bad port; no key needed for them.
    let r = anon(
        &s,
        "GET",
        "/v1/sandboxes/00000000-0000-4000-8000-000000000000/proxy/44772/ping",
        &[],
    )
    .await;
    r.assert_error(404, "DOCKER::SANDBOX_NOT_FOUND");
    for bad in [
        format!("/v1/sandboxes/{id}/proxy/44772/../../../sandboxes"),
        format!("/v1/sandboxes/{id}/proxy/44772/%2e%2e/ping"),
    ] {
        let r = anon(&s, "GET", &bad, &[]).await;
        r.assert_error(400, "SANDBOX::INVALID_PARAMETER");
    }
    let r = anon(&s, "GET", &format!("/v1/sandboxes/{id}/proxy/70000/"), &[]).await;
    r.assert_error(400, "DOCKER::INVALID_PORT");

    // Everything else still needs the key.
    for path in [
        "/v1/sandboxes".to_string(),
        format!("/v1/sandboxes/{id}"),
        format!("/v1/sandboxes/{id}/endpoints/44772?use_server_proxy=true"),
        format!("/v1/sandboxes/{id}/proxy"),
        format!("/v1/sandboxes/{id}/proxy/abc/ping"),
        format!("/v1/sandboxes/{id}/proxyx/44772/ping"),
    ] {
        let r = anon(&s, "GET", &path, &[]).await;
        r.assert_error(401, "MISSING_API_KEY");
    }

    // A paused sandbox answers 409 instead of holding the request.
    assert_eq!(s.act(&id, "pause").await, 202);
    let r = anon(
        &s,
        "GET",
        &format!("/v1/sandboxes/{id}/proxy/44772/ping"),
        &[],
    )
    .await;
    r.assert_error(409, "DOCKER::SANDBOX_NOT_RUNNING");
    assert_eq!(s.act(&id, "resume").await, 202);
    let r = anon(
        &s,
        "GET",
        &format!("/v1/sandboxes/{id}/proxy/44772/ping"),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    s.delete_leaving_nothing(&id).await;
}

#[tokio::test]
async fn server_proxy_endpoints() {
    if !can_run(&[EXECD_IMAGE, BASE_IMAGE, EGRESS_IMAGE]) {
        return;
    }
    let s = Server::start_with("proxy-ep", Some(KEY), "");
    let id = s.create_sandbox(create_body(json!({
                "networkPolicy": {"defaultAction": "deny", "egress": [{"action": "allow", "target": "*.allowed.test"}]}
            }))).await;
    let host = format!("127.0.0.1:{}", s.port);

    // The mount prefix the client used is kept.
    let e = s
        .call(
            "GET",
            &format!("/v1/sandboxes/{id}/endpoints/44772?use_server_proxy=true"),
            None,
        )
        .await;
    assert_eq!(e.status, 200, "{}", e.text());
    let e = e.json();
    assert_eq!(
        e,
        json!({ "endpoint": format!("{host}/v1/sandboxes/{id}/proxy/44772") })
    );
    let e = s
        .call(
            "GET",
            &format!("/sandboxes/{id}/endpoints/8080?use_server_proxy=true"),
            None,
        )
        .await
        .json();
    assert_eq!(e["endpoint"], format!("{host}/sandboxes/{id}/proxy/8080"));
    s.call(
        "GET",
        &format!("/v1/sandboxes/{id}/endpoints/44772?use_server_proxy=true&expires=99999999999"),
        None,
    )
    .await
    .assert_error(400, "SANDBOX::API_NOT_SUPPORTED");
    s.call(
        "GET",
        &format!("/v1/sandboxes/{id}/endpoints/0?use_server_proxy=true"),
        None,
    )
    .await
    .assert_error(400, "DOCKER::INVALID_PORT");
    s.call(
        "GET",
        "/v1/sandboxes/00000000-0000-4000-8000-000000000000/endpoints/44772?use_server_proxy=true",
        None,
    )
    .await
    .assert_error(404, "DOCKER::SANDBOX_NOT_FOUND");

    // The execd endpoint works as the SDK uses it (scheme + endpoint + path).
    let e = s
        .call(
            "GET",
            &format!("/v1/sandboxes/{id}/endpoints/44772?use_server_proxy=true"),
            None,
        )
        .await
        .json();
    let (authority, prefix) = e["endpoint"].as_str().unwrap().split_once('/').unwrap();
    let r = request(authority, "GET", &format!("/{prefix}/ping"), &[], None).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // 18080 keeps its token header, which reaches the sidecar through the
    // proxy and execd.
    let e = s
        .call(
            "GET",
            &format!("/v1/sandboxes/{id}/endpoints/18080?use_server_proxy=true"),
            None,
        )
        .await
        .json();
    assert_eq!(
        e["endpoint"],
        format!("{host}/v1/sandboxes/{id}/proxy/18080")
    );
    assert_eq!(egress_policy(&e).await["policy"]["defaultAction"], "deny");

    s.delete_leaving_nothing(&id).await;
}
