//! lifecycle: drives Docker and speaks the OpenSandbox Lifecycle API so that the
//! official SDK works end to end on one machine.
//!
//! Nothing is implemented yet; issue 6 (lifecycle on Docker) fills this crate.
