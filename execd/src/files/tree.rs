//! Walking directories: `GET /directories/list` (depth-limited listing) and
//! `GET /files/search` (glob search). Links are reported, never followed, so
//! link loops cannot trap a walk; every walk stops at a result limit.

use std::fs;
use std::io;
use std::path::Path;

use globset::{GlobBuilder, GlobMatcher};
use walkdir::WalkDir;

use super::info::{FileInfo, Names};
use super::FileError;

/// Results returned when the request sets no limit.
pub const DEFAULT_LIMIT: usize = 100_000;
/// Largest limit a request may set.
pub const MAX_LIMIT: usize = 1_000_000;

/// Entries found, and whether the limit cut the walk short.
#[derive(Debug, Default)]
pub struct Found {
    /// The entries, in walk order.
    pub entries: Vec<FileInfo>,
    /// Whether more entries exist than were returned.
    pub truncated: bool,
}

/// Lists `root` (absolute) to `depth` levels in lexical pre-order, without
/// the root itself. Unreadable subdirectories are listed but not entered.
pub fn list(root: &Path, depth: usize, limit: usize) -> Result<Found, FileError> {
    let meta = fs::symlink_metadata(root)
        .map_err(|e| FileError::io(format!("error accessing path {}", root.display()), e))?;
    if meta.file_type().is_symlink() {
        return Err(FileError::Invalid(format!(
            "path is a symbolic link, refusing to traverse: {}",
            root.display()
        )));
    }
    if !meta.is_dir() {
        return Err(FileError::Invalid(format!(
            "path is not a directory: {}",
            root.display()
        )));
    }
    let mut found = Found::default();
    if depth == 0 {
        return Ok(found);
    }
    // The root must be readable; deeper failures only skip that directory.
    fs::read_dir(root)
        .map_err(|e| FileError::io(format!("error listing directory {}", root.display()), e))?;
    let walk = WalkDir::new(root)
        .min_depth(1)
        .max_depth(depth)
        .follow_links(false)
        .sort_by_file_name();
    let mut names = Names::default();
    for entry in walk {
        let Ok(entry) = entry else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        if found.entries.len() == limit {
            found.truncated = true;
            break;
        }
        found.entries.push(names.info(entry.path(), &meta));
    }
    Ok(found)
}

/// A search pattern: matched against the basename (as upstream does) and,
/// when it contains `/` or `**`, also against the path relative to the root.
#[derive(Debug, Clone)]
pub struct Pattern {
    glob: GlobMatcher,
    relative: bool,
}

impl Pattern {
    /// Compiles `pattern`; an invalid one is [`FileError::Invalid`].
    pub fn new(pattern: &str) -> Result<Self, FileError> {
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .empty_alternates(true)
            .build()
            .map_err(|e| FileError::Invalid(format!("invalid pattern {pattern}: {e}")))?
            .compile_matcher();
        Ok(Self {
            glob,
            relative: pattern.contains('/') || pattern.contains("**"),
        })
    }

    /// Whether `rel` (relative to the search root) matches.
    pub fn matches(&self, rel: &Path) -> bool {
        rel.file_name().is_some_and(|b| self.glob.is_match(b))
            || (self.relative && self.glob.is_match(rel))
    }
}

/// Finds every non-directory under `root` matching `pattern`, in lexical
/// order. Unreadable directories are skipped, links are not followed.
pub fn search(root: &Path, pattern: &Pattern, limit: usize) -> Result<Found, FileError> {
    fs::metadata(root)
        .map_err(|e| FileError::io(format!("error accessing path {}", root.display()), e))?;
    let mut found = Found::default();
    let mut names = Names::default();
    let walk = WalkDir::new(root).follow_links(false).sort_by_file_name();
    for entry in walk {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %e, "search skips an unreadable path");
                continue;
            }
        };
        if entry.file_type().is_dir() {
            continue;
        }
        let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
        let rel = if rel.as_os_str().is_empty() {
            Path::new(entry.file_name())
        } else {
            rel
        };
        if !pattern.matches(rel) {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e)
                if e.io_error()
                    .is_some_and(|e| e.kind() == io::ErrorKind::NotFound) =>
            {
                continue
            }
            Err(_) => continue,
        };
        if found.entries.len() == limit {
            found.truncated = true;
            break;
        }
        found.entries.push(names.info(entry.path(), &meta));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, path: &str) -> bool {
        Pattern::new(p).unwrap().matches(Path::new(path))
    }

    #[test]
    fn basename_and_relative_matching() {
        assert!(m("*.txt", "a/b/alpha.txt"));
        assert!(!m("*.txt", "a/beta.log"));
        assert!(m("**/*.py", "a.py"));
        assert!(m("**", "x/y/z"));
        assert!(m("src/*.rs", "src/main.rs"));
        assert!(!m("src/*.rs", "src/x/main.rs"));
        assert!(m("src/**/*.rs", "src/x/main.rs"));
        assert!(m("*", ".hidden"));
        assert!(m("{a,b}.c", "b.c"));
        assert!(m("[!x]y", "zy"));
        assert!(!m("[!x]y", "xy"));
        assert!(Pattern::new("[abc").is_err());
        assert!(Pattern::new("{a,b").is_err());
    }
}
