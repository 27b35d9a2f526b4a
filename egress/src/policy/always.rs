//! The operator's overlay: `deny.always` and `allow.always` in the rules
//! directory (`/var/egress/rules`), one target per line, `#` comments. They
//! come before the user's rules (deny.always, then allow.always, then the
//! user's, first match wins), are never returned by GET, never persisted and
//! not counted against the rule limit. A bad line is an error at start; on a
//! reload it is a warning and the previous overlay stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{parse_target, Action, Policy, Rule};

/// The overlay rules and what the files looked like when read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Always {
    /// deny.always rules, then allow.always rules.
    pub rules: Vec<Arc<Rule>>,
    stamp: Vec<Option<(i64, u64)>>,
}

fn stamp(path: &Path) -> Option<(i64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.mtime_nsec() + m.mtime() * 1_000_000_000, m.size()))
}

/// Parses one file's text into rules with `action`.
pub fn parse(text: &str, action: Action, file: &str) -> Result<Vec<Arc<Rule>>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.split('#').next().unwrap_or("").trim();
        if t.is_empty() {
            continue;
        }
        let parsed = parse_target(t).map_err(|e| format!("{file}:{}: {t:?}: {e}", n + 1))?;
        out.push(Arc::new(Rule {
            action,
            target: t.to_string(),
            parsed,
        }));
    }
    Ok(out)
}

impl Always {
    fn files(dir: &Path) -> [(PathBuf, Action); 2] {
        [
            (dir.join("deny.always"), Action::Deny),
            (dir.join("allow.always"), Action::Allow),
        ]
    }

    /// Reads the overlay from `dir` (missing files are empty).
    pub fn load(dir: &Path) -> Result<Self, String> {
        let mut rules = Vec::new();
        let mut stamps = Vec::new();
        for (path, action) in Self::files(dir) {
            stamps.push(stamp(&path));
            match std::fs::read_to_string(&path) {
                Ok(text) => rules.extend(parse(&text, action, &path.display().to_string())?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        Ok(Self {
            rules,
            stamp: stamps,
        })
    }

    /// Whether the files changed since this overlay was read.
    pub fn changed(&self, dir: &Path) -> bool {
        Self::files(dir)
            .iter()
            .map(|(p, _)| stamp(p))
            .collect::<Vec<_>>()
            != self.stamp
    }

    /// The effective policy: the overlay before `user`'s rules (`user`
    /// itself when there is no overlay).
    pub fn apply_to(&self, user: &Arc<Policy>) -> Arc<Policy> {
        if self.rules.is_empty() {
            return Arc::clone(user);
        }
        let mut egress = self.rules.clone();
        egress.extend(user.egress.iter().cloned());
        Arc::new(Policy {
            default_action: user.default_action,
            egress,
        })
    }
}

/// Reads `log_skip.always` from `dir`: names (exact or `*.` wildcard) whose
/// successful lookups are not logged. An IP or CIDR line is an error, as
/// upstream. None when the file is missing or empty.
pub fn load_log_skip(dir: &Path) -> Result<Option<super::matcher::Matcher>, String> {
    let path = dir.join("log_skip.always");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let rules = parse(&text, Action::Allow, &path.display().to_string())?;
    if let Some(r) = rules
        .iter()
        .find(|r| matches!(r.parsed, super::Target::Ip(_) | super::Target::Cidr(..)))
    {
        return Err(format!(
            "{}: {:?}: only names, not addresses",
            path.display(),
            r.target
        ));
    }
    Ok((!rules.is_empty()).then(|| {
        super::matcher::Matcher::new(Policy {
            default_action: Action::Deny,
            egress: rules,
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_comes_first() {
        let dir = std::env::temp_dir().join(format!("egress-always-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("deny.always"),
            "# blocked for everyone\nevil.example\n\n10.0.0.0/8 # corp\n",
        )
        .unwrap();
        let a = Always::load(&dir).unwrap();
        assert!(!a.changed(&dir));
        let user = Policy::parse(
            br#"{"defaultAction":"allow","egress":[{"action":"allow","target":"evil.example"}]}"#,
        )
        .unwrap();
        let user = Arc::new(user);
        let eff = a.apply_to(&user);
        assert_eq!(eff.egress.len(), 3);
        // Without an overlay the user's policy is the effective one, shared.
        assert!(Arc::ptr_eq(&Always::default().apply_to(&user), &user));
        assert_eq!(
            (eff.egress[0].action, eff.egress[0].target.as_str()),
            (Action::Deny, "evil.example")
        );
        assert_eq!(eff.default_action, Action::Allow);
        std::fs::write(dir.join("allow.always"), "*.good.example\n").unwrap();
        assert!(a.changed(&dir));
        assert_eq!(Always::load(&dir).unwrap().rules[2].action, Action::Allow);
        std::fs::write(dir.join("allow.always"), "a..b\n").unwrap();
        assert!(Always::load(&dir).unwrap_err().contains("allow.always:1"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(Always::load(&dir).unwrap().rules, vec![]);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("log_skip.always"),
            "*.noisy.example\nquiet.example\n",
        )
        .unwrap();
        let skip = load_log_skip(&dir).unwrap().unwrap();
        assert!(skip.decide_name("a.noisy.example.").rule.is_some());
        assert!(skip.decide_name("other.example").rule.is_none());
        std::fs::write(dir.join("log_skip.always"), "10.0.0.1\n").unwrap();
        assert!(load_log_skip(&dir).unwrap_err().contains("only names"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
