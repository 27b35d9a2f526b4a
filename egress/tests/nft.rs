//! nftables over netlink against the real kernel, in a network namespace of
//! the test's own (needs root; CI runs as root).
#![allow(clippy::unwrap_used)]

use std::process::Command;

use egress::nft::{apply_full, ruleset::Options, teardown};
use egress::policy::Policy;
use netns_tests::{can_send, is_root};
use serde_json::Value;

/// Runs `f` on a thread inside a new network namespace (which dies with it).
fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        f()
    })
    .join()
    .unwrap()
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// Loopback, and a veth with a default route and a fixed neighbour, so that
/// datagrams to anywhere leave without waiting for ARP.
fn net_up() {
    sh("ip link set lo up && ip link add v0 type veth peer name v1 && ip link set v0 up && ip link set v1 up \
        && ip addr add 192.0.2.1/24 dev v0 && ip route add default via 192.0.2.2 dev v0 \
        && ip neigh add 192.0.2.2 lladdr 02:00:00:00:00:02 dev v0 nud permanent");
}

fn filter_only() -> Options {
    Options {
        filter: true,
        ..Options::default()
    }
}

fn ruleset() -> Value {
    let out = Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn find<'a>(rs: &'a Value, kind: &str, name: &str) -> Option<&'a Value> {
    rs["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get(kind))
        .find(|o| o["name"] == name)
}

#[test]
fn ruleset_is_applied_atomically_and_enforces() {
    if !is_root() {
        eprintln!("SKIPPED ruleset_is_applied_atomically_and_enforces: needs root for a network namespace and nftables (CI runs as root)");
        return;
    }
    in_netns(|| {
        net_up();
        let policy = Policy::parse(
            br#"{"defaultAction":"deny","egress":[
                {"action":"allow","target":"10.0.0.0/8"},
                {"action":"deny","target":"10.1.0.0/16"},
                {"action":"allow","target":"198.51.100.7"},
                {"action":"allow","target":"allowed.example"}]}"#,
        )
        .unwrap();
        let opts = Options {
            filter: true,
            extra_allow: vec!["203.0.113.53".parse().unwrap()],
            ..Options::default()
        };
        apply_full(&policy, &opts).unwrap();

        let rs = ruleset();
        let chain = find(&rs, "chain", "egress").expect("chain egress");
        assert_eq!(
            (
                chain["table"].as_str(),
                chain["hook"].as_str(),
                chain["policy"].as_str()
            ),
            (Some("opensandbox"), Some("output"), Some("drop"))
        );
        assert_eq!(chain["family"], "inet");
        let allow = find(&rs, "set", "allow_v4").unwrap();
        assert_eq!(allow["type"], "ipv4_addr");
        let elems = allow["elem"].to_string();
        assert!(
            elems.contains("10.0.0.0")
                && elems.contains("198.51.100.7")
                && elems.contains("203.0.113.53"),
            "{elems}"
        );
        let dyn4 = find(&rs, "set", "dyn_allow_v4").unwrap();
        assert!(dyn4["flags"].to_string().contains("timeout"), "{dyn4}");
        for s in ["deny_v4", "allow_v6", "deny_v6", "dyn_allow_v6"] {
            assert!(find(&rs, "set", s).is_some(), "set {s}");
        }

        assert!(can_send("10.2.3.4:9"), "allowed CIDR");
        assert!(!can_send("10.1.2.3:9"), "deny beats allow");
        assert!(!can_send("11.0.0.1:9"), "default deny");
        assert!(can_send("198.51.100.7:9"), "allowed IP");
        assert!(!can_send("198.51.100.8:9"));
        assert!(can_send("203.0.113.53:53"), "resolvers stay reachable");
        assert!(can_send("127.0.0.1:9"), "loopback");
        assert!(!can_send("10.2.3.4:853"), "DNS over TLS is blocked");
        if std::env::var_os("SHOW_RULESET").is_some() {
            let out = Command::new("nft")
                .args(["list", "ruleset"])
                .output()
                .unwrap();
            eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        }

        // A new policy replaces the old one in one transaction.
        let policy = Policy::parse(
            br#"{"defaultAction":"allow","egress":[{"action":"deny","target":"10.1.0.0/16"}]}"#,
        )
        .unwrap();
        apply_full(&policy, &opts).unwrap();
        assert_eq!(
            find(&ruleset(), "chain", "egress").unwrap()["policy"],
            "accept"
        );
        assert!(can_send("11.0.0.1:9"));
        assert!(!can_send("10.1.2.3:9"));

        teardown().unwrap();
        assert!(find(&ruleset(), "chain", "egress").is_none());
        assert!(can_send("10.1.2.3:9"));
    });
}

#[test]
fn a_refused_batch_changes_nothing() {
    if !is_root() {
        eprintln!("SKIPPED a_refused_batch_changes_nothing: needs root (CI runs as root)");
        return;
    }
    in_netns(|| {
        net_up();
        let policy = Policy::parse(
            br#"{"defaultAction":"deny","egress":[{"action":"allow","target":"10.0.0.0/8"}]}"#,
        )
        .unwrap();
        apply_full(&policy, &filter_only()).unwrap();
        // A batch with an invalid message (a rule in a chain that does not
        // exist) is refused whole.
        use egress::nft::wire::{attr, family, msg, Attrs, Batch, NLM_F_CREATE};
        let mut b = Batch::new(50);
        let mut t = Attrs::default();
        t.str(attr::TABLE_NAME, "opensandbox");
        b.add(msg::DELTABLE, 0, family::INET, &t, "table (delete)");
        let mut r = Attrs::default();
        r.str(attr::RULE_TABLE, "opensandbox")
            .str(attr::RULE_CHAIN, "no_such_chain");
        b.add(
            msg::NEWRULE,
            NLM_F_CREATE,
            family::INET,
            &r,
            "rule in a missing chain",
        );
        let (bytes, _, what) = b.finish();
        let err = egress::nft::socket::Socket::open()
            .unwrap()
            .apply(&bytes, &what)
            .unwrap_err();
        assert!(err.to_string().contains("rule in a missing chain"), "{err}");
        // The table is still there and still enforcing.
        assert!(find(&ruleset(), "chain", "egress").is_some());
        assert!(!can_send("11.0.0.1:9"));
        assert!(can_send("10.0.0.1:9"));
    });
}

#[test]
fn learned_addresses_are_kept_or_forgotten_on_update() {
    if !is_root() {
        eprintln!("SKIPPED learned_addresses_are_kept_or_forgotten_on_update: needs root (CI runs as root)");
        return;
    }
    use egress::nft::{Firewall, Nft};
    use egress::policy::matcher::Matcher;
    in_netns(|| {
        net_up();
        let p = |s: &str| Matcher::new(Policy::parse(s.as_bytes()).unwrap());
        let fw = Nft::new(filter_only()).unwrap();
        fw.apply(&p(r#"{"egress":[{"action":"allow","target":"a.test"},{"action":"allow","target":"b.test"}]}"#)).unwrap();
        fw.learn("a.test.", &[("10.0.0.1".parse().unwrap(), 60)])
            .unwrap();
        fw.learn("b.test.", &[("10.0.0.2".parse().unwrap(), 60)])
            .unwrap();
        assert!(can_send("10.0.0.1:9") && can_send("10.0.0.2:9"));
        fw.apply(&p(r#"{"egress":[{"action":"allow","target":"a.test"}]}"#))
            .unwrap();
        let set = Command::new("nft")
            .args(["list", "set", "inet", "opensandbox", "dyn_allow_v4"])
            .output()
            .unwrap();
        let set = String::from_utf8_lossy(&set.stdout).into_owned();
        assert!(
            set.contains("10.0.0.1") && !set.contains("10.0.0.2"),
            "{set}"
        );
        assert!(can_send("10.0.0.1:9"));
        assert!(!can_send("10.0.0.2:9"));
    });
}

#[test]
fn thousands_of_separate_addresses_fit_in_one_batch() {
    if !is_root() {
        eprintln!("SKIPPED thousands_of_separate_addresses_fit_in_one_batch: needs root (CI runs as root)");
        return;
    }
    in_netns(|| {
        net_up();
        // Separate /32s and /128s: one range each, far more than one netlink
        // attribute (64 KiB) holds.
        let mut rules: Vec<String> = (0..6000u32)
            .map(|i| {
                format!(
                    r#"{{"action":"allow","target":"10.{}.{}.1"}}"#,
                    i / 250,
                    i % 250
                )
            })
            .collect();
        rules.extend(
            (0..2000u32).map(|i| format!(r#"{{"action":"deny","target":"2001:db8::{i:x}:1"}}"#)),
        );
        let body = format!(
            r#"{{"defaultAction":"deny","egress":[{}]}}"#,
            rules.join(",")
        );
        let policy = Policy::parse(body.as_bytes()).unwrap();
        apply_full(&policy, &filter_only()).unwrap();
        let rs = ruleset();
        assert_eq!(
            find(&rs, "set", "allow_v4").unwrap()["elem"]
                .as_array()
                .unwrap()
                .len(),
            6000
        );
        assert_eq!(
            find(&rs, "set", "deny_v6").unwrap()["elem"]
                .as_array()
                .unwrap()
                .len(),
            2000
        );
        assert!(can_send("10.23.249.1:9"));
        assert!(!can_send("10.23.249.2:9"));
    });
}

#[test]
fn ipv6_sets_enforce() {
    if !is_root() {
        eprintln!("SKIPPED ipv6_sets_enforce: needs root (CI runs as root)");
        return;
    }
    in_netns(|| {
        net_up();
        sh("ip -6 addr add 2001:db8:ffff::1/64 dev v0 nodad && ip -6 route add default via 2001:db8:ffff::2 dev v0 \
            && ip -6 neigh add 2001:db8:ffff::2 lladdr 02:00:00:00:00:02 dev v0 nud permanent");
        let policy = Policy::parse(
            br#"{"defaultAction":"deny","egress":[
                {"action":"allow","target":"2001:db8:1::/48"},
                {"action":"deny","target":"2001:db8:1:2::/64"},
                {"action":"allow","target":"2001:db8:9::9"}]}"#,
        )
        .unwrap();
        apply_full(&policy, &filter_only()).unwrap();
        assert!(can_send("[2001:db8:1:1::1]:9"));
        assert!(!can_send("[2001:db8:1:2::1]:9"), "deny beats allow");
        assert!(can_send("[2001:db8:9::9]:9"));
        assert!(!can_send("[2001:db8:9::8]:9"));
        assert!(!can_send("[2001:db8:2::1]:9"), "default deny");
        // Learned IPv6 answers open exactly their address.
        use egress::nft::{Firewall, Nft};
        use egress::policy::matcher::Matcher;
        let fw = Nft::new(filter_only()).unwrap();
        fw.apply(&Matcher::new(policy)).unwrap();
        fw.learn("v6.test.", &[("2001:db8:5::5".parse().unwrap(), 60)])
            .unwrap();
        assert!(can_send("[2001:db8:5::5]:443"));
        assert!(!can_send("[2001:db8:5::6]:443"));
    });
}

/// The elements of the four static sets as the kernel lists them.
fn static_sets() -> Vec<(String, Value)> {
    let rs = ruleset();
    ["allow_v4", "deny_v4", "allow_v6", "deny_v6"]
        .iter()
        .map(|s| {
            (
                (*s).to_string(),
                find(&rs, "set", s)
                    .expect(s)
                    .get("elem")
                    .cloned()
                    .unwrap_or(Value::Null),
            )
        })
        .collect()
}

#[test]
fn incremental_updates_leave_what_a_full_install_leaves() {
    if !is_root() {
        eprintln!("SKIPPED incremental_updates_leave_what_a_full_install_leaves: needs root (CI runs as root)");
        return;
    }
    use egress::nft::{Firewall, Nft};
    use egress::policy::matcher::Matcher;
    use egress::policy::Action;
    in_netns(|| {
        net_up();
        sh("ip -6 addr add 2001:db8:ffff::1/64 dev v0 nodad && ip -6 route add default via 2001:db8:ffff::2 dev v0 \
            && ip -6 neigh add 2001:db8:ffff::2 lladdr 02:00:00:00:00:02 dev v0 nud permanent");
        let fw = Nft::new(filter_only()).unwrap();
        // xorshift: the same sequence every run.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        // Overlapping, nested and adjacent networks in a small space, so
        // that ranges merge, split and change bounds from step to step.
        let target = |rnd: &mut dyn FnMut(u64) -> u64| -> String {
            if rnd(5) == 0 {
                format!("2001:db8:{:x}::/{}", rnd(4), 46 + rnd(4) * 8)
            } else {
                let len = 22 + rnd(11);
                let a = (10u32 << 24) | (u32::try_from(rnd(1 << 12)).unwrap() << 8);
                let net = a & (u32::MAX << (32 - len));
                format!("{}/{len}", std::net::Ipv4Addr::from(net))
            }
        };
        let mut rules: Vec<(bool, String)> = Vec::new();
        let mut default_allow = false;
        for step in 0..60 {
            match rnd(10) {
                0 => default_allow = !default_allow,
                1 => {
                    // A whole new policy.
                    rules = (0..rnd(40))
                        .map(|_| (rnd(3) == 0, target(&mut rnd)))
                        .collect();
                }
                2..=4 if !rules.is_empty() => {
                    for _ in 0..=rnd(3) {
                        if !rules.is_empty() {
                            let i = usize::try_from(rnd(rules.len() as u64)).unwrap();
                            rules.remove(i);
                        }
                    }
                }
                _ => {
                    for _ in 0..=rnd(4) {
                        let t = target(&mut rnd);
                        rules.retain(|(_, x)| *x != t);
                        rules.insert(0, (rnd(3) == 0, t));
                    }
                }
            }
            let body = format!(
                r#"{{"defaultAction":"{}","egress":[{}]}}"#,
                if default_allow { "allow" } else { "deny" },
                rules
                    .iter()
                    .map(|(deny, t)| format!(
                        r#"{{"action":"{}","target":"{t}"}}"#,
                        if *deny { "deny" } else { "allow" }
                    ))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let policy = Policy::parse(body.as_bytes()).unwrap();
            let m = Matcher::new(policy.clone());
            fw.apply(&m).unwrap();
            let incremental = static_sets();
            assert_eq!(
                find(&ruleset(), "chain", "egress").unwrap()["policy"],
                if default_allow { "accept" } else { "drop" },
                "step {step}"
            );
            // The kernel decides as the policy says.
            for _ in 0..4 {
                let ip =
                    std::net::Ipv4Addr::from((10u32 << 24) | u32::try_from(rnd(1 << 20)).unwrap());
                let want = m.decide_ip(ip.into()).action == Action::Allow;
                assert_eq!(
                    can_send(&format!("{ip}:9")),
                    want,
                    "step {step}: {ip} in {body}"
                );
            }
            let ip6 = format!("2001:db8:{:x}:{:x}::1", rnd(4), rnd(1 << 16));
            let want = m.decide_ip(ip6.parse().unwrap()).action == Action::Allow;
            assert_eq!(
                can_send(&format!("[{ip6}]:9")),
                want,
                "step {step}: {ip6} in {body}"
            );
            // And holds exactly what installing the policy from scratch holds.
            apply_full(&policy, &filter_only()).unwrap();
            assert_eq!(incremental, static_sets(), "step {step}: {body}");
        }
    });
}

#[test]
fn an_update_repairs_sets_changed_behind_its_back() {
    if !is_root() {
        eprintln!(
            "SKIPPED an_update_repairs_sets_changed_behind_its_back: needs root (CI runs as root)"
        );
        return;
    }
    use egress::nft::{Firewall, Nft};
    use egress::policy::matcher::Matcher;
    in_netns(|| {
        net_up();
        // Ranges that stay, so that the update is a small difference, not a refill.
        let stay: String = (1..=20)
            .map(|i| format!(r#",{{"action":"allow","target":"100.64.0.{i}"}}"#))
            .collect();
        let p = |s: &str| Matcher::new(Policy::parse(s.replace("STAY", &stay).as_bytes()).unwrap());
        let fw = Nft::new(filter_only()).unwrap();
        fw.apply(&p(
            r#"{"egress":[{"action":"allow","target":"10.0.0.0/8"},{"action":"allow","target":"a.test"}STAY]}"#,
        ))
        .unwrap();
        fw.learn("a.test.", &[("198.51.100.1".parse().unwrap(), 60)])
            .unwrap();
        // Someone else edits the set: removes egress's range, adds one.
        sh(
            "nft delete element inet opensandbox allow_v4 '{ 10.0.0.0/8 }' \
            && nft add element inet opensandbox allow_v4 '{ 203.0.113.0/24 }'",
        );
        assert!(can_send("203.0.113.1:9"));
        // Removing 10/8 incrementally fails (it is gone): the sets are refilled.
        let policy = r#"{"egress":[{"action":"allow","target":"11.0.0.0/8"},{"action":"allow","target":"a.test"}STAY]}"#;
        fw.apply(&p(policy)).unwrap();
        assert!(can_send("11.1.1.1:9"));
        assert!(!can_send("10.1.1.1:9"));
        assert!(!can_send("203.0.113.1:9"), "the stranger's range is gone");
        assert!(can_send("198.51.100.1:9"), "learned addresses are kept");
        let repaired = static_sets();
        assert!(can_send("100.64.0.20:9"));
        apply_full(
            &Policy::parse(policy.replace("STAY", &stay).as_bytes()).unwrap(),
            &filter_only(),
        )
        .unwrap();
        assert_eq!(repaired, static_sets());
    });
}
