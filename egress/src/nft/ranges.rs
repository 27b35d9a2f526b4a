//! What a policy puts into the static interval sets (`allow_v4`,
//! `deny_v4`, `allow_v6`, `deny_v6`): merged address ranges per set, and
//! the difference between two of them, which is all an update sends.

use std::net::IpAddr;

use crate::policy::{Action, Policy, Target};

/// The static sets, in the order [`Installed`] keeps them: name, the action
/// whose rules fill it, IPv4.
pub const STATIC_SETS: [(&str, Action, bool); 4] = [
    ("allow_v4", Action::Allow, true),
    ("deny_v4", Action::Deny, true),
    ("allow_v6", Action::Allow, false),
    ("deny_v6", Action::Deny, false),
];

/// One merged range of a static set: its first address and the first
/// address after it (None: up to the top of the address space).
pub type Range = (u128, Option<u128>);

/// Inclusive-exclusive address ranges of one family, merged (no two share
/// a boundary: adjacent ranges are one).
pub(super) fn ranges(mut nets: Vec<(u128, u8)>, bits: u8) -> Vec<Range> {
    // Sorted by start only (the merge below takes ties in any order); IPv4
    // networks as packed u64 keys, several times faster to sort than
    // u128 pairs, which matters for a PATCH onto thousands of rules.
    if bits == 32 {
        let mut keys: Vec<u64> = nets
            .iter()
            .map(|&(a, len)| (u64::try_from(a).unwrap_or(u64::MAX >> 8) << 8) | u64::from(len))
            .collect();
        keys.sort_unstable();
        for (n, k) in nets.iter_mut().zip(keys) {
            *n = (u128::from(k >> 8), (k & 0xff) as u8);
        }
    } else {
        nets.sort_unstable_by_key(|n| n.0);
    }
    let limit = if bits == 32 { Some(1u128 << 32) } else { None };
    let mut out: Vec<Range> = Vec::new();
    for (s, len) in nets {
        let size_bits = u32::from(bits - len);
        let e = if size_bits >= 128 {
            None
        } else {
            s.checked_add(1u128 << size_bits)
        }
        .filter(|e| limit.is_none_or(|l| *e < l));
        match out.last_mut() {
            Some((_, last_end)) if last_end.is_none_or(|le| s <= le) => {
                *last_end = match (*last_end, e) {
                    (None, _) | (_, None) => None,
                    (Some(a), Some(b)) => Some(a.max(b)),
                };
            }
            _ => out.push((s, e)),
        }
    }
    out
}

/// An address as an integer and its width in bits.
pub fn addr_bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

/// The networks of each static set (in [`STATIC_SETS`] order), as
/// (address, prefix length), in one pass over the rules.
fn nets(policy: &Policy, extra_allow: &[IpAddr]) -> [Vec<(u128, u8)>; 4] {
    let mut out: [Vec<(u128, u8)>; 4] = Default::default();
    let slot = |action: Action, ip: IpAddr| {
        usize::from(action == Action::Deny) + if ip.is_ipv4() { 0 } else { 2 }
    };
    for r in &policy.egress {
        let (ip, len) = match r.parsed {
            Target::Ip(ip) => (ip, if ip.is_ipv4() { 32 } else { 128 }),
            Target::Cidr(ip, len) => (ip, len),
            _ => continue,
        };
        out[slot(r.action, ip)].push((addr_bits(ip).0, len));
    }
    for ip in extra_allow {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        out[slot(Action::Allow, *ip)].push((addr_bits(*ip).0, len));
    }
    out
}

/// The part of the filter that depends on the policy, as the kernel holds
/// it: the ranges of each static set and the chain's default. An update
/// sends only what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Ranges of `allow_v4`, `deny_v4`, `allow_v6`, `deny_v6`.
    pub(super) sets: [Vec<Range>; 4],
    pub(super) default_action: Action,
}

impl Installed {
    /// What `policy` puts in the kernel, `extra_allow` (addresses always
    /// allowed) included.
    pub fn of(policy: &Policy, extra_allow: &[IpAddr]) -> Self {
        let mut nets = nets(policy, extra_allow);
        let sets = std::array::from_fn(|i| {
            let bits = if STATIC_SETS[i].2 { 32 } else { 128 };
            ranges(std::mem::take(&mut nets[i]), bits)
        });
        Self {
            sets,
            default_action: policy.default_action,
        }
    }

    /// Ranges in all static sets.
    pub fn len(&self) -> usize {
        self.sets.iter().map(Vec::len).sum()
    }

    /// Whether the static sets are empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ranges only in `old` and the ranges only in `new` (both sorted,
/// as [`ranges`] makes them).
pub(super) fn diff(old: &[Range], new: &[Range]) -> (Vec<Range>, Vec<Range>) {
    let (mut gone, mut added) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) if o == n => {
                i += 1;
                j += 1;
            }
            (Some(o), Some(n)) if o < n => {
                gone.push(*o);
                i += 1;
            }
            (Some(_), Some(n)) | (None, Some(n)) => {
                added.push(*n);
                j += 1;
            }
            (Some(o), None) => {
                gone.push(*o);
                i += 1;
            }
            (None, None) => break,
        }
    }
    (gone, added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_end_exclusive() {
        let r = ranges(
            [
                (10 << 24, 8),
                ((10 << 24) + (1 << 16), 16),
                (0x0b000000, 8),
                (0xC0A80001, 32),
            ]
            .to_vec(),
            32,
        );
        assert_eq!(
            r,
            vec![(10 << 24, Some(12 << 24)), (0xC0A80001, Some(0xC0A80002))]
        );
        // The top of the space has no end element.
        assert_eq!(ranges(vec![(0xFFFFFFFF, 32)], 32), vec![(0xFFFFFFFF, None)]);
        assert_eq!(ranges(vec![(0, 0)], 32), vec![(0, None)]);
        // Same start, nested, adjacent: one range; IPv6 to the top of the space.
        assert_eq!(
            ranges(vec![(16, 28), (16, 30), (0, 28), (48, 28)], 32),
            vec![(0, Some(32)), (48, Some(64))]
        );
        assert_eq!(
            ranges(vec![(u128::MAX, 128), (1 << 127, 1)], 128),
            vec![(1 << 127, None)]
        );
    }

    #[test]
    fn diff_names_exactly_the_changed_ranges() {
        let old = vec![(1, Some(2)), (5, Some(9)), (20, None)];
        let new = vec![(1, Some(2)), (5, Some(10)), (12, Some(13))];
        assert_eq!(
            diff(&old, &new),
            (
                vec![(5, Some(9)), (20, None)],
                vec![(5, Some(10)), (12, Some(13))]
            )
        );
        assert_eq!(diff(&old, &old), (vec![], vec![]));
        assert_eq!(diff(&[], &new), (vec![], new.clone()));
        assert_eq!(diff(&new, &[]), (new, vec![]));
    }
}
