//! The enforcement ruleset as one nf_tables batch, in upstream's layout so
//! that operators' tooling finds it: table `inet opensandbox`, chain
//! `egress` on the output hook, interval sets `allow_v4`, `deny_v4`,
//! `allow_v6`, `deny_v6` for IP/CIDR rules and timeout sets
//! `dyn_allow_v4`/`dyn_allow_v6` for addresses learned from allowed DNS
//! answers. Deny sets are checked before allow sets.

use std::net::IpAddr;

use super::expr::{Base, Exprs, MetaKey, Verdict};
use super::own::Own;
pub use super::ranges::Installed;
use super::ranges::{addr_bits, diff, ranges, Range, STATIC_SETS};
use super::wire::{attr, family, msg, set_flags, Attrs, Batch, ELEM_INTERVAL_END, NLM_F_CREATE};
use crate::policy::Action;

/// Table name.
pub const TABLE: &str = "opensandbox";
/// Chain name.
pub const CHAIN: &str = "egress";
/// Default lifetime of a learned address (upstream: 360 s).
pub const DYN_TIMEOUT_MS: u64 = 360_000;
const NLM_F_APPEND: u16 = 0x800;
/// `NFPROTO_IPV4` / `NFPROTO_IPV6` as `meta nfproto` sees them.
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// ct state bits: established | related.
const CT_ESTABLISHED_RELATED: u32 = 0b110;

fn key_bytes(v: u128, bits: u8) -> Vec<u8> {
    if bits == 32 {
        u32::try_from(v).unwrap_or(u32::MAX).to_be_bytes().to_vec()
    } else {
        v.to_be_bytes().to_vec()
    }
}

/// Key type and length of an address set: `ipv4_addr` or `ipv6_addr`.
fn addr_key(v4: bool) -> (u32, u32) {
    if v4 {
        (7, 4)
    } else {
        (8, 16)
    }
}

fn add_set(
    b: &mut Batch,
    name: &str,
    id: u32,
    (key_type, key_len): (u32, u32),
    flags: u32,
    timeout_ms: Option<u64>,
) {
    let mut a = Attrs::default();
    a.str(attr::SET_TABLE, TABLE)
        .str(attr::SET_NAME, name)
        .u32(attr::SET_FLAGS, flags)
        .u32(attr::SET_KEY_TYPE, key_type)
        .u32(attr::SET_KEY_LEN, key_len)
        .u32(attr::SET_ID, id);
    if let Some(t) = timeout_ms {
        a.u64(attr::SET_TIMEOUT, t);
    }
    b.add(
        msg::NEWSET,
        NLM_F_CREATE,
        family::INET,
        &a,
        format!("set {name}"),
    );
}

/// Elements per set-element message: a netlink attribute holds at most
/// 64 KiB, and an IPv6 range takes about 80 bytes.
pub const ELEMENTS_PER_MESSAGE: usize = 500;

fn add_intervals(b: &mut Batch, set: &str, ranges: &[Range], bits: u8) {
    interval_messages(b, msg::NEWSETELEM, set, ranges, bits);
}

/// NEWSETELEM or DELSETELEM messages for `ranges` (a range is its start
/// element and, unless it runs to the top, its end element).
fn interval_messages(b: &mut Batch, ty: u16, set: &str, ranges: &[Range], bits: u8) {
    // Chunks never split a range's start from its end.
    for chunk in ranges.chunks(ELEMENTS_PER_MESSAGE) {
        interval_chunk(b, ty, set, chunk, bits);
    }
}

fn interval_chunk(b: &mut Batch, ty: u16, set: &str, ranges: &[Range], bits: u8) {
    let mut a = Attrs::default();
    a.str(attr::SET_ELEM_LIST_TABLE, TABLE)
        .str(attr::SET_ELEM_LIST_SET, set)
        .nest(attr::SET_ELEM_LIST_ELEMENTS, |list| {
            for (start, end) in ranges {
                list.nest(attr::LIST_ELEM, |e| {
                    e.nest(attr::SET_ELEM_KEY, |k| {
                        k.bytes(attr::DATA_VALUE, &key_bytes(*start, bits));
                    });
                });
                if let Some(end) = end {
                    list.nest(attr::LIST_ELEM, |e| {
                        e.nest(attr::SET_ELEM_KEY, |k| {
                            k.bytes(attr::DATA_VALUE, &key_bytes(*end, bits));
                        })
                        .u32(attr::SET_ELEM_FLAGS, ELEM_INTERVAL_END);
                    });
                }
            }
        });
    let (flags, verb) = if ty == msg::NEWSETELEM {
        (NLM_F_CREATE, "add")
    } else {
        (0, "remove")
    };
    b.add(
        ty,
        flags,
        family::INET,
        &a,
        format!("{verb} {} ranges of {set}", ranges.len()),
    );
}

fn add_rule(b: &mut Batch, what: &str, build: impl FnOnce(&mut Exprs)) {
    add_rule_to(b, CHAIN, what, build);
}

fn add_rule_to(b: &mut Batch, chain: &str, what: &str, build: impl FnOnce(&mut Exprs)) {
    let mut x = Exprs::default();
    build(&mut x);
    let mut a = Attrs::default();
    a.str(attr::RULE_TABLE, TABLE)
        .str(attr::RULE_CHAIN, chain)
        .nest(attr::RULE_EXPRESSIONS, |l| {
            l.bytes_raw(x.attrs().as_slice());
        });
    b.add(
        msg::NEWRULE,
        NLM_F_CREATE | NLM_F_APPEND,
        family::INET,
        &a,
        format!("rule {what}"),
    );
}

/// Options of the ruleset.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Install the filter chain and sets (`dns+nft`).
    pub filter: bool,
    /// Redirect all DNS (UDP and TCP port 53) to this local port.
    pub redirect_port: Option<u16>,
    /// Addresses always allowed (the resolvers egress forwards to).
    pub extra_allow: Vec<IpAddr>,
    /// egress's own traffic, exempt from the redirect and the filter: its
    /// cgroup v2, which a process in the sandbox cannot forge, or (without
    /// one) a random socket mark, guessable by a process allowed to set marks
    /// (upstream's exemption was the fixed mark 0x1).
    pub own: Option<Own>,
    /// nflog group the drop rules log refused packets to.
    pub log_group: Option<u16>,
    /// Port 443 blocking against DNS over HTTPS (upstream's
    /// `OPENSANDBOX_EGRESS_BLOCK_DOH_443`), over TCP and UDP (QUIC).
    pub doh: DohBlock,
    /// Resolvers the sandbox may query directly (upstream's
    /// `OPENSANDBOX_EGRESS_NAMESERVER_EXEMPT`): not redirected, not guarded.
    /// A deliberate DNS-policy bypass for those addresses.
    pub exempt: Vec<IpAddr>,
}

/// Matches packets of egress's own sockets.
fn is_own(x: &mut Exprs, own: Own) -> &mut Exprs {
    match own {
        Own::Cgroup { level, id } => x.socket_cgroup(level).cmp(true, &id.to_ne_bytes()),
        Own::Mark { mark, uid } => {
            x.socket_mark().cmp(true, &mark.to_ne_bytes());
            match uid {
                Some(uid) => x.meta(MetaKey::SkUid).cmp(true, &uid.to_ne_bytes()),
                None => x,
            }
        }
    }
}

/// Matches a packet's destination address `ip`.
fn daddr_is(x: &mut Exprs, ip: IpAddr) -> &mut Exprs {
    match ip {
        IpAddr::V4(a) => x
            .meta(MetaKey::NfProto)
            .cmp(true, &[NFPROTO_IPV4])
            .payload(Base::Network, 16, 4)
            .cmp(true, &a.octets()),
        IpAddr::V6(a) => x
            .meta(MetaKey::NfProto)
            .cmp(true, &[NFPROTO_IPV6])
            .payload(Base::Network, 24, 16)
            .cmp(true, &a.octets()),
    }
}

/// What port 443 traffic is dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DohBlock {
    /// None.
    #[default]
    Off,
    /// All of it (upstream's behaviour without a blocklist).
    All,
    /// To these networks (address, prefix length).
    Listed(Vec<(IpAddr, u8)>),
}

/// Name of the DNS redirect chain.
pub const REDIRECT_CHAIN: &str = "dns_redirect";

const SETS: [(&str, bool, u32, Option<u64>); 8] = [
    ("allow_v4", true, set_flags::INTERVAL, None),
    ("deny_v4", true, set_flags::INTERVAL, None),
    ("allow_v6", false, set_flags::INTERVAL, None),
    ("deny_v6", false, set_flags::INTERVAL, None),
    (
        "dyn_allow_v4",
        true,
        set_flags::TIMEOUT,
        Some(DYN_TIMEOUT_MS),
    ),
    (
        "dyn_allow_v6",
        false,
        set_flags::TIMEOUT,
        Some(DYN_TIMEOUT_MS),
    ),
    (
        "dyn_deny_v4",
        true,
        set_flags::TIMEOUT,
        Some(DYN_TIMEOUT_MS),
    ),
    (
        "dyn_deny_v6",
        false,
        set_flags::TIMEOUT,
        Some(DYN_TIMEOUT_MS),
    ),
];

fn table_attrs() -> Attrs {
    let mut t = Attrs::default();
    t.str(attr::TABLE_NAME, TABLE);
    t
}

fn doh_sets(b: &mut Batch, opts: &Options) {
    let DohBlock::Listed(nets) = &opts.doh else {
        return;
    };
    for (id, (name, v4)) in (20..).zip([("doh_block_v4", true), ("doh_block_v6", false)]) {
        add_set(b, name, id, addr_key(v4), set_flags::INTERVAL, None);
        let bits = if v4 { 32 } else { 128 };
        let mine = nets
            .iter()
            .filter(|(ip, _)| ip.is_ipv4() == v4)
            .map(|(ip, len)| (addr_bits(*ip).0, *len));
        add_intervals(b, name, &ranges(mine.collect(), bits), bits);
    }
}

fn doh_rules(b: &mut Batch, opts: &Options) {
    for (proto, pname) in [(6u8, "tcp"), (17u8, "udp")] {
        match &opts.doh {
            DohBlock::Off => {}
            DohBlock::All => add_rule(b, &format!("{pname} dport 443 drop"), |x| {
                x.meta(MetaKey::L4Proto)
                    .cmp(true, &[proto])
                    .payload(Base::Transport, 2, 2)
                    .cmp(true, &443u16.to_be_bytes());
                logged(x, opts, "doh").verdict(Verdict::Drop);
            }),
            DohBlock::Listed(_) => {
                for (nfproto, offset, len, set) in [
                    (NFPROTO_IPV4, 16, 4, "doh_block_v4"),
                    (NFPROTO_IPV6, 24, 16, "doh_block_v6"),
                ] {
                    add_rule(b, &format!("daddr @{set} {pname} dport 443 drop"), |x| {
                        x.meta(MetaKey::NfProto)
                            .cmp(true, &[nfproto])
                            .payload(Base::Network, offset, len)
                            .lookup(set)
                            .meta(MetaKey::L4Proto)
                            .cmp(true, &[proto])
                            .payload(Base::Transport, 2, 2)
                            .cmp(true, &443u16.to_be_bytes());
                        logged(x, opts, "doh").verdict(Verdict::Drop);
                    });
                }
            }
        }
    }
}

fn static_elements(b: &mut Batch, inst: &Installed) {
    for ((set, _, v4), r) in STATIC_SETS.iter().zip(&inst.sets) {
        add_intervals(b, set, r, if *v4 { 32 } else { 128 });
    }
}

/// Removes every element of `set`.
fn flush_set(b: &mut Batch, set: &str) {
    let mut f = Attrs::default();
    f.str(attr::SET_ELEM_LIST_TABLE, TABLE)
        .str(attr::SET_ELEM_LIST_SET, set);
    b.add(msg::DELSETELEM, 0, family::INET, &f, format!("flush {set}"));
}

/// Changes the static sets from `old` to `new`: the ranges that went, then
/// the ranges that came, in the same transaction (a range whose bounds
/// changed is one of each). When most of a set changes, or what the kernel
/// holds is not known (`old` None), a flush and a refill.
fn static_changes(b: &mut Batch, old: Option<&Installed>, new: &Installed) {
    for (i, ((set, _, v4), n)) in STATIC_SETS.iter().zip(&new.sets).enumerate() {
        let bits = if *v4 { 32 } else { 128 };
        match old.map(|o| diff(&o.sets[i], n)) {
            Some((gone, added)) if gone.len() + added.len() <= n.len() => {
                interval_messages(b, msg::DELSETELEM, set, &gone, bits);
                add_intervals(b, set, &added, bits);
            }
            _ => {
                flush_set(b, set);
                add_intervals(b, set, n, bits);
            }
        }
    }
}

fn chain_and_rules(b: &mut Batch, default_action: Action, opts: &Options, flush: bool) {
    let mut c = Attrs::default();
    c.str(attr::CHAIN_TABLE, TABLE)
        .str(attr::CHAIN_NAME, CHAIN)
        .nest(attr::CHAIN_HOOK, |h| {
            h.u32(attr::HOOK_HOOKNUM, 3).i32(attr::HOOK_PRIORITY, 0); // NF_INET_LOCAL_OUT
        })
        .u32(
            attr::CHAIN_POLICY,
            u32::from(default_action == Action::Allow),
        )
        .str(attr::CHAIN_TYPE, "filter");
    b.add(
        msg::NEWCHAIN,
        NLM_F_CREATE,
        family::INET,
        &c,
        "chain egress",
    );
    if flush {
        let mut f = Attrs::default();
        f.str(attr::RULE_TABLE, TABLE).str(attr::RULE_CHAIN, CHAIN);
        b.add(msg::DELRULE, 0, family::INET, &f, "flush chain egress");
    }
    add_rule(b, "ct state established,related accept", |x| {
        x.ct_state_any(CT_ESTABLISHED_RELATED)
            .verdict(Verdict::Accept);
    });
    if let Some(own) = opts.own {
        add_rule(b, "egress's own traffic accept", |x| {
            is_own(x, own).verdict(Verdict::Accept);
        });
    }
    add_rule(b, "oifname lo accept", |x| {
        x.meta(MetaKey::OifName)
            .cmp(true, b"lo\0")
            .verdict(Verdict::Accept);
    });
    // IPv6 neighbour discovery (router solicitation, neighbour solicitation
    // and advertisement): without it no IPv6 packet leaves at all (IPv4's
    // ARP is not in this hook). These never cross a router (hop limit 255),
    // so they open nothing beyond the link. Found by the IPv6 netns test.
    for (t, name) in [
        (133u8, "nd-router-solicit"),
        (135, "nd-neighbor-solicit"),
        (136, "nd-neighbor-advert"),
    ] {
        add_rule(b, &format!("icmpv6 type {name} accept"), |x| {
            x.meta(MetaKey::NfProto)
                .cmp(true, &[NFPROTO_IPV6])
                .meta(MetaKey::L4Proto)
                .cmp(true, &[58])
                .payload(Base::Transport, 0, 1)
                .cmp(true, &[t])
                .verdict(Verdict::Accept);
        });
    }
    // An IPv6 query redirected to the proxy at [::1] still carries its
    // original output interface here; ::1 never leaves the host.
    add_rule(b, "ip6 daddr ::1 accept", |x| {
        daddr_is(x, IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)).verdict(Verdict::Accept);
    });
    for (proto, name) in [(6u8, "tcp"), (17u8, "udp")] {
        add_rule(b, &format!("{name} dport 853 drop"), |x| {
            x.meta(MetaKey::L4Proto)
                .cmp(true, &[proto])
                .payload(Base::Transport, 2, 2)
                .cmp(true, &853u16.to_be_bytes());
            logged(x, opts, "dot").verdict(Verdict::Drop);
        });
    }
    doh_rules(b, opts);
    for (set, verdict) in [
        ("deny", Verdict::Drop),
        ("dyn_allow", Verdict::Accept),
        // Addresses of denied names (a default-allow policy must not let a
        // client that resolved a denied name elsewhere, say over DNS over
        // HTTPS, connect to it); after dyn_allow, so that an address an
        // allowed name also uses stays reachable.
        ("dyn_deny", Verdict::Drop),
        ("allow", Verdict::Accept),
    ] {
        for (nfproto, offset, len, suffix) in
            [(NFPROTO_IPV4, 16, 4, "v4"), (NFPROTO_IPV6, 24, 16, "v6")]
        {
            let name = format!("{set}_{suffix}");
            add_rule(b, &format!("daddr @{name}"), |x| {
                x.meta(MetaKey::NfProto)
                    .cmp(true, &[nfproto])
                    .payload(Base::Network, offset, len)
                    .lookup(&name);
                if verdict == Verdict::Drop {
                    // "deny" (a rule's address) or "dyn_deny" (a denied name's).
                    logged(x, opts, set);
                }
                x.verdict(verdict);
            });
        }
    }
    if default_action == Action::Deny && opts.log_group.is_some() {
        // What reaches the end of the chain is dropped by its policy.
        add_rule(b, "log default", |x| {
            logged(x, opts, "default");
        });
    }
}

/// Adds the nflog statement when refusals are logged.
fn logged<'a>(x: &'a mut Exprs, opts: &Options, prefix: &str) -> &'a mut Exprs {
    if let Some(g) = opts.log_group {
        x.log(g, prefix);
    }
    x
}

/// A batch and what each of its messages does.
pub type Encoded = (Vec<u8>, Vec<(u32, String)>);

fn done(b: Batch) -> Encoded {
    let (bytes, _, what) = b.finish();
    (bytes, what)
}

/// The batch that (re)creates the whole ruleset for a policy (`inst`, see
/// [`Installed::of`]), atomically (learned addresses start empty).
pub fn full(inst: &Installed, opts: &Options, seq: u32) -> Encoded {
    let mut b = Batch::new(seq);
    // add + delete + add: replaces the table whether or not it exists, in one transaction.
    delete_table(&mut b);
    b.add(
        msg::NEWTABLE,
        NLM_F_CREATE,
        family::INET,
        &table_attrs(),
        "table",
    );
    if opts.filter {
        for (id, (name, v4, flags, timeout)) in (1..).zip(SETS) {
            add_set(&mut b, name, id, addr_key(v4), flags, timeout);
        }
        doh_sets(&mut b, opts);
        static_elements(&mut b, inst);
        chain_and_rules(&mut b, inst.default_action, opts, false);
    }
    if let Some(port) = opts.redirect_port {
        redirect_chain(&mut b, opts, port);
    }
    if opts.filter || opts.redirect_port.is_some() {
        own_guard(&mut b, opts);
    }
    done(b)
}

/// Conntrack zone of egress's own connections.
pub const OWN_ZONE: u16 = 0x5e9;

/// The set that holds an element while egress's socket uid is locked out.
pub const OWN_TRIPPED: &str = "own_tripped";
/// How long egress's socket uid is locked out after a wrong mark; every
/// further wrong mark starts the time again.
pub const OWN_LOCKOUT_MS: u64 = 10_000;
/// nflog prefix of a wrong mark on egress's socket uid.
pub const FORGED_PREFIX: &str = "forged_mark";

/// The tripwire of the mark fallback (no cgroup v2 of its own). egress
/// marks every socket its uid owns, so a socket of that uid with another
/// mark is a sandbox process searching for the mark: the packet is dropped
/// and, for [`OWN_LOCKOUT_MS`], every packet of that uid is dropped too,
/// the right mark included. A search then gets one guess per lockout
/// (2^32 marks: centuries) instead of millions per second; the price is
/// that egress's own queries fail while a search goes on. Runs before
/// every chain that trusts the mark (priority -310).
fn own_guard(b: &mut Batch, opts: &Options) {
    let Some(Own::Mark {
        mark,
        uid: Some(uid),
    }) = opts.own
    else {
        return;
    };
    add_set(
        b,
        OWN_TRIPPED,
        30,
        (19, 4), // mark
        set_flags::TIMEOUT | set_flags::EVAL,
        Some(OWN_LOCKOUT_MS),
    );
    base_chain(b, "own_guard", 3, -310, "filter");
    add_rule_to(
        b,
        "own_guard",
        "egress's uid with a wrong mark: lock out and drop",
        |x| {
            x.meta(MetaKey::SkUid)
                .cmp(true, &uid.to_ne_bytes())
                .socket_mark()
                .cmp(false, &mark.to_ne_bytes())
                .load(&1u32.to_be_bytes())
                .set_update(OWN_TRIPPED);
            logged(x, opts, FORGED_PREFIX).verdict(Verdict::Drop);
        },
    );
    add_rule_to(b, "own_guard", "egress's uid while locked out: drop", |x| {
        x.meta(MetaKey::SkUid)
            .cmp(true, &uid.to_ne_bytes())
            .load(&1u32.to_be_bytes())
            .lookup(OWN_TRIPPED)
            .verdict(Verdict::Drop);
    });
}

fn base_chain(b: &mut Batch, name: &str, hook: u32, priority: i32, kind: &str) {
    let mut c = Attrs::default();
    c.str(attr::CHAIN_TABLE, TABLE)
        .str(attr::CHAIN_NAME, name)
        .nest(attr::CHAIN_HOOK, |h| {
            h.u32(attr::HOOK_HOOKNUM, hook)
                .i32(attr::HOOK_PRIORITY, priority);
        })
        .u32(attr::CHAIN_POLICY, 1)
        .str(attr::CHAIN_TYPE, kind);
    b.add(
        msg::NEWCHAIN,
        NLM_F_CREATE,
        family::INET,
        &c,
        format!("chain {name}"),
    );
}

/// egress's own connections (both directions) live in their own conntrack
/// zone, so that no connection of the sandbox can ever share (and so
/// inherit the NAT decision of) one of egress's: without this, a query sent
/// from a source port that egress had just used to reach the resolver
/// matched egress's un-redirected conntrack entry and reached the resolver
/// directly (found by the flood test in netns-tests).
///
/// Only egress's queries to resolvers (to port 53 out, from port 53 in) are
/// zoned: the proxy's own answers to the sandbox belong to the sandbox's
/// (redirected) connections and must stay in their zone.
fn zone_chains(b: &mut Batch, own: Own) {
    // (chain, hook, port offset): output matches the destination port,
    // prerouting the source port.
    for (name, hook, offset) in [("own_zone_out", 3, 2), ("own_zone_in", 0, 0)] {
        base_chain(b, name, hook, -300, "filter"); // before conntrack (-200)
        for proto in [17u8, 6u8] {
            add_rule_to(
                b,
                name,
                "egress's DNS to resolvers: own conntrack zone",
                |x| {
                    x.meta(MetaKey::L4Proto)
                        .cmp(true, &[proto])
                        .payload(Base::Transport, offset, 2)
                        .cmp(true, &53u16.to_be_bytes());
                    // Incoming packets have no socket owner yet: the mark alone.
                    let own = match own {
                        Own::Mark { mark, .. } if hook == 0 => Own::Mark { mark, uid: None },
                        o => o,
                    };
                    is_own(x, own).ct_zone(OWN_ZONE);
                },
            );
        }
    }
}

/// After the redirect, a packet of the sandbox still addressed to port 53 is
/// trying to get around the proxy: it is dropped (in both modes).
fn dns_guard(b: &mut Batch, opts: &Options) {
    base_chain(b, "dns_guard", 3, 10, "filter");
    if let Some(own) = opts.own {
        add_rule_to(b, "dns_guard", "egress's own traffic accept", |x| {
            is_own(x, own).verdict(Verdict::Accept);
        });
    }
    for ip in &opts.exempt {
        add_rule_to(
            b,
            "dns_guard",
            &format!("exempt resolver {ip} accept"),
            |x| {
                daddr_is(x, *ip).verdict(Verdict::Accept);
            },
        );
    }
    for (proto, name) in [(17u8, "udp"), (6u8, "tcp")] {
        add_rule_to(b, "dns_guard", &format!("{name} dport 53 drop"), |x| {
            x.meta(MetaKey::L4Proto)
                .cmp(true, &[proto])
                .payload(Base::Transport, 2, 2)
                .cmp(true, &53u16.to_be_bytes());
            logged(x, opts, "dns_guard").verdict(Verdict::Drop);
        });
    }
}

/// `type nat hook output priority -100`: every DNS query (UDP and TCP port
/// 53, any destination, both families) goes to the local proxy, except
/// egress's own.
fn redirect_chain(b: &mut Batch, opts: &Options, port: u16) {
    if let Some(own) = opts.own {
        zone_chains(b, own);
    }
    dns_guard(b, opts);
    let mut c = Attrs::default();
    c.str(attr::CHAIN_TABLE, TABLE)
        .str(attr::CHAIN_NAME, REDIRECT_CHAIN)
        .nest(attr::CHAIN_HOOK, |h| {
            h.u32(attr::HOOK_HOOKNUM, 3).i32(attr::HOOK_PRIORITY, -100);
        })
        .u32(attr::CHAIN_POLICY, 1)
        .str(attr::CHAIN_TYPE, "nat");
    b.add(
        msg::NEWCHAIN,
        NLM_F_CREATE,
        family::INET,
        &c,
        "chain dns_redirect",
    );
    if let Some(own) = opts.own {
        add_rule_to(b, REDIRECT_CHAIN, "egress's own traffic return", |x| {
            is_own(x, own).ret();
        });
    }
    for ip in &opts.exempt {
        add_rule_to(
            b,
            REDIRECT_CHAIN,
            &format!("exempt resolver {ip} return"),
            |x| {
                daddr_is(x, *ip).ret();
            },
        );
    }
    for (proto, name) in [(17u8, "udp"), (6u8, "tcp")] {
        add_rule_to(
            b,
            REDIRECT_CHAIN,
            &format!("{name} dport 53 redirect"),
            |x| {
                x.meta(MetaKey::L4Proto)
                    .cmp(true, &[proto])
                    .payload(Base::Transport, 2, 2)
                    .cmp(true, &53u16.to_be_bytes())
                    .load(&port.to_be_bytes())
                    .redirect();
            },
        );
    }
}

/// The batch that changes the ruleset from `old` to `new` in one
/// transaction: only the set ranges that differ, the chain only when the
/// default changed; the learned addresses stay, except `forget` (learned
/// for names the new policy no longer allows). With `old` None (what the
/// kernel holds is in doubt), every static set is flushed and refilled and
/// the chain rewritten, learned addresses still kept.
pub fn update(
    old: Option<&Installed>,
    new: &Installed,
    opts: &Options,
    forget: &[IpAddr],
    seq: u32,
) -> Encoded {
    let mut b = Batch::new(seq);
    static_changes(&mut b, old, new);
    dyn_elements(
        &mut b,
        "dyn_allow",
        msg::DELSETELEM,
        &forget.iter().map(|ip| (*ip, None)).collect::<Vec<_>>(),
    );
    // Denied names' addresses are re-learned for the new policy.
    for set in ["dyn_deny_v4", "dyn_deny_v6"] {
        flush_set(&mut b, set);
    }
    if old.is_none_or(|o| o.default_action != new.default_action) {
        chain_and_rules(&mut b, new.default_action, opts, true);
    }
    done(b)
}

/// Adds one element message per family to a dynamic set.
fn dyn_elements(b: &mut Batch, prefix: &str, ty: u16, addrs: &[(IpAddr, Option<u64>)]) {
    for (set, v4) in [
        (format!("{prefix}_v4"), true),
        (format!("{prefix}_v6"), false),
    ] {
        let set = set.as_str();
        let all: Vec<&(IpAddr, Option<u64>)> =
            addrs.iter().filter(|(ip, _)| ip.is_ipv4() == v4).collect();
        for mine in all.chunks(ELEMENTS_PER_MESSAGE) {
            let mut a = Attrs::default();
            a.str(attr::SET_ELEM_LIST_TABLE, TABLE)
                .str(attr::SET_ELEM_LIST_SET, set)
                .nest(attr::SET_ELEM_LIST_ELEMENTS, |list| {
                    for (ip, timeout) in mine {
                        list.nest(attr::LIST_ELEM, |e| {
                            let (v, bits) = addr_bits(*ip);
                            e.nest(attr::SET_ELEM_KEY, |k| {
                                k.bytes(attr::DATA_VALUE, &key_bytes(v, bits));
                            });
                            if let Some(t) = timeout {
                                e.u64(attr::SET_ELEM_TIMEOUT, *t);
                            }
                        });
                    }
                });
            let verb = if ty == msg::DELSETELEM {
                "remove from"
            } else {
                "add to"
            };
            b.add(
                ty,
                if ty == msg::NEWSETELEM {
                    NLM_F_CREATE
                } else {
                    0
                },
                family::INET,
                &a,
                format!("{verb} {set}"),
            );
        }
    }
}

/// The batch that learns `addrs` with their timeouts (milliseconds),
/// refreshing the timeout of those already there: add, delete, add (a plain
/// re-add does not refresh the timeout on older kernels).
pub fn learn(addrs: &[(IpAddr, u64)], seq: u32) -> Encoded {
    learn_into("dyn_allow", addrs, seq)
}

/// Like [`learn`], into `dyn_allow` or `dyn_deny`.
pub fn learn_into(prefix: &str, addrs: &[(IpAddr, u64)], seq: u32) -> Encoded {
    let mut b = Batch::new(seq);
    let with: Vec<(IpAddr, Option<u64>)> = addrs.iter().map(|(ip, t)| (*ip, Some(*t))).collect();
    let without: Vec<(IpAddr, Option<u64>)> = addrs.iter().map(|(ip, _)| (*ip, None)).collect();
    dyn_elements(&mut b, prefix, msg::NEWSETELEM, &with);
    dyn_elements(&mut b, prefix, msg::DELSETELEM, &without);
    dyn_elements(&mut b, prefix, msg::NEWSETELEM, &with);
    done(b)
}

/// The batch that removes the ruleset.
pub fn teardown(seq: u32) -> Encoded {
    let mut b = Batch::new(seq);
    delete_table(&mut b);
    done(b)
}

/// Deletes the table whether or not it exists (add, then delete).
fn delete_table(b: &mut Batch) {
    let t = table_attrs();
    b.add(
        msg::NEWTABLE,
        NLM_F_CREATE,
        family::INET,
        &t,
        "table (ensure)",
    );
    b.add(msg::DELTABLE, 0, family::INET, &t, "table (delete)");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn policy(json: &str) -> Policy {
        Policy::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn an_update_sends_only_what_changed() {
        let opts = Options {
            filter: true,
            ..Options::default()
        };
        let mut rules: Vec<String> = (0..2000)
            .map(|i| {
                format!(
                    r#"{{"action":"allow","target":"10.{}.{}.0/24"}}"#,
                    i / 256,
                    i % 256
                )
            })
            .collect();
        let old = Installed::of(
            &policy(&format!(r#"{{"egress":[{}]}}"#, rules.join(","))),
            &opts.extra_allow,
        );
        rules.insert(0, r#"{"action":"deny","target":"192.0.2.7"}"#.into());
        let new = Installed::of(
            &policy(&format!(r#"{{"egress":[{}]}}"#, rules.join(","))),
            &opts.extra_allow,
        );
        let (bytes, what) = update(Some(&old), &new, &opts, &[], 1);
        // One range added to deny_v4, nothing else but the two dyn_deny flushes
        // (no chain message: the default did not change).
        let names: Vec<&str> = what.iter().map(|(_, w)| w.as_str()).collect();
        assert!(names.contains(&"add 1 ranges of deny_v4"), "{names:?}");
        assert!(
            !names
                .iter()
                .any(|n| n.contains("allow_v4") || n.contains("chain")),
            "{names:?}"
        );
        assert!(bytes.len() < 1024, "{} bytes", bytes.len());
        // A changed default rewrites the chain; a new table of ranges is a flush and refill.
        let other = Installed::of(
            &policy(
                r#"{"defaultAction":"allow","egress":[{"action":"allow","target":"11.0.0.0/8"}]}"#,
            ),
            &opts.extra_allow,
        );
        let (_, what) = update(Some(&new), &other, &opts, &[], 1);
        let names: Vec<&str> = what.iter().map(|(_, w)| w.as_str()).collect();
        assert!(names.contains(&"chain egress"), "{names:?}");
        assert!(names.contains(&"flush allow_v4"), "{names:?}");
        assert!(names.contains(&"add 1 ranges of allow_v4"), "{names:?}");
        // Unknown kernel state: every static set flushed and refilled, the chain rewritten.
        let (_, what) = update(None, &other, &opts, &[], 1);
        let names: Vec<&str> = what.iter().map(|(_, w)| w.as_str()).collect();
        for set in ["allow_v4", "deny_v4", "allow_v6", "deny_v6"] {
            assert!(
                names.contains(&format!("flush {set}").as_str()),
                "{names:?}"
            );
        }
        assert!(names.contains(&"chain egress"), "{names:?}");
    }
}
