//! egress enforcing for real: a sandbox namespace (egress in its own cgroup,
//! a client) and a world namespace (a resolver, TCP servers), joined by a
//! veth pair. The client resolves through the sandbox's resolver address as
//! any program would; DNS is redirected to egress; connections are then let
//! out or dropped by nftables.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use netns_tests::*;

const A: Ipv4Addr = SERVERS[0];
const B: Ipv4Addr = SERVERS[1];
const C: Ipv4Addr = SERVERS[2];

fn zone() -> Vec<(&'static str, Vec<Ipv4Addr>)> {
    vec![
        ("allowed.test", vec![A]),
        ("denied.test", vec![B]),
        ("api.wild.test", vec![C]),
        ("deep.api.wild.test", vec![A]),
        ("wild.test", vec![B]),
        ("short.test", vec![C]),
    ]
}

fn skip(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!(
        "SKIPPED {test}: needs root for network namespaces, cgroups and nftables (CI runs as root)"
    );
    true
}

/// Runs `f` in the sandbox with egress started on `rules`.
fn scenario(tag: &str, rules: &str, f: impl FnOnce(&Egress) + Send + 'static) {
    scenario_env(tag, &[("OPENSANDBOX_EGRESS_RULES", rules)], f);
}

/// Runs `f` in the sandbox with egress started with `envs` (over the defaults
/// of [`start`]).
fn scenario_env(tag: &str, envs: &[(&str, &str)], f: impl FnOnce(&Egress) + Send + 'static) {
    let topo = Topology::new(tag, &zone());
    let cg = Cgroup::new(tag).expect("cgroup v2");
    let envs: Vec<(String, String)> = envs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    std::thread::spawn(move || {
        topo.enter_sandbox();
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let e = start(&cg, &envs);
        f(&e);
        drop(e);
        drop(cg);
        drop(topo);
    })
    .join()
    .unwrap();
}

/// Starts egress in `cg`: `dns+nft`, redirect on, the world's resolver
/// upstream, then `envs`.
fn start(cg: &Cgroup, envs: &[(&str, &str)]) -> Egress {
    let mut all = vec![
        ("OPENSANDBOX_EGRESS_MODE", "dns+nft"),
        ("OPENSANDBOX_EGRESS_REDIRECT", "on"),
        ("OPENSANDBOX_EGRESS_DNS_UPSTREAM", WORLD_DNS),
    ];
    all.extend_from_slice(envs);
    Egress::start_in(&egress_bin(), &all, Some(&cg.path))
}

/// Resolves `name` the way a program in the sandbox would: by asking the
/// configured resolver.
fn resolve(name: &str) -> (ResponseCode, Vec<Ipv4Addr>) {
    let m = dns_udp(WORLD_DNS.parse().unwrap(), name, RecordType::A);
    (rcode(&m), addrs(&m))
}

fn hello(ip: Ipv4Addr) -> String {
    format!("hello from {ip}\n")
}

#[test]
fn allowed_connects_denied_is_refused_and_unreachable() {
    if skip("allowed_connects_denied_is_refused_and_unreachable") {
        return;
    }
    scenario(
        "basic",
        r#"{"defaultAction":"deny","egress":[{"action":"allow","target":"allowed.test"}]}"#,
        |e| {
            assert_eq!(fetch(A), None, "nothing before a lookup");
            assert_eq!(resolve("allowed.test."), (ResponseCode::NoError, vec![A]));
            assert_eq!(
                fetch(A),
                Some(hello(A)),
                "the first connect after the answer works"
            );
            assert_eq!(resolve("denied.test.").0, ResponseCode::NXDomain);
            assert_eq!(
                fetch(B),
                None,
                "a denied name's address is unreachable when dialled directly"
            );
            // Both refusals are events: the name, and the connection.
            let connect = e.wait_event(|ev| ev["kind"] == "connect" && ev["ip"] == B.to_string());
            assert_eq!(connect["port"], 80);
            assert_eq!(connect["rule"], "defaultAction");
            let name = e.wait_event(|ev| ev["kind"] == "dns");
            assert_eq!(name["domain"], "denied.test");
            assert_eq!(fetch(C), None);
            // A connected socket (as the C library's resolver uses) only takes
            // answers from the address it asked: the redirect must be undone on
            // the way back.
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.connect(WORLD_DNS).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.send(&query("allowed.test.", RecordType::A)).unwrap();
            let mut buf = [0u8; 512];
            let n = s.recv(&mut buf).expect("answer to a connected socket");
            assert_eq!(
                addrs(&hickory_proto::op::Message::from_vec(&buf[..n]).unwrap()),
                [A]
            );
        },
    );
}

#[test]
fn wildcards_and_cidrs() {
    if skip("wildcards_and_cidrs") {
        return;
    }
    let rules = r#"{"defaultAction":"deny","egress":[
        {"action":"allow","target":"*.wild.test"},
        {"action":"allow","target":"198.51.100.12/32"}]}"#;
    scenario("wild", rules, |_| {
        assert_eq!(fetch(C), Some(hello(C)), "CIDR rule, no lookup needed");
        assert_eq!(
            resolve("deep.api.wild.test."),
            (ResponseCode::NoError, vec![A])
        );
        assert_eq!(fetch(A), Some(hello(A)));
        assert_eq!(
            resolve("wild.test.").0,
            ResponseCode::NXDomain,
            "the apex is not covered"
        );
        assert_eq!(fetch(B), None);
    });
}

#[test]
fn default_allow_with_deny_rules() {
    if skip("default_allow_with_deny_rules") {
        return;
    }
    let rules = r#"{"defaultAction":"allow","egress":[
        {"action":"deny","target":"denied.test"},
        {"action":"deny","target":"198.51.100.12"}]}"#;
    scenario("allow", rules, |e| {
        assert_eq!(fetch(A), Some(hello(A)));
        assert_eq!(resolve("denied.test.").0, ResponseCode::NXDomain);
        assert_eq!(fetch(C), None, "a denied address is dropped");
        let ev = e.wait_event(|ev| ev["kind"] == "connect");
        assert_eq!(
            (ev["ip"].as_str(), ev["rule"].as_str()),
            (Some("198.51.100.12"), Some("198.51.100.12"))
        );
        assert_eq!(resolve("allowed.test."), (ResponseCode::NoError, vec![A]));
    });
}

#[test]
fn patch_and_delete_take_effect_at_once() {
    if skip("patch_and_delete_take_effect_at_once") {
        return;
    }
    scenario("change", r#"{"defaultAction":"deny"}"#, |e| {
        assert_eq!(resolve("allowed.test.").0, ResponseCode::NXDomain);
        assert_eq!(e.json("PATCH", "/policy", Some(r#"[{"action":"allow","target":"allowed.test"},{"action":"allow","target":"198.51.100.11"}]"#)).0, 200);
        assert_eq!(
            fetch(B),
            Some(hello(B)),
            "an added address rule applies to the next connection"
        );
        assert_eq!(resolve("allowed.test."), (ResponseCode::NoError, vec![A]));
        assert_eq!(fetch(A), Some(hello(A)));
        assert_eq!(
            e.json(
                "DELETE",
                "/policy",
                Some(r#"["allowed.test","198.51.100.11"]"#)
            )
            .0,
            200
        );
        assert_eq!(fetch(A), None, "its learned address goes with the name");
        assert_eq!(fetch(B), None);
        assert_eq!(resolve("allowed.test.").0, ResponseCode::NXDomain);
    });
}

#[test]
fn ttl_expiry_and_dns_over_tcp() {
    if skip("ttl_expiry_and_dns_over_tcp") {
        return;
    }
    scenario(
        "ttl",
        r#"{"defaultAction":"deny","egress":[{"action":"allow","target":"short.test"},{"action":"allow","target":"allowed.test"}]}"#,
        |e| {
            assert_eq!(resolve("short.test."), (ResponseCode::NoError, vec![C]));
            assert_eq!(fetch(C), Some(hello(C)));
            let deadline = Instant::now() + Duration::from_secs(5);
            while fetch(C).is_some() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
            assert_eq!(fetch(C), None, "closed again after the answer's 1 s TTL");
            // The refusal names the name the address came from.
            let ev = e.wait_event(|ev| ev["kind"] == "connect" && ev["ip"] == C.to_string());
            assert_eq!(
                (
                    ev["domain"].as_str(),
                    ev["rule"].as_str(),
                    ev["port"].as_u64()
                ),
                (Some("short.test"), Some("defaultAction"), Some(80)),
                "{ev}"
            );
            let m = dns_tcp(WORLD_DNS.parse().unwrap(), "allowed.test.", RecordType::A);
            assert_eq!(addrs(&m), [A], "DNS over TCP is redirected and answered");
            assert_eq!(fetch(A), Some(hello(A)));
            let m = dns_tcp(WORLD_DNS.parse().unwrap(), "denied.test.", RecordType::A);
            assert_eq!(rcode(&m), ResponseCode::NXDomain);
        },
    );
}

#[test]
fn restart_keeps_enforcement() {
    if skip("restart_keeps_enforcement") {
        return;
    }
    let topo = Topology::new("restart", &zone());
    let cg = Cgroup::new("restart").unwrap();
    std::thread::spawn(move || {
        topo.enter_sandbox();
        let rules =
            r#"{"defaultAction":"deny","egress":[{"action":"allow","target":"allowed.test"}]}"#;
        let e = start(&cg, &[("OPENSANDBOX_EGRESS_RULES", rules)]);
        assert_eq!(fetch(A), None);
        drop(e); // killed: no cleanup
        assert_eq!(fetch(A), None, "still closed while egress is down");
        assert_eq!(fetch(B), None);
        let e = start(&cg, &[("OPENSANDBOX_EGRESS_RULES", rules)]);
        assert_eq!(resolve("allowed.test."), (ResponseCode::NoError, vec![A]));
        assert_eq!(fetch(A), Some(hello(A)));
        assert_eq!(fetch(B), None);
        drop(e);
        drop(cg);
        drop(topo);
    })
    .join()
    .unwrap();
}

#[test]
fn a_flood_of_lookups_loses_no_answer() {
    if skip("a_flood_of_lookups_loses_no_answer") {
        return;
    }
    scenario(
        "flood",
        r#"{"defaultAction":"deny","egress":[{"action":"allow","target":"allowed.test"}]}"#,
        |_| {
            let sandbox_threads: Vec<_> = (0..4)
                .map(|t| {
                    // Threads inherit the creating thread's namespace.
                    std::thread::spawn(move || {
                        let mut bad = Vec::new();
                        let ok = (0..200)
                            .filter(|i| {
                                let (name, want) = if (i + t) % 2 == 0 {
                                    ("allowed.test.", (ResponseCode::NoError, vec![A]))
                                } else {
                                    ("denied.test.", (ResponseCode::NXDomain, vec![]))
                                };
                                let got = resolve(name);
                                if got != want {
                                    bad.push(format!("{name}: {got:?}"));
                                }
                                got == want
                            })
                            .count();
                        if !bad.is_empty() {
                            eprintln!("wrong answers: {bad:?}");
                        }
                        ok
                    })
                })
                .collect();
            let ok: usize = sandbox_threads.into_iter().map(|t| t.join().unwrap()).sum();
            assert_eq!(ok, 800);
            assert_eq!(fetch(A), Some(hello(A)));
        },
    );
}

#[test]
fn exempt_nameservers_are_reached_directly() {
    if skip("exempt_nameservers_are_reached_directly") {
        return;
    }
    let envs = [
        (
            "OPENSANDBOX_EGRESS_NAMESERVER_EXEMPT",
            "10.200.0.1, not-an-ip",
        ),
        ("OPENSANDBOX_EGRESS_RULES", r#"{"defaultAction":"deny"}"#),
    ];
    scenario_env("exempt", &envs, |_| {
        // The exempt resolver answers the sandbox itself (upstream's documented bypass)...
        assert_eq!(resolve("denied.test."), (ResponseCode::NoError, vec![B]));
        // ...any other resolver address is still redirected to egress.
        let m = dns_udp(
            "10.200.0.9:53".parse().unwrap(),
            "denied.test.",
            RecordType::A,
        );
        assert_eq!(rcode(&m), ResponseCode::NXDomain);
    });
}

#[test]
fn dns_mode_redirects_without_filtering() {
    if skip("dns_mode_redirects_without_filtering") {
        return;
    }
    let envs = [
        ("OPENSANDBOX_EGRESS_MODE", "dns"),
        (
            "OPENSANDBOX_EGRESS_RULES",
            r#"{"defaultAction":"deny","egress":[{"action":"allow","target":"allowed.test"}]}"#,
        ),
    ];
    scenario_env("dnsmode", &envs, |e| {
        assert_eq!(resolve("allowed.test."), (ResponseCode::NoError, vec![A]));
        assert_eq!(resolve("denied.test.").0, ResponseCode::NXDomain);
        // dns mode filters names only: addresses stay reachable.
        assert_eq!(fetch(B), Some(hello(B)));
        let (_, v) = e.json("GET", "/policy", None);
        assert_eq!(v["enforcementMode"], "dns");
    });
}

#[test]
fn default_allow_denied_names_are_unreachable_without_asking_egress() {
    if skip("default_allow_denied_names_are_unreachable_without_asking_egress") {
        return;
    }
    // A client that resolved the name elsewhere (DNS over HTTPS, say) and
    // dials its address directly.
    let rules = r#"{"defaultAction":"allow","egress":[{"action":"deny","target":"denied.test"}]}"#;
    scenario("doh", rules, |e| {
        let deadline = Instant::now() + Duration::from_secs(3);
        while fetch(B).is_some() {
            assert!(
                Instant::now() < deadline,
                "a denied name's address stayed reachable"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The event says which denied name the address belongs to.
        let ev = e.wait_event(|ev| ev["kind"] == "connect" && ev["ip"] == B.to_string());
        assert_eq!(
            (ev["domain"].as_str(), ev["rule"].as_str()),
            (Some("denied.test"), Some("denied.test")),
            "{ev}"
        );
        let (_, v) = e.json("GET", &format!("/policy/explain?target={B}"), None);
        assert_eq!(
            (
                v["action"].as_str(),
                v["answer"]["domain"].as_str(),
                v["answer"]["denied"].as_bool()
            ),
            (Some("deny"), Some("denied.test"), Some(true)),
            "{v}"
        );
        assert_eq!(fetch(A), Some(hello(A)), "other addresses stay reachable");
        // Allowing the name again opens its address at once.
        assert_eq!(
            e.json("DELETE", "/policy", Some(r#"["denied.test"]"#)).0,
            200
        );
        assert_eq!(fetch(B), Some(hello(B)));
    });
}

#[test]
fn ipv6_end_to_end() {
    if skip("ipv6_end_to_end") {
        return;
    }
    let rules = format!(
        r#"{{"defaultAction":"deny","egress":[{{"action":"allow","target":"allowed.test"}},{{"action":"allow","target":"{}/128"}}]}}"#,
        six(C)
    );
    scenario("v6", &rules, |_| {
        let resolver6: std::net::SocketAddr = "[fd00:200::1]:53".parse().unwrap();
        let greet = |ip: std::net::Ipv6Addr| Some(format!("hello from {ip}\n"));
        assert_eq!(fetch(six(A)), None, "nothing before a lookup");
        // AAAA over IPv4 to the configured resolver: learned into dyn_allow_v6.
        let m = dns_udp(
            WORLD_DNS.parse().unwrap(),
            "allowed.test.",
            RecordType::AAAA,
        );
        assert_eq!(rcode(&m), ResponseCode::NoError);
        assert_eq!(addrs6(&m), [six(A)]);
        assert_eq!(
            fetch(six(A)),
            greet(six(A)),
            "the learned AAAA is reachable"
        );
        // A query to an IPv6 resolver address is redirected to egress as well.
        let m = dns_udp(resolver6, "denied.test.", RecordType::AAAA);
        assert_eq!(rcode(&m), ResponseCode::NXDomain);
        let m = dns_tcp(resolver6, "denied.test.", RecordType::AAAA);
        assert_eq!(rcode(&m), ResponseCode::NXDomain);
        let m = dns_udp(resolver6, "allowed.test.", RecordType::AAAA);
        assert_eq!(
            addrs6(&m),
            [six(A)],
            "answered by egress through the redirect"
        );
        // Denied and unknown addresses stay closed; the IPv6 CIDR rule opens its address.
        assert_eq!(fetch(six(B)), None);
        assert_eq!(fetch(six(C)), greet(six(C)));
        // IPv4 keeps working alongside.
        assert_eq!(resolve("allowed.test."), (ResponseCode::NoError, vec![A]));
        assert_eq!(fetch(A), Some(hello(A)));
    });
}
