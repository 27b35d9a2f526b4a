//! execd: the daemon inside every sandbox, a drop-in replacement for
//! OpenSandbox's Go execd.
//!
//! Layout, one job per module:
//! - [`config`]: flags and environment variables into one typed [`config::Config`].
//! - [`api`]: the HTTP server, routing, auth and the single error mapping.
//! - [`wire`]: bytes on the wire: Go-compatible JSON, stream events, timestamps.
//! - [`process`]: spawning, the single child reaper, and process-tree killing.
//! - [`command`]: `/command` runs (foreground and background), their records and logs.
//! - [`session`]: persistent bash sessions.
//! - [`pathutil`]: `$VAR`, `${VAR}` and `~` expansion shared by every route taking a path.
//!
//! - [`files`]: files and directories: info, listing, search, batch edits,
//!   streaming uploads and downloads.
//! - [`proxy`]: `/proxy/{port}/…`, the reverse proxy to services in the sandbox.
//! - [`watch`]: live file watching (our extension, `GET /files/watch`).
//! - [`pty`]: PTY sessions: a shell on a pseudo-terminal over a WebSocket, with replay.
//! - [`metrics`]: `/metrics` and `/metrics/watch`, cgroup or host figures sampled in the background.
//!
//! Seams for later issues: code contexts in `code/` (backed by the `kernels`
//! crate).

pub mod api;
pub mod command;
pub mod config;
pub mod files;
pub mod metrics;
pub mod pathutil;
pub mod process;
pub mod proxy;
pub mod pty;
pub mod session;
pub mod watch;
pub mod wire;
