//! lifecycle: drives Docker and speaks the OpenSandbox Lifecycle API so that
//! the official SDK works end to end on one machine.
//!
//! Layout, one job per module:
//! - [`config`]: the TOML file, flags and environment into one typed [`config::Config`].
//! - [`store`]: the SQLite store for what Docker labels cannot hold.
//! - [`model`]: the API's JSON.
//! - [`docker`]: the Docker driver (containers, the execd bundle, sidecars).
//! - [`service`]: sandbox operations, validation and expiry timers.
//! - [`snapshots`]: snapshot operations (`docker commit`), restore lookup and
//!   recovery after a restart.
//! - [`api`]: HTTP routing, the API key, request ids, the server-side proxy
//!   route and error mapping.
//!
//! Seams for later issues: volumes and the credential proxy.

pub mod api;
pub mod config;
pub mod docker;
pub mod model;
pub mod service;
pub mod snapshots;
pub mod store;
