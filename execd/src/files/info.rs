//! `FileInfo`, the metadata record every files route returns, with upstream's
//! field names and order, and owner and group names looked up once per id.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::unistd::{Gid, Group, Uid, User};
use serde::Serialize;

use crate::wire::time::rfc3339_nano;

/// Metadata of one path, serialized exactly as upstream's `FileInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileInfo {
    /// Absolute, cleaned path.
    pub path: String,
    /// `file`, `directory`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Size in bytes (of the link itself for a symlink).
    pub size: u64,
    /// Modification time, RFC 3339 with nanoseconds.
    pub modified_at: String,
    /// Status-change time (ctime), as upstream reports it.
    pub created_at: String,
    /// Owner's user name, or the numeric uid when it has none.
    pub owner: String,
    /// Group name, or the numeric gid when it has none.
    pub group: String,
    /// Permission bits written as octal digits in a decimal number (0o755 is `755`).
    pub mode: u32,
}

/// Permission bits as upstream writes them: 0o755 becomes 755.
pub fn mode_to_wire(mode: u32) -> u32 {
    format!("{:o}", mode & 0o777).parse().unwrap_or(0)
}

/// Upstream's `mode` input: decimal digits read as octal (755 is 0o755).
/// `None` when a digit is 8 or 9 or the value is out of range.
pub fn mode_from_wire(mode: u32) -> Option<u32> {
    u32::from_str_radix(&mode.to_string(), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
}

fn time(secs: i64, nsec: i64) -> SystemTime {
    let d = Duration::new(
        u64::try_from(secs).unwrap_or(0),
        u32::try_from(nsec).unwrap_or(0),
    );
    UNIX_EPOCH + d
}

/// The kind of file `meta` describes (from `lstat`, so links are `symlink`).
pub fn kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        "symlink"
    } else if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "file"
    } else {
        "other"
    }
}

/// Caches uid and gid to name lookups for the length of one request.
#[derive(Debug, Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    /// The user name of `uid`, or the number.
    pub fn user(&mut self, uid: u32) -> String {
        self.users
            .entry(uid)
            .or_insert_with(|| match User::from_uid(Uid::from_raw(uid)) {
                Ok(Some(u)) => u.name,
                _ => uid.to_string(),
            })
            .clone()
    }

    /// The group name of `gid`, or the number.
    pub fn group(&mut self, gid: u32) -> String {
        self.groups
            .entry(gid)
            .or_insert_with(|| match Group::from_gid(Gid::from_raw(gid)) {
                Ok(Some(g)) => g.name,
                _ => gid.to_string(),
            })
            .clone()
    }

    /// The record for `path` with metadata `meta`.
    pub fn info(&mut self, path: &Path, meta: &Metadata) -> FileInfo {
        FileInfo {
            path: path.to_string_lossy().into_owned(),
            kind: kind(meta),
            size: meta.len(),
            modified_at: rfc3339_nano(time(meta.mtime(), meta.mtime_nsec())),
            created_at: rfc3339_nano(time(meta.ctime(), meta.ctime_nsec())),
            owner: self.user(meta.uid()),
            group: self.group(meta.gid()),
            mode: mode_to_wire(meta.mode()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_as_upstream() {
        assert_eq!(mode_to_wire(0o100755), 755);
        assert_eq!(mode_to_wire(0o4644), 644);
        assert_eq!(mode_to_wire(0o7), 7);
        assert_eq!(mode_from_wire(755), Some(0o755));
        assert_eq!(mode_from_wire(4755), Some(0o4755));
        assert_eq!(mode_from_wire(789), None);
        assert_eq!(mode_from_wire(77777), None);
    }
}
