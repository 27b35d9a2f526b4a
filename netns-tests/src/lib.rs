//! netns-tests: integration tests that build network namespaces and check the
//! egress sidecar's enforcement for real.
//!
//! Nothing is implemented yet; issue 5 (egress policy) adds the tests.
