//! nftables over netlink: no `nft` binary at run time. [`wire`] encodes
//! messages, [`expr`] rule expressions, [`ruleset`] builds the sidecar's
//! ruleset as one batch, and [`socket`] applies a batch atomically.

pub mod expr;
pub mod ruleset;
pub mod socket;
pub mod wire;

use crate::policy::Policy;

/// Applies the whole ruleset for `policy` in one transaction.
pub fn apply_full(policy: &Policy, opts: &ruleset::Options) -> Result<(), socket::NftError> {
    let sock = socket::Socket::open()?;
    let (bytes, what) = ruleset::full(policy, opts, 1);
    sock.apply(&bytes, &what)
}

/// Removes the ruleset.
pub fn teardown() -> Result<(), socket::NftError> {
    let sock = socket::Socket::open()?;
    let (bytes, what) = ruleset::teardown(1);
    sock.apply(&bytes, &what)
}
