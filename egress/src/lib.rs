//! egress: the per-sandbox network sidecar (policy API on :18080, DNS proxy,
//! nftables enforcement over netlink, TLS interception with credential
//! injection).
//!
//! Nothing is implemented yet; issue 5 (outbound network policy) fills this
//! crate. It exists now so that the workspace has its final shape.
