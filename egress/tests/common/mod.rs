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

/// Runs egress (loopback ports, no redirect) with `envs`, which must stop
/// it at start: asserts exit status 1 and returns what it said on stderr.
pub fn start_fails(envs: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(bin())
        .env("OPENSANDBOX_EGRESS_REDIRECT", "off")
        .env("OPENSANDBOX_EGRESS_HTTP_ADDR", "127.0.0.1:0")
        .env("OPENSANDBOX_EGRESS_DNS_ADDR", "127.0.0.1:0")
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    err
}
