//! The compiled policy: answers "what happens to this name / address, and
//! which rule decides" in time independent of the number of rules for names
//! (hash lookups per label) and linear in the IP rules for addresses.
//!
//! Names: the first matching rule in list order wins (upstream's semantics);
//! `*.example.com` matches every name below `example.com`, not the apex.
//! Addresses: deny rules are checked before allow rules, as upstream's
//! nftables sets are; the most useful answer for `explain`.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use super::{mask, Action, Policy, Rule, Target};

/// A name rule as a map key: hashed and compared by its name (the domain,
/// or a wildcard's suffix), so that compiling a policy copies pointers, not
/// names.
#[derive(Debug, Clone)]
struct NameKey(Arc<Rule>);

impl NameKey {
    fn name(&self) -> &str {
        match &self.0.parsed {
            Target::Domain(d) | Target::Wildcard(d) => d,
            Target::Ip(_) | Target::Cidr(..) => "",
        }
    }
}

impl Borrow<str> for NameKey {
    fn borrow(&self) -> &str {
        self.name()
    }
}

impl Hash for NameKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.name().hash(h);
    }
}

impl PartialEq for NameKey {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for NameKey {}

/// Which rule decided, or the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The outcome.
    pub action: Action,
    /// Index of the deciding rule in the effective list, or None for the default.
    pub rule: Option<usize>,
    /// The deciding rule's target as written, or None for the default.
    pub target: Option<String>,
}

/// A policy ready for lookups.
#[derive(Debug, Clone)]
pub struct Matcher {
    policy: Arc<Policy>,
    exact: HashMap<NameKey, usize>,
    wildcard: HashMap<NameKey, usize>,
    nets: Vec<(usize, IpAddr, u8)>,
}

impl Matcher {
    /// Compiles `policy`.
    pub fn new(policy: impl Into<Arc<Policy>>) -> Self {
        let policy = policy.into();
        // Sized up front: no rehashing while thousands of rules go in.
        let (mut names, mut wild) = (0, 0);
        for r in &policy.egress {
            match r.parsed {
                Target::Domain(_) => names += 1,
                Target::Wildcard(_) => wild += 1,
                _ => {}
            }
        }
        let mut exact = HashMap::with_capacity(names);
        let mut wildcard = HashMap::with_capacity(wild);
        let mut nets = Vec::with_capacity(policy.egress.len() - names - wild);
        for (i, r) in policy.egress.iter().enumerate() {
            match &r.parsed {
                Target::Domain(_) => {
                    exact.entry(NameKey(Arc::clone(r))).or_insert(i);
                }
                Target::Wildcard(_) => {
                    wildcard.entry(NameKey(Arc::clone(r))).or_insert(i);
                }
                Target::Ip(ip) => nets.push((i, *ip, if ip.is_ipv4() { 32 } else { 128 })),
                Target::Cidr(ip, len) => nets.push((i, *ip, *len)),
            }
        }
        Self {
            policy,
            exact,
            wildcard,
            nets,
        }
    }

    /// The policy this was compiled from.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn decided(&self, index: Option<usize>) -> Decision {
        match index {
            Some(i) => {
                let r = &self.policy.egress[i];
                Decision {
                    action: r.action,
                    rule: Some(i),
                    target: Some(r.target.clone()),
                }
            }
            None => Decision {
                action: self.policy.default_action,
                rule: None,
                target: None,
            },
        }
    }

    /// Decides a DNS name (any case, with or without the trailing dot).
    pub fn decide_name(&self, name: &str) -> Decision {
        let lower = name.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        let mut best = self.exact.get(name).copied();
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(&i) = self.wildcard.get(parent) {
                best = Some(best.map_or(i, |b| b.min(i)));
            }
            rest = parent;
        }
        self.decided(best)
    }

    /// Decides a destination address by the IP and CIDR rules (deny first).
    pub fn decide_ip(&self, ip: IpAddr) -> Decision {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let hit = |want: Action| {
            self.nets
                .iter()
                .filter(|(i, net, len)| {
                    self.policy.egress[*i].action == want
                        && net.is_ipv4() == ip.is_ipv4()
                        && mask(ip, *len) == *net
                })
                .map(|(i, _, _)| *i)
                .min()
        };
        self.decided(hit(Action::Deny).or_else(|| hit(Action::Allow)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn matcher(v: serde_json::Value) -> Matcher {
        Matcher::new(Policy::from_value(&v).unwrap())
    }

    #[test]
    fn first_match_wins_and_wildcards_skip_the_apex() {
        let m = matcher(json!({"defaultAction":"deny","egress":[
            {"action":"allow","target":"*.example.com"},
            {"action":"deny","target":"api.example.com"},
            {"action":"allow","target":"example.org"}]}));
        assert_eq!(m.decide_name("api.example.com").action, Action::Allow);
        assert_eq!(m.decide_name("api.example.com").rule, Some(0));
        assert_eq!(m.decide_name("A.B.Example.COM.").action, Action::Allow);
        assert_eq!(m.decide_name("example.com").action, Action::Deny);
        assert_eq!(m.decide_name("example.com").rule, None);
        assert_eq!(
            m.decide_name("example.org").target.as_deref(),
            Some("example.org")
        );
        assert_eq!(m.decide_name("www.example.org").action, Action::Deny);
    }

    #[test]
    fn earlier_specific_rule_beats_later_wildcard() {
        let m = matcher(json!({"defaultAction":"allow","egress":[
            {"action":"allow","target":"ok.evil.com"},
            {"action":"deny","target":"*.evil.com"}]}));
        assert_eq!(m.decide_name("ok.evil.com").action, Action::Allow);
        assert_eq!(m.decide_name("x.evil.com").action, Action::Deny);
        assert_eq!(m.decide_name("other.com").action, Action::Allow);
    }

    #[test]
    fn addresses_deny_before_allow() {
        let m = matcher(json!({"defaultAction":"deny","egress":[
            {"action":"allow","target":"10.0.0.0/8"},
            {"action":"deny","target":"10.1.0.0/16"},
            {"action":"allow","target":"2001:db8::/32"}]}));
        assert_eq!(
            m.decide_ip("10.2.3.4".parse().unwrap()).action,
            Action::Allow
        );
        let d = m.decide_ip("10.1.3.4".parse().unwrap());
        assert_eq!((d.action, d.rule), (Action::Deny, Some(1)));
        assert_eq!(m.decide_ip("11.0.0.1".parse().unwrap()).rule, None);
        assert_eq!(
            m.decide_ip("2001:db8::5".parse().unwrap()).action,
            Action::Allow
        );
        assert_eq!(
            m.decide_ip("::ffff:10.2.0.1".parse().unwrap()).action,
            Action::Allow
        );
    }
}
