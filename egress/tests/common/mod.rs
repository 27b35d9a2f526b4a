//! The shared test pieces (in the `netns-tests` crate), bound to this
//! package's egress binary.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

pub use netns_tests::*;

/// The egress binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_egress"))
}

/// Starts egress on loopback ports with `envs` (DNS redirect off).
pub fn egress(envs: &[(&str, &str)]) -> Egress {
    Egress::start(bin(), envs)
}

/// Starts egress inside the cgroup directory `cgroup`.
pub fn egress_in(envs: &[(&str, &str)], cgroup: &Path) -> Egress {
    Egress::start_in(bin(), envs, Some(cgroup))
}
