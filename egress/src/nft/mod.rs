//! nftables over netlink: no `nft` binary at run time. [`wire`] encodes
//! messages, [`expr`] rule expressions, [`ranges`] the static sets' contents
//! and their differences, [`ruleset`] builds the sidecar's batches, [`socket`] applies a batch atomically, and [`Nft`] is the
//! [`Firewall`] that keeps the kernel in step with the policy and the DNS
//! answers.

pub mod cgroup;
pub mod expr;
pub mod nflog;
pub mod own;
pub mod ranges;
pub mod ruleset;
pub mod socket;
pub mod wire;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::policy::matcher::Matcher;
use crate::policy::{Action, Policy};
use socket::{NftError, Socket};

/// Most learned addresses remembered (for forgetting them when their names
/// become denied); past it, expired then soonest-expiring entries go.
pub const MAX_LEARNED: usize = 65_536;

/// The kernel side of enforcement.
pub trait Firewall: Send + Sync + std::fmt::Debug {
    /// Puts `matcher`'s policy in force (atomically).
    fn apply(&self, matcher: &Matcher) -> Result<(), NftError>;
    /// Allows the addresses an allowed `name` resolved to, each for its TTL
    /// in seconds, before the answer is released to the client.
    fn learn(&self, name: &str, addrs: &[(IpAddr, u32)]) -> Result<(), NftError>;
    /// Whether DNS answers need to be learned at all.
    fn learns(&self) -> bool;
    /// Drops traffic to the addresses the denied `name` resolves to, each
    /// for its TTL in seconds (for default-allow policies).
    fn block(&self, _name: &str, _addrs: &[(IpAddr, u32)]) -> Result<(), NftError> {
        Ok(())
    }
    /// What DNS answers put in the kernel for `ip`: the denied name it is
    /// blocked for, else the allowed name it was learned from (possibly
    /// expired since).
    fn seen(&self, _ip: IpAddr) -> Option<Seen> {
        None
    }
}

/// An address egress met in a DNS answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The name it answered for (lowercase, no trailing dot).
    pub name: String,
    /// In `dyn_deny` (a denied name's address) rather than `dyn_allow`.
    pub denied: bool,
    /// How long its set element still lives; None once expired.
    pub expires_in: Option<Duration>,
}

/// `dns` mode: nothing in the kernel.
#[derive(Debug, Default)]
pub struct NoFirewall;

impl Firewall for NoFirewall {
    fn apply(&self, _: &Matcher) -> Result<(), NftError> {
        Ok(())
    }
    fn learn(&self, _: &str, _: &[(IpAddr, u32)]) -> Result<(), NftError> {
        Ok(())
    }
    fn learns(&self) -> bool {
        false
    }
}

#[derive(Debug)]
struct Learned {
    expires: Instant,
    names: Vec<String>,
}

/// `dns+nft` mode: the ruleset in `inet opensandbox`.
#[derive(Debug)]
pub struct Nft {
    opts: ruleset::Options,
    sock: Mutex<Socket>,
    seq: AtomicU32,
    /// What the kernel holds of the policy; None until the table is installed.
    installed: Mutex<Option<ruleset::Installed>>,
    learned: Mutex<HashMap<IpAddr, Learned>>,
    /// Addresses of denied names in `dyn_deny`, with those names.
    blocked: Mutex<HashMap<IpAddr, Learned>>,
}

/// Records `name` for each of `addrs` (TTLs in seconds), keeping at most
/// [`MAX_LEARNED`] addresses (expired, then soonest-expiring ones go first).
/// An address's expiry moves only when `refreshed` says its kernel element
/// was just given this TTL.
fn remember(
    map: &mut HashMap<IpAddr, Learned>,
    name: &str,
    addrs: &[(IpAddr, u32)],
    now: Instant,
    refreshed: impl Fn(&IpAddr) -> bool,
) {
    if map.len() + addrs.len() > MAX_LEARNED {
        map.retain(|_, l| l.expires > now);
        while map.len() + addrs.len() > MAX_LEARNED {
            let Some(soonest) = map.iter().min_by_key(|(_, l)| l.expires).map(|(ip, _)| *ip) else {
                break;
            };
            map.remove(&soonest);
        }
    }
    for (ip, t) in addrs {
        let e = map.entry(*ip).or_insert_with(|| Learned {
            expires: now,
            names: Vec::new(),
        });
        if refreshed(ip) {
            e.expires = now + Duration::from_secs(u64::from((*t).max(1)));
        }
        if !e.names.iter().any(|n| n == name) && e.names.len() < 16 {
            e.names.push(name.to_string());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Nft {
    /// Opens the netlink socket (in the caller's network namespace).
    pub fn new(opts: ruleset::Options) -> Result<Self, NftError> {
        Ok(Self {
            opts,
            sock: Mutex::new(Socket::open()?),
            seq: AtomicU32::new(1),
            installed: Mutex::new(None),
            learned: Mutex::new(HashMap::new()),
            blocked: Mutex::new(HashMap::new()),
        })
    }

    fn send(&self, build: impl FnOnce(u32) -> ruleset::Encoded) -> Result<(), NftError> {
        let sock = lock(&self.sock);
        let seq = self.seq.fetch_add(1 << 16, Ordering::Relaxed);
        let (bytes, what) = build(seq);
        sock.apply(&bytes, &what)?;
        crate::metrics::METRICS
            .nft_updates
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn apply_policy(&self, matcher: &Matcher) -> Result<(), NftError> {
        let policy = matcher.policy();
        // Held for the whole change: what it records must be what the kernel holds.
        let mut installed = lock(&self.installed);
        if installed.is_some() && !self.opts.filter {
            return Ok(()); // dns mode: the redirect does not depend on the policy
        }
        let next = ruleset::Installed::of(policy, &self.opts.extra_allow);
        let Some(prev) = installed.as_ref() else {
            self.send(|seq| ruleset::full(&next, &self.opts, seq))?;
            *installed = Some(next);
            lock(&self.learned).clear();
            lock(&self.blocked).clear();
            return Ok(());
        };
        let now = Instant::now();
        let forget: Vec<IpAddr> = {
            let learned = lock(&self.learned);
            learned
                .iter()
                .filter(|(_, l)| {
                    l.expires > now
                        && !l
                            .names
                            .iter()
                            .any(|n| matcher.decide_name(n).action == Action::Allow)
                })
                .map(|(ip, _)| *ip)
                .collect()
        };
        tracing::debug!(
            forget = forget.len(),
            learned = lock(&self.learned).len(),
            ranges = next.len(),
            "nftables update"
        );
        let mut sent =
            self.send(|seq| ruleset::update(Some(prev), &next, &self.opts, &forget, seq));
        if let Err(NftError::Refused { errno, .. }) = &sent {
            // The kernel does not hold what egress installed (an element
            // removed or added by someone else): flush and refill the static
            // sets, keeping the learned addresses.
            tracing::warn!(%errno, "nftables sets differ from what egress installed; refilling them");
            sent = self.send(|seq| ruleset::update(None, &next, &self.opts, &forget, seq));
        }
        match sent {
            Ok(()) => {
                *installed = Some(next);
                let mut learned = lock(&self.learned);
                for ip in &forget {
                    learned.remove(ip);
                }
                // dyn_deny was flushed: denied names are resolved again.
                lock(&self.blocked).clear();
                Ok(())
            }
            // The table was removed behind our back: recreate it whole.
            Err(NftError::Refused {
                errno: nix::errno::Errno::ENOENT,
                ..
            }) => {
                self.send(|seq| ruleset::full(&next, &self.opts, seq))?;
                *installed = Some(next);
                lock(&self.learned).clear();
                lock(&self.blocked).clear();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl Firewall for Nft {
    fn apply(&self, matcher: &Matcher) -> Result<(), NftError> {
        self.apply_policy(matcher)
    }

    fn learn(&self, name: &str, addrs: &[(IpAddr, u32)]) -> Result<(), NftError> {
        if addrs.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let ttl = |t: u32| Duration::from_secs(u64::from(t.max(1)));
        // An address whose element still has more than half of this answer's
        // TTL to live is not touched: no netlink round trip for the common
        // case of a name looked up again and again.
        let stale: Vec<(IpAddr, u64)> = {
            let learned = lock(&self.learned);
            addrs
                .iter()
                .filter(|(ip, t)| {
                    learned
                        .get(ip)
                        .is_none_or(|l| l.expires < now + ttl(*t) / 2)
                })
                .map(|(ip, t)| (*ip, u64::from((*t).max(1)) * 1000))
                .collect()
        };
        if !stale.is_empty() {
            self.send(|seq| ruleset::learn(&stale, seq))?;
        }
        // A refreshed kernel element now expires exactly then (it may be
        // sooner than before).
        remember(&mut lock(&self.learned), name, addrs, now, |ip| {
            stale.iter().any(|(s, _)| s == ip)
        });
        Ok(())
    }

    fn learns(&self) -> bool {
        // `dns` mode has only the redirect: nothing to learn into.
        self.opts.filter
    }

    fn block(&self, name: &str, addrs: &[(IpAddr, u32)]) -> Result<(), NftError> {
        if !self.opts.filter || addrs.is_empty() {
            return Ok(());
        }
        let with_ms: Vec<(IpAddr, u64)> = addrs
            .iter()
            .map(|(ip, t)| (*ip, u64::from((*t).max(1)) * 1000))
            .collect();
        self.send(|seq| ruleset::learn_into("dyn_deny", &with_ms, seq))?;
        remember(
            &mut lock(&self.blocked),
            name,
            addrs,
            Instant::now(),
            |_| true,
        );
        Ok(())
    }

    fn seen(&self, ip: IpAddr) -> Option<Seen> {
        let now = Instant::now();
        let find = |m: &HashMap<IpAddr, Learned>, denied: bool| {
            let l = m.get(&ip)?;
            Some(Seen {
                name: l.names.first()?.trim_end_matches('.').to_ascii_lowercase(),
                denied,
                expires_in: l
                    .expires
                    .checked_duration_since(now)
                    .filter(|d| !d.is_zero()),
            })
        };
        find(&lock(&self.blocked), true)
            .filter(|s| s.expires_in.is_some())
            .or_else(|| find(&lock(&self.learned), false))
    }
}

/// Deepest cgroup level probed.
const MAX_CGROUP_LEVEL: u32 = 16;
/// First local port used by the probe (one port per level).
const PROBE_PORT: u16 = 61_200;

/// Finds at which level of the cgroup v2 hierarchy the cgroup `id` sits, by
/// asking the kernel: a temporary table drops this process's datagrams to
/// 127.0.0.1:(PROBE_PORT + level) when `socket cgroupv2 level <level>` is
/// `id`; the first port whose send is refused gives the level. None when no
/// level matches (the root cgroup, which the sandbox may share).
pub fn probe_cgroup_level(id: u64) -> Option<u32> {
    use expr::{Base, Exprs, MetaKey, Verdict};
    use wire::{attr, family, msg, Attrs, Batch, NLM_F_CREATE};
    const T: &str = "opensandbox_probe";
    let sock = Socket::open().ok()?;
    let mut b = Batch::new(1);
    let mut t = Attrs::default();
    t.str(attr::TABLE_NAME, T);
    b.add(msg::NEWTABLE, NLM_F_CREATE, family::INET, &t, "probe table");
    let mut c = Attrs::default();
    c.str(attr::CHAIN_TABLE, T)
        .str(attr::CHAIN_NAME, "probe")
        .nest(attr::CHAIN_HOOK, |h| {
            h.u32(attr::HOOK_HOOKNUM, 3).i32(attr::HOOK_PRIORITY, -300);
        })
        .u32(attr::CHAIN_POLICY, 1)
        .str(attr::CHAIN_TYPE, "filter");
    b.add(msg::NEWCHAIN, NLM_F_CREATE, family::INET, &c, "probe chain");
    for level in 1..=MAX_CGROUP_LEVEL {
        let mut x = Exprs::default();
        let port = PROBE_PORT + u16::try_from(level).unwrap_or(0);
        x.meta(MetaKey::L4Proto)
            .cmp(true, &[17])
            .payload(Base::Transport, 2, 2)
            .cmp(true, &port.to_be_bytes())
            .socket_cgroup(level)
            .cmp(true, &id.to_ne_bytes())
            .verdict(Verdict::Drop);
        let mut r = Attrs::default();
        r.str(attr::RULE_TABLE, T)
            .str(attr::RULE_CHAIN, "probe")
            .nest(attr::RULE_EXPRESSIONS, |l| {
                l.bytes_raw(x.attrs().as_slice());
            });
        b.add(
            msg::NEWRULE,
            NLM_F_CREATE | 0x800,
            family::INET,
            &r,
            format!("probe level {level}"),
        );
    }
    let (bytes, _, what) = b.finish();
    if let Err(e) = sock.apply(&bytes, &what) {
        tracing::warn!(error = %e, "cannot probe the cgroup level");
        return None;
    }
    let found = std::net::UdpSocket::bind("127.0.0.1:0").ok().and_then(|s| {
        (1..=MAX_CGROUP_LEVEL).find(|level| {
            let port = PROBE_PORT + u16::try_from(*level).unwrap_or(0);
            matches!(s.send_to(b"?", ("127.0.0.1", port)), Err(e) if e.raw_os_error() == Some(1))
        })
    });
    let mut b = Batch::new(100);
    b.add(msg::DELTABLE, 0, family::INET, &t, "probe table (delete)");
    let (bytes, _, what) = b.finish();
    if let Err(e) = sock.apply(&bytes, &what) {
        tracing::warn!(error = %e, "cannot remove the cgroup probe table");
    }
    found
}

/// Applies the whole ruleset for `policy` in one transaction.
pub fn apply_full(policy: &Policy, opts: &ruleset::Options) -> Result<(), NftError> {
    let sock = Socket::open()?;
    let (bytes, what) = ruleset::full(&ruleset::Installed::of(policy, &opts.extra_allow), opts, 1);
    sock.apply(&bytes, &what)
}

/// Removes the ruleset.
pub fn teardown() -> Result<(), NftError> {
    let sock = Socket::open()?;
    let (bytes, what) = ruleset::teardown(1);
    sock.apply(&bytes, &what)
}
