//! Path and variable expansion as upstream does it: `$NAME` and `${NAME}`
//! must be defined (or the path is rejected, naming the missing variables),
//! and a leading `~` is the home directory.

/// Why a path could not be expanded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    /// `$VAR` references to variables that are not set, sorted.
    #[error("path references undefined environment variables: {}", .0.join(","))]
    Undefined(Vec<String>),
    /// The path contains a NUL byte.
    #[error("path contains a NUL byte")]
    Nul,
}

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Expands `$NAME`, `${NAME}` and a leading `~` in `path`; every referenced
/// variable must be defined by `lookup`.
pub fn expand_path(
    path: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, PathError> {
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut missing = Vec::new();
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        let (name, end) = if b.get(i + 1) == Some(&b'{') {
            match path[i + 2..].find('}') {
                Some(close)
                    if close > 0
                        && is_name_start(b[i + 2])
                        && b[i + 2..i + 2 + close].iter().all(|c| is_name_char(*c)) =>
                {
                    (&path[i + 2..i + 2 + close], i + 3 + close)
                }
                _ => {
                    i += 1;
                    continue;
                }
            }
        } else if b.get(i + 1).is_some_and(|c| is_name_start(*c)) {
            let len = b[i + 1..].iter().take_while(|c| is_name_char(**c)).count();
            (&path[i + 1..=i + len], i + 1 + len)
        } else {
            i += 1;
            continue;
        };
        out.push_str(&path[last..i]);
        match lookup(name) {
            Some(v) => out.push_str(&v),
            None => {
                if !missing.iter().any(|m| m == name) {
                    missing.push(name.to_string());
                }
            }
        }
        i = end;
        last = end;
    }
    out.push_str(&path[last..]);
    if !missing.is_empty() {
        missing.sort();
        return Err(PathError::Undefined(missing));
    }
    if out == "~" || out.starts_with("~/") {
        let home = lookup("HOME").unwrap_or_else(|| "/root".into());
        out.replace_range(..1, &home);
    }
    Ok(out)
}

/// Go's `os.Expand`: `$NAME` and `${NAME}` are replaced by `lookup` (empty
/// when undefined); a `$` followed by nothing usable is kept.
pub fn expand_env(s: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        if b[i] != b'$' || i + 1 >= b.len() {
            i += 1;
            continue;
        }
        out.push_str(&s[last..i]);
        let c = b[i + 1];
        let (name, end): (&str, usize) = if c == b'{' {
            match s[i + 2..].find('}') {
                Some(close) => (&s[i + 2..i + 2 + close], i + 3 + close),
                None => ("", b.len()), // Go eats an unterminated "${...".
            }
        } else if b"*#$@!?-".contains(&c) || c.is_ascii_digit() {
            (&s[i + 1..i + 2], i + 2)
        } else if is_name_char(c) {
            let len = b[i + 1..].iter().take_while(|c| is_name_char(**c)).count();
            (&s[i + 1..=i + len], i + 1 + len)
        } else {
            out.push('$');
            i += 1;
            last = i;
            continue;
        };
        if !name.is_empty() {
            out.push_str(&lookup(name).unwrap_or_default());
        }
        i = end;
        last = end;
    }
    out.push_str(&s[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "HOME" => Some("/home/u".into()),
            "BASE_DIR" => Some("base".into()),
            "MID" => Some("m".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_paths() {
        assert_eq!(
            expand_path("~/docs/$BASE_DIR", env).unwrap(),
            "/home/u/docs/base"
        );
        assert_eq!(
            expand_path("prefix/${MID}/suffix", env).unwrap(),
            "prefix/m/suffix"
        );
        assert_eq!(expand_path("~", env).unwrap(), "/home/u");
        assert_eq!(expand_path("/a/~b/$", env).unwrap(), "/a/~b/$");
        assert_eq!(expand_path("/price/$5", env).unwrap(), "/price/$5");
    }

    #[test]
    fn undefined_variables_are_named_sorted() {
        assert_eq!(
            expand_path("/$ZED/${ALPHA}/$ZED", env),
            Err(PathError::Undefined(vec!["ALPHA".into(), "ZED".into()]))
        );
        assert_eq!(
            expand_path("/$ZED", env).unwrap_err().to_string(),
            "path references undefined environment variables: ZED"
        );
        assert_eq!(expand_path("/a\0b", env), Err(PathError::Nul));
    }

    #[test]
    fn expand_env_like_go() {
        assert_eq!(expand_env("$HOME/x:${MID}:$NOPE:$", env), "/home/u/x:m::$");
        assert_eq!(expand_env("a $ b", env), "a $ b");
        assert_eq!(expand_env("$1x", env), "x");
    }
}
