//! Turning a request's path into a filesystem path, as upstream does:
//! `$VAR`, `${VAR}` and `~` expansion against execd's environment, then
//! (for most routes) making it absolute against execd's working directory and
//! cleaning `.` and `..` lexically.

use std::path::{Component, Path, PathBuf};

use super::FileError;
use crate::command::env::Env;
use crate::pathutil::expand_path;

/// Expands `raw` (`ExpandPath`): the result may stay relative to execd's cwd.
pub fn expand(raw: &str, env: &Env) -> Result<PathBuf, FileError> {
    let s = expand_path(raw, |k| env.get(k).map(String::from))
        .map_err(|e| FileError::BadPath(format!("{raw}: {e}")))?;
    if s.is_empty() {
        return Err(FileError::BadPath("path is empty".into()));
    }
    Ok(PathBuf::from(s))
}

/// Expands `raw` and makes it absolute and clean (`ExpandAbsPath`).
pub fn expand_abs(raw: &str, env: &Env) -> Result<PathBuf, FileError> {
    let p = expand(raw, env)?;
    let joined = if p.is_absolute() {
        p
    } else {
        std::env::current_dir()
            .map_err(|e| FileError::Io {
                context: format!("error converting path {raw} to absolute"),
                source: e,
            })?
            .join(p)
    };
    Ok(clean(&joined))
}

/// Lexical cleaning like Go's `filepath.Clean` for absolute paths: `.` is
/// dropped, `..` removes the previous component (never above `/`).
pub fn clean(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_like_go() {
        assert_eq!(clean(Path::new("/a/./b/../c/")), Path::new("/a/c"));
        assert_eq!(clean(Path::new("/../..")), Path::new("/"));
        assert_eq!(clean(Path::new("/a//b")), Path::new("/a/b"));
    }

    #[test]
    fn expands_and_rejects() {
        let env = Env::from_pairs([("HOME".into(), "/home/u".into()), ("D".into(), "x".into())]);
        assert_eq!(
            expand_abs("~/$D/../y", &env).unwrap(),
            Path::new("/home/u/y")
        );
        assert_eq!(expand("rel/${D}", &env).unwrap(), Path::new("rel/x"));
        assert!(
            matches!(expand("/a/$NOPE", &env), Err(FileError::BadPath(m)) if m.contains("NOPE"))
        );
        assert!(matches!(expand("/a\0b", &env), Err(FileError::BadPath(_))));
        assert!(matches!(expand("", &env), Err(FileError::BadPath(_))));
    }
}
