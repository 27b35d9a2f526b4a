//! egress: the per-sandbox network sidecar, a drop-in replacement for
//! OpenSandbox's egress (policy API on :18080, DNS proxy on 127.0.0.1:15353).
//!
//! Layout, one job per module:
//! - [`config`]: upstream's environment variables into one [`config::Config`].
//! - [`policy`]: the policy model, validation, PATCH/DELETE semantics and the compiled matcher.
//! - [`state`]: the policy in force, its persistence and the refusal log.
//! - [`dns`]: the DNS proxy.
//! - [`nft`]: nftables over netlink.
//! - [`api`]: the HTTP API.
//! - [`events`]: refusals, bounded.
//! - [`webhook`]: the denied-hostname webhook.
//! - [`metrics`]: upstream's metrics, pushed as OTLP/HTTP JSON.
//! - [`logs`]: log destinations (stdout, stderr, rotated files).
//!
//! Later issues add the TLS interceptor and the Credential Vault (`mitm/`,
//! `vault/`).

pub mod api;
pub mod config;
pub mod dns;
pub mod events;
pub mod logs;
pub mod metrics;
pub mod nft;
pub mod policy;
pub mod state;
pub mod webhook;
