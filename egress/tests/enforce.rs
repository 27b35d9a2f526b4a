//! `dns+nft` end to end: the real egress binary in a network namespace of the
//! test's own, a fake resolver, and datagrams that the kernel lets out or
//! drops. Needs root (CI runs as root).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use hickory_proto::op::ResponseCode;

fn skip(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("SKIPPED {test}: needs root for network namespaces and nftables (CI runs as root)");
    true
}

const RULES: &str = r#"{"defaultAction":"deny","egress":[
    {"action":"allow","target":"allowed.test"},
    {"action":"allow","target":"short.test"},
    {"action":"allow","target":"other.test"},
    {"action":"allow","target":"10.5.0.0/16"}]}"#;

fn world() -> FakeResolver {
    FakeResolver::start(&[
        ("allowed.test", vec![Ipv4Addr::new(10, 0, 0, 1)]),
        ("denied.test", vec![Ipv4Addr::new(10, 0, 0, 2)]),
        ("other.test", vec![Ipv4Addr::new(10, 0, 0, 3)]),
        ("short.test", vec![Ipv4Addr::new(10, 0, 0, 9)]),
    ])
}

fn start(w: &FakeResolver, rules: &str) -> Egress {
    let upstream = w.addr.to_string();
    egress(&[
        ("OPENSANDBOX_EGRESS_MODE", "dns+nft"),
        ("OPENSANDBOX_EGRESS_DNS_UPSTREAM", &upstream),
        ("OPENSANDBOX_EGRESS_RULES", rules),
    ])
}

#[test]
fn answers_open_exactly_their_addresses() {
    if skip("answers_open_exactly_their_addresses") {
        return;
    }
    Netns::new("answers").run(move || {
        let w = world();
        let e = start(&w, RULES);
        // Nothing is reachable before a lookup, CIDR rules are.
        assert!(!can_send("10.0.0.1:443"));
        assert!(can_send("10.5.1.1:443"));
        assert!(!can_send("10.6.1.1:443"));
        assert!(!can_send("11.0.0.1:443"));
        // An allowed answer's address is open by the time the answer arrives.
        assert_eq!(addrs(&e.lookup("allowed.test.")), [Ipv4Addr::new(10, 0, 0, 1)]);
        assert!(can_send("10.0.0.1:443"), "no race: allowed before the answer is released");
        // explain says why the address is open (no address rule covers it).
        let (_, v) = e.json("GET", "/policy/explain?target=10.0.0.1", None);
        assert_eq!((v["action"].as_str(), v["answer"]["domain"].as_str(), v["answer"]["denied"].as_bool()), (Some("allow"), Some("allowed.test"), Some(false)), "{v}");
        assert!(v["answer"]["expiresInSeconds"].as_u64().unwrap() > 0, "{v}");
        assert!(v["reason"].as_str().unwrap().contains("allowed name \"allowed.test\""), "{v}");
        let (_, v) = e.json("GET", "/policy/explain?target=10.0.0.2", None);
        assert_eq!((v["action"].as_str(), &v["answer"]), (Some("deny"), &serde_json::Value::Null), "{v}");
        // A denied name: NXDOMAIN, and its address stays closed when dialled directly.
        assert_eq!(rcode(&e.lookup("denied.test.")), ResponseCode::NXDomain);
        assert!(!can_send("10.0.0.2:443"));
        // A policy change keeps what was learned for names that stay allowed...
        assert_eq!(addrs(&e.lookup("other.test.")), [Ipv4Addr::new(10, 0, 0, 3)]);
        assert_eq!(e.json("PATCH", "/policy", Some(r#"[{"action":"allow","target":"new.test"}]"#)).0, 200);
        assert!(can_send("10.0.0.1:443"), "learned addresses survive unrelated changes");
        // ...and forgets it for names that become denied.
        assert_eq!(e.json("DELETE", "/policy", Some(r#"["other.test"]"#)).0, 200);
        assert!(!can_send("10.0.0.3:443"), "removed name, removed address");
        assert!(can_send("10.0.0.1:443"));
        // TTL expiry closes the address again.
        assert_eq!(addrs(&e.lookup("short.test.")), [Ipv4Addr::new(10, 0, 0, 9)]);
        assert!(can_send("10.0.0.9:443"));
        assert!(wait_closed("10.0.0.9:443", Duration::from_secs(5)), "expired after its 1 s TTL");
        // DNS over TCP learns too.
        assert_eq!(e.json("PATCH", "/policy", Some(r#"[{"action":"allow","target":"other.test"}]"#)).0, 200);
        assert_eq!(addrs(&dns_tcp(e.dns, "other.test.", hickory_proto::rr::RecordType::A)), [Ipv4Addr::new(10, 0, 0, 3)]);
        assert!(can_send("10.0.0.3:443"));
        // Default allow with deny rules.
        assert_eq!(e.json("POST", "/policy", Some(r#"{"defaultAction":"allow","egress":[{"action":"deny","target":"10.6.0.0/16"}]}"#)).0, 200);
        assert!(can_send("11.0.0.1:443"));
        assert!(!can_send("10.6.1.1:443"));
        let (_, v) = e.json("GET", "/policy", None);
        assert_eq!(v["enforcementMode"], "dns+nft");
    });
}

fn wait_closed(addr: &str, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if !can_send(addr) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn a_crash_keeps_the_sandbox_closed() {
    if skip("a_crash_keeps_the_sandbox_closed") {
        return;
    }
    Netns::new("crash").run(move || {
        let w = world();
        let e = start(&w, RULES);
        assert!(!can_send("11.0.0.1:443"));
        drop(e); // SIGKILL: no cleanup runs
        assert!(
            !can_send("11.0.0.1:443"),
            "rules stay in the kernel: fail closed"
        );
        assert!(can_send("10.5.1.1:443"));
        let mut e = start(&w, RULES);
        assert_eq!(
            addrs(&e.lookup("allowed.test.")),
            [Ipv4Addr::new(10, 0, 0, 1)]
        );
        assert!(can_send("10.0.0.1:443"));
        assert!(!can_send("11.0.0.1:443"));
        // SIGTERM (a pod or container stopping): egress exits at once, and
        // the rules stay too.
        let st = e.stop_with(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(st.and_then(|s| s.code()), Some(0), "{st:?}");
        assert!(!can_send("11.0.0.1:443"), "fail closed after SIGTERM");
        assert!(can_send("10.0.0.1:443"));
    });
}

/// A DNS query over UDP from a socket carrying `mark` (0 = none).
fn query_with_mark(server: &str, name: &str, mark: u32) -> Option<hickory_proto::op::Message> {
    use std::os::fd::AsFd;
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    if mark != 0 {
        nix::sys::socket::setsockopt(&s.as_fd(), nix::sys::socket::sockopt::Mark, &mark).unwrap();
    }
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.send_to(&query(name, hickory_proto::rr::RecordType::A), server)
        .ok()?;
    let mut buf = vec![0u8; 4096];
    let n = s.recv(&mut buf).ok()?;
    hickory_proto::op::Message::from_vec(&buf[..n]).ok()
}

/// A resolver on 127.0.0.1:53 and egress in `dns+nft` mode with the
/// redirect on, started in `cgroup`, forwarding to that resolver.
fn redirecting_egress(cgroup: &std::path::Path) -> (FakeResolver, Egress) {
    redirecting_egress_in_mode(cgroup, "dns+nft")
}

/// [`redirecting_egress`] in `mode`.
fn redirecting_egress_in_mode(cgroup: &std::path::Path, mode: &str) -> (FakeResolver, Egress) {
    // The "real" resolver listens on port 53: egress's own queries to it
    // must not be redirected back to egress.
    let w = FakeResolver::start_on(
        &[
            ("allowed.test", vec![Ipv4Addr::new(10, 0, 0, 1)]),
            ("denied.test", vec![Ipv4Addr::new(10, 0, 0, 2)]),
        ],
        Some("127.0.0.1:53".parse().unwrap()),
    );
    let e = egress_in(
        &[
            ("OPENSANDBOX_EGRESS_MODE", mode),
            ("OPENSANDBOX_EGRESS_REDIRECT", "on"),
            ("OPENSANDBOX_EGRESS_DNS_UPSTREAM", "127.0.0.1:53"),
            (
                "OPENSANDBOX_EGRESS_RULES",
                r#"{"defaultAction":"deny","egress":[{"action":"allow","target":"allowed.test"}]}"#,
            ),
        ],
        cgroup,
    );
    (w, e)
}

#[test]
fn all_dns_goes_through_the_proxy_and_marks_do_not_escape() {
    if skip("all_dns_goes_through_the_proxy_and_marks_do_not_escape") {
        return;
    }
    let Some(cg) = Cgroup::new("redirect") else {
        panic!("cgroup v2 is not mounted: egress cannot tell its own traffic apart");
    };
    Netns::new("redirect").run(move || {
        let (w, e) = redirecting_egress(&cg.path);
        // Any resolver address: the answer comes from the proxy.
        let m = query_with_mark("198.51.100.1:53", "allowed.test.", 0).expect("redirected answer");
        assert_eq!(addrs(&m), [Ipv4Addr::new(10, 0, 0, 1)]);
        assert!(can_send("10.0.0.1:443"), "learned through the redirect");
        let m = query_with_mark("198.51.100.1:53", "denied.test.", 0).expect("redirected answer");
        assert_eq!(rcode(&m), ResponseCode::NXDomain);
        // Asking the real resolver directly is redirected too.
        let m = query_with_mark("127.0.0.1:53", "denied.test.", 0).expect("redirected answer");
        assert_eq!(
            rcode(&m),
            ResponseCode::NXDomain,
            "the sandbox cannot reach the resolver around the proxy"
        );
        // DNS over TCP is redirected.
        assert_eq!(
            rcode(&dns_tcp(
                "198.51.100.1:53".parse().unwrap(),
                "denied.test.",
                hickory_proto::rr::RecordType::A
            )),
            ResponseCode::NXDomain
        );
        // A process that can set packet marks (CAP_NET_ADMIN here; upstream's
        // exemption was mark 0x1) gets no bypass: neither of DNS...
        for mark in [1u32, 0xffff_ffff] {
            let m =
                query_with_mark("127.0.0.1:53", "denied.test.", mark).expect("redirected answer");
            assert_eq!(rcode(&m), ResponseCode::NXDomain, "mark {mark:#x}");
        }
        // ...nor of the filter.
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        {
            use std::os::fd::AsFd;
            nix::sys::socket::setsockopt(&s.as_fd(), nix::sys::socket::sockopt::Mark, &1u32)
                .unwrap();
        }
        let sent = s.send_to(b"x", "10.0.0.2:443");
        assert_eq!(
            sent.err().and_then(|e| e.raw_os_error()),
            Some(1),
            "marked packet to a denied address is dropped"
        );
        assert!(
            w.udp_queries.load(std::sync::atomic::Ordering::SeqCst) >= 1,
            "egress itself reached the resolver"
        );
        drop(e);
    });
}

#[test]
fn doh_and_quic_on_443_can_be_blocked() {
    if skip("doh_and_quic_on_443_can_be_blocked") {
        return;
    }
    Netns::new("doh").run(move || {
        let w = world();
        let upstream = w.addr.to_string();
        let allow_all = r#"{"defaultAction":"allow"}"#;
        let e = egress(&[
            ("OPENSANDBOX_EGRESS_MODE", "dns+nft"),
            ("OPENSANDBOX_EGRESS_DNS_UPSTREAM", &upstream),
            ("OPENSANDBOX_EGRESS_RULES", allow_all),
            ("OPENSANDBOX_EGRESS_BLOCK_DOH_443", "true"),
            (
                "OPENSANDBOX_EGRESS_DOH_BLOCKLIST",
                "10.9.0.0/16,10.10.10.10",
            ),
        ]);
        assert!(
            !can_send("10.9.1.1:443"),
            "QUIC (UDP 443) to a listed resolver"
        );
        assert!(!can_send("10.10.10.10:443"));
        assert!(can_send("10.9.1.1:80"), "other ports stay open");
        assert!(can_send("10.8.1.1:443"), "unlisted addresses stay open");
        drop(e);
        let e = egress(&[
            ("OPENSANDBOX_EGRESS_MODE", "dns+nft"),
            ("OPENSANDBOX_EGRESS_DNS_UPSTREAM", &upstream),
            ("OPENSANDBOX_EGRESS_RULES", allow_all),
            ("OPENSANDBOX_EGRESS_BLOCK_DOH_443", "1"),
        ]);
        assert!(
            !can_send("10.8.1.1:443"),
            "without a list, all of port 443 (as upstream)"
        );
        assert!(can_send("10.8.1.1:80"));
        drop(e);
    });
}

#[test]
fn without_a_cgroup_of_its_own_egress_marks_its_sockets() {
    if skip("without_a_cgroup_of_its_own_egress_marks_its_sockets") {
        return;
    }
    Netns::new("nocg").run(move || {
        // egress in the root cgroup (which the sandbox may share), as on a
        // Docker host with cgroup v1: it falls back to a random socket mark.
        let (w, e) = redirecting_egress(&root_cgroup("root-probe"));
        // The mark egress chose, as a process that could read the ruleset
        // would know it: not enough without egress's socket uid.
        let (mark, rs) = egress_mark();
        assert!(rs.contains("meta skuid 4000000000"), "{rs}");
        // egress's own queries reach the resolver; the sandbox's (to any
        // address, unmarked or with upstream's mark 0x1) go to the proxy.
        let m = query_with_mark("198.51.100.1:53", "allowed.test.", 0).expect("redirected answer");
        assert_eq!(addrs(&m), [Ipv4Addr::new(10, 0, 0, 1)]);
        assert!(can_send("10.0.0.1:443"), "learned through the redirect");
        for mark in [0u32, 1, mark] {
            let m =
                query_with_mark("127.0.0.1:53", "denied.test.", mark).expect("redirected answer");
            assert_eq!(rcode(&m), ResponseCode::NXDomain, "mark {mark:#x}");
        }
        assert!(!can_send("10.0.0.2:443"), "a denied address stays closed");
        assert!(
            w.udp_queries.load(std::sync::atomic::Ordering::SeqCst) >= 1,
            "egress itself reached the resolver"
        );

        // The tripwire. A process that takes egress's socket uid (root with
        // CAP_SETUID) and sets marks could search the 2^32 marks, one failed
        // send each. The right mark does pass (what the search looks for)...
        assert_eq!(send_as_egress_uid(mark, "10.0.0.2:443"), None);
        // ...but the first wrong one is dropped, reported, and locks egress's
        // uid out: now the right mark is dropped too, so a search learns
        // nothing until the lockout ends, and any wrong mark starts it again.
        assert_eq!(send_as_egress_uid(mark ^ 0x10, "10.0.0.2:443"), Some(1));
        assert_eq!(
            send_as_egress_uid(mark, "10.0.0.2:443"),
            Some(1),
            "locked out"
        );
        let set = std::process::Command::new("nft")
            .args(["list", "set", "inet", "opensandbox", "own_tripped"])
            .output()
            .unwrap();
        let set = String::from_utf8_lossy(&set.stdout).into_owned();
        assert!(set.contains("elements = { 0x00000001"), "{set}");
        let ev = e.wait_event(|ev| {
            ev["kind"] == "connect"
                && ev["rule"]
                    .as_str()
                    .is_some_and(|r| r.contains("wrong mark"))
        });
        assert_eq!(
            (ev["ip"].as_str(), ev["port"].as_u64()),
            (Some("10.0.0.2"), Some(443))
        );
        // egress's own queries fail while it lasts, and work again after.
        let before = w.udp_queries.load(std::sync::atomic::Ordering::SeqCst);
        let started = std::time::Instant::now();
        let m = query_with_mark("198.51.100.1:53", "allowed.test.", 0);
        assert!(
            m.as_ref()
                .is_none_or(|m| rcode(m) == ResponseCode::ServFail),
            "{m:?}"
        );
        assert_eq!(
            w.udp_queries.load(std::sync::atomic::Ordering::SeqCst),
            before
        );
        let limit = Duration::from_millis(::egress::nft::ruleset::OWN_LOCKOUT_MS + 5_000);
        loop {
            let m = query_with_mark("198.51.100.1:53", "allowed.test.", 0);
            if m.as_ref()
                .is_some_and(|m| addrs(m) == [Ipv4Addr::new(10, 0, 0, 1)])
            {
                break;
            }
            assert!(started.elapsed() < limit, "egress never recovered: {m:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
        assert!(
            started.elapsed()
                >= Duration::from_millis(::egress::nft::ruleset::OWN_LOCKOUT_MS - 1_000),
            "the lockout ended early"
        );
        drop(e);
    });
}

#[test]
fn the_mark_tripwire_works_in_dns_mode_too() {
    if skip("the_mark_tripwire_works_in_dns_mode_too") {
        return;
    }
    Netns::new("nocgdns").run(move || {
        let (_w, e) = redirecting_egress_in_mode(&root_cgroup("root-probe-dns"), "dns");
        // dns mode filters nothing but DNS: any address is reachable...
        assert!(can_send("10.0.0.2:443"));
        // ...but a search for the mark is still a bypass of the DNS redirect
        // to stop, and it is reported.
        let (mark, _) = egress_mark();
        assert_eq!(send_as_egress_uid(mark ^ 1, "198.51.100.1:53"), Some(1));
        assert_eq!(
            send_as_egress_uid(mark, "10.0.0.2:443"),
            Some(1),
            "locked out"
        );
        let ev = e.wait_event(|ev| {
            ev["kind"] == "connect"
                && ev["rule"]
                    .as_str()
                    .is_some_and(|r| r.contains("wrong mark"))
        });
        assert_eq!(ev["port"].as_u64(), Some(53));
        drop(e);
    });
}

/// The root of the cgroup v2 hierarchy the tests use (where a process has
/// no cgroup of its own).
fn root_cgroup(tag: &str) -> std::path::PathBuf {
    let probe = Cgroup::new(tag).unwrap();
    probe.path.parent().unwrap().to_path_buf()
}

/// The socket mark egress chose, read from its `dns_redirect` chain, and
/// the chain's listing.
fn egress_mark() -> (u32, String) {
    let rs = std::process::Command::new("nft")
        .args(["list", "chain", "inet", "opensandbox", "dns_redirect"])
        .output()
        .unwrap();
    let rs = String::from_utf8_lossy(&rs.stdout).into_owned();
    let mark = rs
        .split("socket mark ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|m| u32::from_str_radix(m.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| panic!("no mark in {rs}"));
    (mark, rs)
}

/// Sends a datagram to `addr` from a socket owned by egress's socket uid
/// (the default, 4000000000) carrying `mark`: None when it left, else the
/// errno (1: dropped).
fn send_as_egress_uid(mark: u32, addr: &'static str) -> Option<i32> {
    std::thread::spawn(move || {
        use std::os::fd::AsFd;
        // fsuid is per thread; the socket's owner is the creator's fsuid.
        let before = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(4_000_000_000));
        let s = std::net::UdpSocket::bind("0.0.0.0:0");
        nix::unistd::setfsuid(before);
        let s = s.unwrap();
        nix::sys::socket::setsockopt(&s.as_fd(), nix::sys::socket::sockopt::Mark, &mark).unwrap();
        s.send_to(b"x", addr).err().and_then(|e| e.raw_os_error())
    })
    .join()
    .unwrap()
}

#[test]
fn ipv6_dns_is_redirected_too() {
    if skip("ipv6_dns_is_redirected_too") {
        return;
    }
    let cg = Cgroup::new("v6dns").unwrap();
    Netns::new("v6dns").run(move || {
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg("ip -6 addr add 2001:db8:ffff::1/64 dev v0 nodad && ip -6 route add default via 2001:db8:ffff::2 dev v0 \
                  && ip -6 neigh add 2001:db8:ffff::2 lladdr 02:00:00:00:00:02 dev v0 nud permanent")
            .status()
            .unwrap();
        assert!(st.success());
        let w = world();
        let upstream = w.addr.to_string();
        let e = egress_in(
            &[
                ("OPENSANDBOX_EGRESS_MODE", "dns+nft"),
                ("OPENSANDBOX_EGRESS_REDIRECT", "on"),
                ("OPENSANDBOX_EGRESS_DNS_UPSTREAM", &upstream),
                ("OPENSANDBOX_EGRESS_RULES", RULES),
            ],
            &cg.path,
        );
        // A query to an IPv6 resolver address lands on the proxy's [::1]
        // listener (upstream redirected it to [::1] with nothing listening).
        let m = dns_udp("[2001:db8:ffff::53]:53".parse().unwrap(), "allowed.test.", hickory_proto::rr::RecordType::A);
        assert_eq!(addrs(&m), [Ipv4Addr::new(10, 0, 0, 1)]);
        let m = dns_udp("[2001:db8:ffff::53]:53".parse().unwrap(), "denied.test.", hickory_proto::rr::RecordType::A);
        assert_eq!(rcode(&m), ResponseCode::NXDomain);
        drop(e);
    });
}
