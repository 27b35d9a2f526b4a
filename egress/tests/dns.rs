//! The DNS proxy against the real binary and a fake upstream resolver.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

fn world() -> FakeResolver {
    let big: Vec<Ipv4Addr> = (1..=60).map(|i| Ipv4Addr::new(10, 9, 0, i)).collect();
    FakeResolver::start(&[
        ("allowed.test", vec![Ipv4Addr::new(10, 0, 0, 1)]),
        ("denied.test", vec![Ipv4Addr::new(10, 0, 0, 2)]),
        ("a.wild.test", vec![Ipv4Addr::new(10, 0, 0, 3)]),
        ("x.y.wild.test", vec![Ipv4Addr::new(10, 0, 0, 4)]),
        ("wild.test", vec![Ipv4Addr::new(10, 0, 0, 5)]),
        ("big.test", big),
    ])
}

fn start(world: &FakeResolver, rules: &str) -> Egress {
    let upstream = world.addr.to_string();
    egress(&[
        ("OPENSANDBOX_EGRESS_DNS_UPSTREAM", &upstream),
        ("OPENSANDBOX_EGRESS_RULES", rules),
    ])
}

#[test]
fn allowed_resolves_denied_gets_nxdomain() {
    let w = world();
    let e = start(
        &w,
        r#"{"defaultAction":"deny","egress":[{"action":"allow","target":"allowed.test"},{"action":"allow","target":"*.wild.test"}]}"#,
    );
    let m = e.lookup("allowed.test.");
    assert_eq!(rcode(&m), ResponseCode::NoError);
    assert_eq!(addrs(&m), [Ipv4Addr::new(10, 0, 0, 1)]);
    let m = e.lookup("Allowed.TEST.");
    assert_eq!(addrs(&m), [Ipv4Addr::new(10, 0, 0, 1)]);
    let before = w.udp_queries.load(Ordering::SeqCst);
    let m = e.lookup("denied.test.");
    assert_eq!(rcode(&m), ResponseCode::NXDomain);
    assert!(m.answers.is_empty());
    assert!(!m.metadata.recursion_available);
    assert_eq!(m.queries[0].name().to_ascii(), "denied.test.");
    assert_eq!(
        w.udp_queries.load(Ordering::SeqCst),
        before,
        "a denied name never reaches the upstream"
    );
    // Wildcards: any depth below, never the apex.
    assert_eq!(
        addrs(&e.lookup("a.wild.test.")),
        [Ipv4Addr::new(10, 0, 0, 3)]
    );
    assert_eq!(
        addrs(&e.lookup("x.y.wild.test.")),
        [Ipv4Addr::new(10, 0, 0, 4)]
    );
    assert_eq!(rcode(&e.lookup("wild.test.")), ResponseCode::NXDomain);
    // Every qtype is decided by name.
    assert_eq!(
        rcode(&dns_udp(e.dns, "denied.test.", RecordType::TXT)),
        ResponseCode::NXDomain
    );
    // The refusals are events.
    let (_, v) = e.json("GET", "/events", None);
    let domains: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["domain"].as_str().unwrap())
        .collect();
    assert_eq!(domains, ["denied.test", "wild.test", "denied.test"]);
    assert_eq!(v["events"][0]["rule"], "defaultAction");
    assert_eq!(v["events"][0]["kind"], "dns");
}

#[test]
fn default_allow_with_deny_rules() {
    let w = world();
    let e = start(
        &w,
        r#"{"defaultAction":"allow","egress":[{"action":"deny","target":"denied.test"}]}"#,
    );
    assert_eq!(
        addrs(&e.lookup("allowed.test.")),
        [Ipv4Addr::new(10, 0, 0, 1)]
    );
    assert_eq!(rcode(&e.lookup("denied.test.")), ResponseCode::NXDomain);
    // An allowed name the world does not know is the world's NXDOMAIN.
    assert_eq!(rcode(&e.lookup("unknown.test.")), ResponseCode::NXDomain);
    let (_, v) = e.json("GET", "/events", None);
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    assert_eq!(v["events"][0]["rule"], "denied.test");
}

#[test]
fn changes_apply_to_the_next_query() {
    let w = world();
    let e = start(&w, r#"{"defaultAction":"deny"}"#);
    assert_eq!(rcode(&e.lookup("allowed.test.")), ResponseCode::NXDomain);
    assert_eq!(
        e.json(
            "PATCH",
            "/policy",
            Some(r#"[{"action":"allow","target":"allowed.test"}]"#)
        )
        .0,
        200
    );
    assert_eq!(
        addrs(&e.lookup("allowed.test.")),
        [Ipv4Addr::new(10, 0, 0, 1)]
    );
    assert_eq!(
        e.json("DELETE", "/policy", Some(r#"["allowed.test"]"#)).0,
        200
    );
    assert_eq!(rcode(&e.lookup("allowed.test.")), ResponseCode::NXDomain);
}

#[test]
fn tcp_queries_are_forwarded_over_tcp() {
    let w = world();
    let e = start(&w, r#"{"defaultAction":"allow"}"#);
    // Over UDP the big answer is truncated, as the upstream sends it.
    let m = e.lookup("big.test.");
    assert!(m.metadata.truncation);
    // Over TCP it arrives whole (upstream egress forwarded TCP over UDP).
    let before = w.tcp_queries.load(Ordering::SeqCst);
    let m = dns_tcp(e.dns, "big.test.", RecordType::A);
    assert!(!m.metadata.truncation);
    assert_eq!(addrs(&m).len(), 60);
    assert_eq!(w.tcp_queries.load(Ordering::SeqCst), before + 1);
    // TCP denial.
    let e2 = start(&w, r#"{"defaultAction":"deny"}"#);
    assert_eq!(
        rcode(&dns_tcp(e2.dns, "allowed.test.", RecordType::A)),
        ResponseCode::NXDomain
    );
}

#[test]
fn dead_upstream_gives_servfail_then_next_upstream() {
    let w = world();
    // The first upstream is a closed port: the proxy falls through to the second.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let list = format!("{dead},{}", w.addr);
    let e = egress(&[
        ("OPENSANDBOX_EGRESS_DNS_UPSTREAM", &list),
        ("OPENSANDBOX_EGRESS_RULES", r#"{"defaultAction":"allow"}"#),
    ]);
    assert_eq!(
        addrs(&e.lookup("allowed.test.")),
        [Ipv4Addr::new(10, 0, 0, 1)]
    );
    let only_dead = dead.to_string();
    let e = egress(&[
        ("OPENSANDBOX_EGRESS_DNS_UPSTREAM", &only_dead),
        ("OPENSANDBOX_EGRESS_RULES", r#"{"defaultAction":"allow"}"#),
    ]);
    assert_eq!(rcode(&e.lookup("allowed.test.")), ResponseCode::ServFail);
}

#[test]
fn garbage_gets_formerr_and_the_proxy_goes_on() {
    let w = world();
    let e = start(&w, r#"{"defaultAction":"allow"}"#);
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.send_to(
        &[0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
        e.dns,
    )
    .unwrap();
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).unwrap();
    assert_eq!(&buf[..4], &[0xab, 0xcd, 0x81, 0x01]);
    assert_eq!(n, 12);
    assert_eq!(
        addrs(&e.lookup("allowed.test.")),
        [Ipv4Addr::new(10, 0, 0, 1)]
    );
}

#[test]
fn a_flood_of_lookups_loses_no_answer() {
    let w = world();
    let upstream = w.addr.to_string();
    let e = egress(&[
        ("OPENSANDBOX_EGRESS_DNS_UPSTREAM", &upstream),
        (
            "OPENSANDBOX_EGRESS_RULES",
            r#"{"defaultAction":"deny","egress":[{"action":"allow","target":"allowed.test"}]}"#,
        ),
        ("OPENSANDBOX_EGRESS_EVENTS_MAX", "100"),
    ]);
    let dns = e.dns;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                (0..250)
                    .filter(|i| {
                        let name = if (i + t) % 2 == 0 {
                            "allowed.test."
                        } else {
                            "denied.test."
                        };
                        let m = dns_udp(dns, name, RecordType::A);
                        if name == "allowed.test." {
                            addrs(&m) == [Ipv4Addr::new(10, 0, 0, 1)]
                        } else {
                            rcode(&m) == ResponseCode::NXDomain
                        }
                    })
                    .count()
            })
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(ok, 2000);
    let (_, v) = e.json("GET", "/events", None);
    assert_eq!(
        v["events"].as_array().unwrap().len(),
        100,
        "the event log is bounded"
    );
    assert_eq!(v["dropped"], 900);
}

#[test]
fn always_rules_overlay_the_user_policy_and_reload() {
    let w = FakeResolver::start(&[
        ("evil.test", vec![Ipv4Addr::new(10, 0, 0, 6)]),
        ("extra.test", vec![Ipv4Addr::new(10, 0, 0, 7)]),
    ]);
    let dir = std::env::temp_dir().join(format!("egress-always-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("deny.always"), "evil.test # operator says no\n").unwrap();
    let upstream = w.addr.to_string();
    let dir_s = dir.to_str().unwrap().to_string();
    let e = egress(&[
        ("OPENSANDBOX_EGRESS_DNS_UPSTREAM", &upstream),
        (
            "OPENSANDBOX_EGRESS_RULES",
            r#"{"defaultAction":"deny","egress":[{"action":"allow","target":"evil.test"}]}"#,
        ),
        ("OPENSANDBOX_EGRESS_RULES_DIR", &dir_s),
        ("OPENSANDBOX_EGRESS_RULES_RELOAD_SEC", "1"),
    ]);
    assert_eq!(
        rcode(&e.lookup("evil.test.")),
        ResponseCode::NXDomain,
        "deny.always beats the user's allow"
    );
    let (_, v) = e.json("GET", "/policy", None);
    assert_eq!(
        v["policy"]["egress"],
        serde_json::json!([{"action":"allow","target":"evil.test"}]),
        "GET shows the user's rules only"
    );
    let (_, v) = e.json("GET", "/policy/explain?target=evil.test", None);
    assert_eq!(v["rule"]["target"], "evil.test");
    assert_eq!(v["action"], "deny");
    // A new allow.always is picked up without a restart.
    assert_eq!(rcode(&e.lookup("extra.test.")), ResponseCode::NXDomain);
    std::fs::write(dir.join("allow.always"), "extra.test\n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while rcode(&e.lookup("extra.test.")) != ResponseCode::NoError {
        assert!(
            std::time::Instant::now() < deadline,
            "allow.always was not reloaded"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A broken file keeps the previous overlay.
    std::fs::write(dir.join("allow.always"), "bad..name\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(
        addrs(&e.lookup("extra.test.")),
        [Ipv4Addr::new(10, 0, 0, 7)]
    );
    drop(e);
    // At start, a broken file is fatal.
    let err = start_fails(&[("OPENSANDBOX_EGRESS_RULES_DIR", &dir_s)]);
    assert!(err.contains("allow.always:1"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refused_names_reach_the_deny_webhook_with_retries() {
    use std::io::{BufReader, Write};
    use std::sync::{Arc, Mutex};
    let hook = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_addr = hook.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
    {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for (n, conn) in hook.incoming().flatten().enumerate() {
                let mut r = BufReader::new(conn);
                let got = read_post(&mut r).unwrap();
                seen.lock().unwrap().push(got);
                // The first attempt fails: egress must retry.
                let status = if n == 0 {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let _ = r.get_mut().write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
            }
        });
    }
    let w = world();
    let upstream = w.addr.to_string();
    let url = format!("http://{hook_addr}/hooks/denied");
    let e = egress(&[
        ("OPENSANDBOX_EGRESS_DNS_UPSTREAM", &upstream),
        ("OPENSANDBOX_EGRESS_RULES", r#"{"defaultAction":"deny"}"#),
        ("OPENSANDBOX_EGRESS_DENY_WEBHOOK", &url),
        ("OPENSANDBOX_EGRESS_SANDBOX_ID", "sbx-42"),
    ]);
    assert_eq!(rcode(&e.lookup("Denied.TEST.")), ResponseCode::NXDomain);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while seen.lock().unwrap().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "webhook not retried: {:?}",
            seen.lock().unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].0, "POST /hooks/denied HTTP/1.1");
    for (_, body) in seen.iter() {
        assert_eq!(body["hostname"], "denied.test");
        assert_eq!(body["source"], "opensandbox-egress");
        assert_eq!(body["sandboxId"], "sbx-42");
        let ts = body["timestamp"].as_str().unwrap();
        assert!(ts.len() == 20 && ts.ends_with('Z'), "{ts}");
    }
}

#[test]
fn probes_take_a_silent_upstream_out_of_rotation() {
    use std::sync::{Arc, Mutex};
    // An upstream that receives but never answers.
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let asked: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let asked = asked.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok(n) = hole.recv(&mut buf) {
                if let Ok(m) = hickory_proto::op::Message::from_vec(&buf[..n]) {
                    asked.lock().unwrap().push(m.queries[0].name().to_ascii());
                }
            }
        });
    }
    let w = world();
    let list = format!("{hole_addr},{}", w.addr);
    let e = egress(&[
        ("OPENSANDBOX_EGRESS_DNS_UPSTREAM", &list),
        ("OPENSANDBOX_EGRESS_RULES", r#"{"defaultAction":"allow"}"#),
        ("OPENSANDBOX_EGRESS_DNS_UPSTREAM_PROBE_INTERVAL_SEC", "1"),
    ]);
    // The first probe (". NS") reaches the silent upstream and times out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !asked.lock().unwrap().iter().any(|n| n == ".") {
        assert!(std::time::Instant::now() < deadline, "no probe");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    asked.lock().unwrap().clear();
    for _ in 0..3 {
        assert_eq!(
            addrs(&e.lookup("allowed.test.")),
            [Ipv4Addr::new(10, 0, 0, 1)]
        );
    }
    let asked = asked.lock().unwrap();
    assert!(
        !asked.iter().any(|n| n == "allowed.test."),
        "queries skipped the unhealthy upstream: {asked:?}"
    );
}

#[test]
fn outbound_lines_are_logged_except_log_skip_names() {
    use std::io::Read;
    let w = FakeResolver::start(&[
        ("loud.test", vec![Ipv4Addr::new(10, 0, 0, 8)]),
        ("quiet.test", vec![Ipv4Addr::new(10, 0, 0, 9)]),
    ]);
    let dir = std::env::temp_dir().join(format!("egress-logskip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("log_skip.always"), "quiet.test\n").unwrap();
    let dns = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = std::process::Command::new(bin())
        .env("OPENSANDBOX_EGRESS_REDIRECT", "off")
        .env("OPENSANDBOX_EGRESS_HTTP_ADDR", "127.0.0.1:0")
        .env("OPENSANDBOX_EGRESS_DNS_ADDR", dns.to_string())
        .env("OPENSANDBOX_EGRESS_DNS_UPSTREAM", w.addr.to_string())
        .env("OPENSANDBOX_EGRESS_RULES", r#"{"defaultAction":"allow"}"#)
        .env("OPENSANDBOX_EGRESS_RULES_DIR", &dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        s.send_to(&query("loud.test.", hickory_proto::rr::RecordType::A), dns)
            .unwrap();
        if s.recv(&mut [0u8; 512]).is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "egress did not start");
    }
    assert_eq!(
        addrs(&dns_udp(
            dns,
            "quiet.test.",
            hickory_proto::rr::RecordType::A
        )),
        [Ipv4Addr::new(10, 0, 0, 9)]
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    child.kill().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.lines().any(|l| l.contains("egress.outbound")
            && l.contains("loud.test")
            && l.contains("10.0.0.8")),
        "{out}"
    );
    assert!(!out.contains("quiet.test"), "{out}");
}

#[test]
fn https_deny_webhook_with_an_extra_root() {
    use std::io::{BufReader, Write};
    use std::sync::{Arc, Mutex};
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("egress-hook-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, cert.pem()).unwrap();
    let server_config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap(),
    );
    let hook = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hook.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for tcp in hook.incoming().flatten() {
                let conn = rustls::ServerConnection::new(server_config.clone()).unwrap();
                let mut r = BufReader::new(rustls::StreamOwned::new(conn, tcp));
                let Ok((_, body)) = read_post(&mut r) else {
                    continue;
                };
                seen.lock().unwrap().push(body);
                let s = r.get_mut();
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
                let _ = s.flush();
            }
        });
    }
    let w = world();
    let upstream = w.addr.to_string();
    let url = format!("https://localhost:{port}/hook");
    let e = egress(&[
        ("OPENSANDBOX_EGRESS_DNS_UPSTREAM", &upstream),
        ("OPENSANDBOX_EGRESS_RULES", r#"{"defaultAction":"deny"}"#),
        ("OPENSANDBOX_EGRESS_DENY_WEBHOOK", &url),
        ("OPENSANDBOX_EGRESS_DENY_WEBHOOK_CA", ca.to_str().unwrap()),
    ]);
    assert_eq!(rcode(&e.lookup("secret.test.")), ResponseCode::NXDomain);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while seen.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no event over https");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(seen.lock().unwrap()[0]["hostname"], "secret.test");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn metrics_are_pushed_as_otlp_json() {
    use std::io::{BufReader, Write};
    use std::sync::mpsc;
    let collector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", collector.local_addr().unwrap());
    let (tx, rx) = mpsc::channel::<(String, serde_json::Value)>();
    std::thread::spawn(move || {
        for conn in collector.incoming().flatten() {
            let mut r = BufReader::new(conn);
            let got = read_post(&mut r).unwrap();
            let _ = r
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = tx.send(got);
        }
    });
    let w = world();
    let upstream = w.addr.to_string();
    let e = egress(&[
        ("OPENSANDBOX_EGRESS_DNS_UPSTREAM", &upstream),
        (
            "OPENSANDBOX_EGRESS_RULES",
            r#"{"defaultAction":"deny","egress":[{"action":"allow","target":"allowed.test"}]}"#,
        ),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &base),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ("OPENSANDBOX_EGRESS_METRICS_EXTRA_ATTRS", "team=red,env=ci"),
        ("OPENSANDBOX_EGRESS_SANDBOX_ID", "sbx-7"),
    ]);
    // The allowed name first: any export counting both refusals counts it too.
    assert_eq!(
        addrs(&e.lookup("allowed.test.")),
        [Ipv4Addr::new(10, 0, 0, 1)]
    );
    assert_eq!(rcode(&e.lookup("denied.test.")), ResponseCode::NXDomain);
    assert_eq!(rcode(&e.lookup("other.test.")), ResponseCode::NXDomain);
    let value = |doc: &serde_json::Value, name: &str| -> serde_json::Value {
        doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {doc}"))
            .clone()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (line, doc) = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let (line, doc) = rx
            .recv_timeout(left)
            .expect("no metrics with both refusals");
        let denied =
            value(&doc, "egress.policy.denied_total")["sum"]["dataPoints"][0]["asInt"].clone();
        if denied == "2" {
            break (line, doc);
        }
    };
    assert_eq!(line, "POST /v1/metrics HTTP/1.1");
    let res = &doc["resourceMetrics"][0]["resource"]["attributes"];
    let attr = |key: &str| {
        res.as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| a["value"]["stringValue"].clone())
    };
    assert_eq!(
        attr("service.name").unwrap(),
        format!("opensandbox-egress-{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(attr("team").unwrap(), "red");
    assert_eq!(attr("env").unwrap(), "ci");
    assert_eq!(attr("sandbox_id").unwrap(), "sbx-7");
    assert_eq!(
        doc["resourceMetrics"][0]["scopeMetrics"][0]["scope"]["name"],
        "opensandbox/egress"
    );
    // One allowed name was forwarded; refused ones never reach the upstream.
    let q = value(&doc, "egress.dns.query.duration");
    assert_eq!(q["histogram"]["dataPoints"][0]["count"], "1");
    assert!(q["histogram"]["dataPoints"][0]["sum"].as_f64().unwrap() > 0.0);
    assert_eq!(
        value(&doc, "egress.nftables.rules.count")["gauge"]["dataPoints"][0]["asInt"],
        "1"
    );
    let rss = value(&doc, "egress.system.memory.usage_bytes")["gauge"]["dataPoints"][0]["asInt"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(rss > 1 << 20, "rss {rss}");
    let cpu = value(&doc, "egress.system.cpu.utilization")["gauge"]["dataPoints"][0]["asDouble"]
        .as_f64()
        .unwrap();
    assert!((0.0..=1.0).contains(&cpu), "cpu {cpu}");
}

/// Reads one HTTP request: its request line and its JSON body.
fn read_post<S: std::io::Read>(
    r: &mut std::io::BufReader<S>,
) -> std::io::Result<(String, serde_json::Value)> {
    use std::io::{BufRead, Read};
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut len = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().map_err(std::io::Error::other)?;
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((line.trim().to_string(), serde_json::from_slice(&body)?))
}
