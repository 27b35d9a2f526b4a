//! The environment of a `/command` run, in increasing priority: execd's own
//! environment, the `EXECD_ENVS` file (re-read for every command), and the
//! request's `envs`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::pathutil::expand_env;

/// An ordered environment: later entries replace earlier ones by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env(Vec<(String, String)>);

impl Env {
    /// Builds from `(key, value)` pairs; duplicates keep the last value.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut env = Self::default();
        for (k, v) in pairs {
            env.set(k, v);
        }
        env
    }

    /// Sets `key`, replacing an existing value in place.
    pub fn set(&mut self, key: String, value: String) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All pairs, in order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

/// Parses the `EXECD_ENVS` file format: trimmed `KEY=VALUE` lines, `#`
/// comments and blank lines skipped, values expanded against `base`
/// (Go's `os.ExpandEnv`). Malformed lines are skipped with a warning.
pub fn parse_env_file(text: &str, base: &Env) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                let value = expand_env(v, |name| base.get(name).map(String::from));
                out.push((k.trim().to_string(), value));
            }
            _ => tracing::warn!(line, "skipping malformed line in EXECD_ENVS file"),
        }
    }
    out
}

/// The environment for one command.
pub fn command_env(
    base: &Env,
    envs_file: Option<&Path>,
    request: Option<&BTreeMap<String, String>>,
) -> Env {
    let mut env = base.clone();
    if let Some(path) = envs_file {
        if let Ok(text) = std::fs::read_to_string(path) {
            for (k, v) in parse_env_file(&text, base) {
                env.set(k, v);
            }
        }
    }
    for (k, v) in request.into_iter().flatten() {
        env.set(k.clone(), v.clone());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_and_expansion() {
        let base = Env::from_pairs([("HOME".into(), "/root".into()), ("A".into(), "base".into())]);
        let file = "# comment\n\n  A=file \nB=$HOME/x\nbroken line\nC=${NOPE}y\n";
        let dir = std::env::temp_dir().join(format!("execd-env-test-{}", std::process::id()));
        std::fs::write(&dir, file).unwrap();
        let req = BTreeMap::from([("B".to_string(), "req".to_string())]);
        let env = command_env(&base, Some(&dir), Some(&req));
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(env.get("A"), Some("file"));
        assert_eq!(env.get("B"), Some("req"));
        assert_eq!(env.get("C"), Some("y"));
        assert_eq!(env.pairs()[0], ("HOME".to_string(), "/root".to_string()));
    }
}
