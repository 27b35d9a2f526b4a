//! Bytes on the wire: Go-compatible JSON, stream events and timestamps.

pub mod event;
pub mod json;
pub mod stream;
pub mod time;
