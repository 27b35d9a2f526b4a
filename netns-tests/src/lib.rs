//! netns-tests: what egress enforces, checked for real in network
//! namespaces the tests build themselves (and remove, also when a test
//! fails). Needs root; without it every test says SKIPPED and passes nothing.
//!
//! The library holds the pieces the tests share (the egress process, DNS
//! client and fake resolvers, namespaces, cgroups, a two-namespace topology);
//! egress's own integration tests use them too.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod dns;
pub mod egress;
pub mod load;
pub mod netns;
pub mod topology;

pub use dns::*;
pub use egress::*;
pub use netns::*;
pub use topology::*;
