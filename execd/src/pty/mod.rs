//! PTY sessions: a shell on a pseudo-terminal, driven over a WebSocket
//! (upstream's `/pty` API, not in its OpenAPI spec).
//!
//! - [`session`]: the terminal (or pipes), the shell, exit status, resize
//!   and signals.
//! - [`ring`]: the 1 MiB replay buffer, addressed by absolute offsets.
//! - [`ws`]: the WebSocket protocol.

pub mod ring;
pub mod session;
pub mod ws;

pub use session::{CreateRequest, Mode, PtySession, Ptys};
