//! Stream events (`ServerStreamEvent`) and their framing: one compact JSON
//! object followed by a blank line (`"\n\n"`), no `data:` prefix, exactly as
//! upstream writes them.

use std::borrow::Cow;

use base64::Engine as _;
use serde::Serialize;

use super::json::write_go_json;
use super::time::now_millis;

/// The `error` object of an `error` event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorInfo {
    /// Error name, e.g. `CommandExecError`.
    pub ename: String,
    /// Error value; for commands the exit code as a decimal string.
    pub evalue: String,
    /// Traceback lines; for commands the Go-style exit description.
    pub traceback: Vec<String>,
}

/// One stream event. Field order and omission rules are upstream's
/// (`type, text, execution_count, execution_time, timestamp, results, error`,
/// all omitted when empty). `raw` is our extension, present only when a
/// stdout/stderr chunk was not valid UTF-8: the exact bytes, base64-encoded,
/// so that nothing is lost (`text` then holds U+FFFD for each invalid byte).
#[derive(Debug, Clone, Serialize)]
pub struct Event<'a> {
    /// Event type: `init`, `ping`, `stdout`, `stderr`, `error`, `execution_complete`, ...
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Text: the id for `init`, `pong` for `ping`, a line for output events.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub text: Cow<'a, str>,
    /// Milliseconds the execution took, on `execution_complete`.
    #[serde(skip_serializing_if = "is_zero")]
    pub execution_time: i64,
    /// Unix milliseconds when the event was emitted.
    #[serde(skip_serializing_if = "is_zero")]
    pub timestamp: i64,
    /// Error details, on `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// Base64 of the exact output bytes when they were not valid UTF-8 (extension).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
}

// serde's skip_serializing_if passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl<'a> Event<'a> {
    fn new(kind: &'static str, text: Cow<'a, str>) -> Self {
        Self {
            kind,
            text,
            execution_time: 0,
            timestamp: now_millis(),
            error: None,
            raw: None,
        }
    }

    /// `init` carrying the execution id.
    pub fn init(id: &'a str) -> Self {
        Self::new("init", Cow::Borrowed(id))
    }

    /// The `ping` keep-alive.
    pub fn ping() -> Self {
        Self::new("ping", Cow::Borrowed("pong"))
    }

    /// `execution_complete` after `elapsed_ms`.
    pub fn complete(elapsed_ms: i64) -> Self {
        let mut e = Self::new("execution_complete", Cow::Borrowed(""));
        e.execution_time = elapsed_ms;
        e
    }

    /// `error` with `ename: CommandExecError`.
    pub fn command_error(evalue: String, traceback: String) -> Self {
        let mut e = Self::new("error", Cow::Borrowed(""));
        e.error = Some(ErrorInfo {
            ename: "CommandExecError".into(),
            evalue,
            traceback: vec![traceback],
        });
        e
    }

    /// A `stdout` or `stderr` event for one line of output bytes.
    pub fn output(kind: &'static str, bytes: &'a [u8]) -> Self {
        let (text, raw) = match std::str::from_utf8(bytes) {
            Ok(s) => (Cow::Borrowed(s), None),
            Err(_) => (
                Cow::Owned(lossy_per_byte(bytes)),
                Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            ),
        };
        let mut e = Self::new(kind, text);
        e.raw = raw;
        e
    }

    /// Appends the framed event (`JSON\n\n`) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        write_go_json(out, self);
        out.extend_from_slice(b"\n\n");
    }

    /// The framed event as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + self.text.len());
        self.write_to(&mut out);
        out
    }
}

/// Decodes UTF-8, replacing every invalid byte with U+FFFD, as Go's JSON
/// encoder does (Rust's `from_utf8_lossy` replaces whole invalid sequences).
pub fn lossy_per_byte(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 8);
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                return out;
            }
            Err(e) => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                // valid_up_to guarantees this prefix is UTF-8.
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                let bad = e.error_len().unwrap_or(rest.len());
                for _ in 0..bad {
                    out.push('\u{FFFD}');
                }
                bytes = &rest[bad..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ts(mut e: Event<'_>) -> String {
        e.timestamp = 1_718_000_000_000;
        String::from_utf8(e.to_bytes()).unwrap()
    }

    #[test]
    fn upstream_bytes() {
        assert_eq!(
            with_ts(Event::init("9b2d")),
            "{\"type\":\"init\",\"text\":\"9b2d\",\"timestamp\":1718000000000}\n\n"
        );
        assert_eq!(
            with_ts(Event::ping()),
            "{\"type\":\"ping\",\"text\":\"pong\",\"timestamp\":1718000000000}\n\n"
        );
        assert_eq!(
            with_ts(Event::complete(3)),
            "{\"type\":\"execution_complete\",\"execution_time\":3,\"timestamp\":1718000000000}\n\n"
        );
        assert_eq!(
            with_ts(Event::complete(0)),
            "{\"type\":\"execution_complete\",\"timestamp\":1718000000000}\n\n"
        );
        assert_eq!(
            with_ts(Event::command_error("3".into(), "exit status 3".into())),
            "{\"type\":\"error\",\"timestamp\":1718000000000,\"error\":{\"ename\":\"CommandExecError\",\"evalue\":\"3\",\"traceback\":[\"exit status 3\"]}}\n\n"
        );
        assert_eq!(
            with_ts(Event::output("stdout", b"a<b")),
            "{\"type\":\"stdout\",\"text\":\"a\\u003cb\",\"timestamp\":1718000000000}\n\n"
        );
    }

    #[test]
    fn invalid_utf8_keeps_raw_bytes() {
        let s = with_ts(Event::output("stdout", b"ok\xff\xfe!"));
        assert_eq!(
            s,
            "{\"type\":\"stdout\",\"text\":\"ok\u{FFFD}\u{FFFD}!\",\"timestamp\":1718000000000,\"raw\":\"b2v//iE=\"}\n\n"
        );
    }

    #[test]
    fn lossy_replaces_each_byte() {
        assert_eq!(lossy_per_byte(b"a\xe2\x82b"), "a\u{FFFD}\u{FFFD}b");
        assert_eq!(lossy_per_byte("é".as_bytes()), "é");
    }
}
