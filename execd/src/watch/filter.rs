//! Which paths a watch reports: the `pattern` glob and, for a file watch,
//! only the watched file.

use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};

/// How `pattern` is matched.
#[derive(Debug, Clone)]
struct Glob {
    matcher: GlobMatcher,
    /// Against the path relative to the watched root (the pattern has a `/`
    /// or `**`), else against the basename.
    relative: bool,
}

/// Decides whether a changed path is reported.
#[derive(Debug, Clone)]
pub struct Filter {
    root: PathBuf,
    /// A file watch reports this path only.
    file: bool,
    glob: Option<Glob>,
}

impl Filter {
    /// A filter for a watch of the directory `root`, with an optional glob.
    /// An empty pattern matches everything. The error names the pattern and
    /// what is wrong with it.
    pub fn new(root: &Path, pattern: Option<&str>) -> Result<Self, String> {
        let glob = match pattern.filter(|p| !p.is_empty()) {
            None => None,
            Some(p) => {
                let matcher = GlobBuilder::new(p)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| format!("invalid pattern '{p}': {}", e.kind()))?
                    .compile_matcher();
                Some(Glob {
                    matcher,
                    relative: p.contains('/') || p.contains("**"),
                })
            }
        };
        Ok(Self {
            root: root.to_path_buf(),
            file: false,
            glob,
        })
    }

    /// The same filter for a watch of the file `root`: only it is reported.
    #[must_use]
    pub fn for_file(mut self, file: bool) -> Self {
        self.file = file;
        self
    }

    /// Whether a pattern narrows a directory watch (so that the contents of a
    /// renamed directory may change visibility).
    pub fn narrows_dir(&self) -> bool {
        !self.file && self.glob.is_some()
    }

    /// Whether a change of `path` is reported. The root of a directory watch
    /// always is; paths outside the root never are.
    pub fn matches(&self, path: &Path) -> bool {
        if self.file {
            return path == self.root && self.glob_matches(path, file_name(path));
        }
        if path == self.root {
            return true;
        }
        match path.strip_prefix(&self.root) {
            Ok(rel) => self.glob_matches(rel, file_name(path)),
            Err(_) => false,
        }
    }

    fn glob_matches(&self, rel: &Path, base: &Path) -> bool {
        match &self.glob {
            None => true,
            Some(g) if g.relative => g.matcher.is_match(rel),
            Some(g) => g.matcher.is_match(base),
        }
    }
}

/// The last component, or the whole path when it has none.
fn file_name(path: &Path) -> &Path {
    path.file_name().map_or(path, Path::new)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn basename_and_relative_patterns() {
        let f = Filter::new(Path::new("/w"), Some("*.py")).unwrap();
        assert!(f.matches(Path::new("/w/a.py")));
        assert!(f.matches(Path::new("/w/sub/deep/b.py")));
        assert!(!f.matches(Path::new("/w/a.txt")));
        assert!(f.matches(Path::new("/w")), "the root itself");
        assert!(!f.matches(Path::new("/other/a.py")));

        let f = Filter::new(Path::new("/w"), Some("src/*.rs")).unwrap();
        assert!(f.matches(Path::new("/w/src/a.rs")));
        assert!(!f.matches(Path::new("/w/src/x/a.rs")));
        assert!(!f.matches(Path::new("/w/a.rs")));

        let f = Filter::new(Path::new("/w"), Some("**/t/*.txt")).unwrap();
        assert!(f.matches(Path::new("/w/t/a.txt")));
        assert!(f.matches(Path::new("/w/x/y/t/a.txt")));

        let f = Filter::new(Path::new("/w"), Some("")).unwrap();
        assert!(f.matches(Path::new("/w/anything")));
    }

    #[test]
    fn file_watch_sees_only_the_file() {
        let f = Filter::new(Path::new("/w/a.py"), None)
            .unwrap()
            .for_file(true);
        assert!(f.matches(Path::new("/w/a.py")));
        assert!(!f.matches(Path::new("/w/b.py")));
        assert!(!f.matches(Path::new("/w")));
        let f = Filter::new(Path::new("/w/a.py"), Some("*.txt"))
            .unwrap()
            .for_file(true);
        assert!(!f.matches(Path::new("/w/a.py")));
    }

    #[test]
    fn bad_pattern() {
        let e = Filter::new(Path::new("/w"), Some("a[")).unwrap_err();
        assert!(e.starts_with("invalid pattern 'a[': "), "{e}");
    }
}
