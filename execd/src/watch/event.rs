//! The events of a watch stream on the wire: compact Go-compatible JSON
//! followed by a blank line, like command events.

use std::borrow::Cow;
use std::path::Path;

use serde::Serialize;

use crate::wire::json::write_go_json;
use crate::wire::time::now_millis;

/// One watch event. Fields are omitted when they do not apply.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WatchEvent<'a> {
    /// `ready`, `created`, `modified`, `removed`, `renamed`, `overflow` or `error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The absolute path concerned (the new path of `renamed`, the watched
    /// path of `ready` and `overflow`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<Cow<'a, str>>,
    /// The previous path, on `renamed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_path: Option<Cow<'a, str>>,
    /// Whether the path is a directory, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_dir: Option<bool>,
    /// Whether subdirectories are watched, on `ready`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recursive: Option<bool>,
    /// How many changes were dropped, on `overflow` (absent when the kernel's
    /// own queue overflowed and the number is unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    /// What went wrong, on `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Unix milliseconds: when the change was seen (the last change of a
    /// coalesced burst), or when the event was made.
    pub timestamp: i64,
}

/// A path as JSON text (non-UTF-8 bytes become U+FFFD).
fn text(p: &Path) -> Cow<'_, str> {
    p.to_string_lossy()
}

impl<'a> WatchEvent<'a> {
    fn new(kind: &'static str, path: Option<&'a Path>, timestamp: i64) -> Self {
        Self {
            kind,
            path: path.map(text),
            old_path: None,
            is_dir: None,
            recursive: None,
            dropped: None,
            message: None,
            timestamp,
        }
    }

    /// `ready`: the watch of `path` is in place.
    pub fn ready(path: &'a Path, is_dir: bool, recursive: bool) -> Self {
        let mut e = Self::new("ready", Some(path), now_millis());
        e.is_dir = Some(is_dir);
        e.recursive = Some(recursive);
        e
    }

    /// `created`, `modified` or `removed` of `path`, seen at `timestamp`.
    pub fn change(
        kind: &'static str,
        path: &'a Path,
        is_dir: Option<bool>,
        timestamp: i64,
    ) -> Self {
        let mut e = Self::new(kind, Some(path), timestamp);
        e.is_dir = is_dir;
        e
    }

    /// `renamed` from `old` to `new`.
    pub fn renamed(old: &'a Path, new: &'a Path, is_dir: Option<bool>, timestamp: i64) -> Self {
        let mut e = Self::new("renamed", Some(new), timestamp);
        e.old_path = Some(text(old));
        e.is_dir = is_dir;
        e
    }

    /// `overflow`: changes under `root` were lost; the client should rescan.
    pub fn overflow(root: &'a Path, dropped: u64, timestamp: i64) -> Self {
        let mut e = Self::new("overflow", Some(root), timestamp);
        e.dropped = (dropped > 0).then_some(dropped);
        e
    }

    /// `error`: a problem that does not end the stream (e.g. a new
    /// subdirectory could not be watched).
    pub fn error(message: String, timestamp: i64) -> Self {
        let mut e = Self::new("error", None, timestamp);
        e.message = Some(message);
        e
    }

    /// Appends the framed event (`JSON\n\n`) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        write_go_json(out, self);
        out.extend_from_slice(b"\n\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(e: &WatchEvent<'_>) -> String {
        let mut out = Vec::new();
        e.write_to(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn shapes() {
        let p = Path::new("/w/a<b");
        assert_eq!(
            framed(&WatchEvent::change("created", p, Some(false), 7)),
            "{\"type\":\"created\",\"path\":\"/w/a\\u003cb\",\"is_dir\":false,\"timestamp\":7}\n\n"
        );
        assert_eq!(
            framed(&WatchEvent::renamed(
                Path::new("/w/x"),
                Path::new("/w/y"),
                None,
                8
            )),
            "{\"type\":\"renamed\",\"path\":\"/w/y\",\"old_path\":\"/w/x\",\"timestamp\":8}\n\n"
        );
        assert_eq!(
            framed(&WatchEvent::overflow(Path::new("/w"), 0, 9)),
            "{\"type\":\"overflow\",\"path\":\"/w\",\"timestamp\":9}\n\n"
        );
        assert_eq!(
            framed(&WatchEvent::overflow(Path::new("/w"), 3, 9)),
            "{\"type\":\"overflow\",\"path\":\"/w\",\"dropped\":3,\"timestamp\":9}\n\n"
        );
    }
}
