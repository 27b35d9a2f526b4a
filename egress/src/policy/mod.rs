//! The network policy: its wire form, validation, and the PATCH/DELETE
//! operations, with upstream's semantics (first matching rule wins; PATCH
//! puts the new rules first, deduplicated by target; DELETE removes every
//! rule with a given target) and without upstream's guesses (a rule without
//! an action, an unknown `defaultAction`, a misplaced wildcard or an invalid
//! name are rejected).

pub mod always;
pub mod matcher;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

/// Longest domain name (RFC 1035), without the trailing dot.
pub const MAX_NAME_LEN: usize = 253;
/// Longest label.
pub const MAX_LABEL_LEN: usize = 63;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let it out.
    Allow,
    /// Refuse it.
    Deny,
}

impl Action {
    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "allow" => Some(Self::Allow),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }

    /// `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// What a rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// One name, lowercased, without a trailing dot.
    Domain(String),
    /// Every name strictly below this suffix (`*.example.com` → `example.com`).
    Wildcard(String),
    /// One address.
    Ip(IpAddr),
    /// A network (address masked to the prefix).
    Cidr(IpAddr, u8),
}

/// One rule as given (the target text is kept for GET) and as understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Allow or deny.
    pub action: Action,
    /// The target as the client wrote it (trimmed).
    pub target: String,
    /// The parsed target.
    pub parsed: Target,
}

/// The user's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// What happens when no rule matches.
    pub default_action: Action,
    /// Rules, first match wins. Shared: a PATCH onto thousands of rules
    /// copies pointers, not rules.
    pub egress: Vec<Arc<Rule>>,
}

impl Default for Policy {
    /// Deny everything, as upstream does without a policy.
    fn default() -> Self {
        Self {
            default_action: Action::Deny,
            egress: Vec::new(),
        }
    }
}

/// Why a policy or a change to it is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not JSON, or not the expected shape.
    #[error("{0}")]
    Malformed(String),
    /// `defaultAction` is neither allow nor deny.
    #[error("unsupported defaultAction {0:?}: must be \"allow\" or \"deny\"")]
    DefaultAction(String),
    /// A rule's action is missing or unknown.
    #[error("rule {index}: unsupported action {action:?}: must be \"allow\" or \"deny\"")]
    Action {
        /// Position of the rule.
        index: usize,
        /// The action given.
        action: String,
    },
    /// A rule's target is unusable.
    #[error("rule {index}: invalid target {target:?}: {reason}")]
    Target {
        /// Position of the rule.
        index: usize,
        /// The target given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Too many rules.
    #[error("egress rule total count {count} exceeds limit {limit}")]
    TooMany {
        /// Rules there would be.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// An empty PATCH or DELETE.
    #[error("empty array")]
    Empty,
}

/// Looks a key up the way Go's `encoding/json` does: exact first, then
/// case-insensitively.
fn field<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn string_field(
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<String>, PolicyError> {
    match field(obj, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(PolicyError::Malformed(format!(
            "{key}: expected a string, got {other}"
        ))),
    }
}

/// Parses a target: an IP, a CIDR, a domain or a `*.` wildcard.
pub fn parse_target(raw: &str) -> Result<Target, String> {
    let t = raw.trim();
    if t.is_empty() {
        return Err("target cannot be empty".into());
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(Target::Ip(ip));
    }
    if let Some((addr, len)) = t.split_once('/') {
        let ip: IpAddr = addr.parse().map_err(|_| "not an IP network".to_string())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("prefix length must be 0..={max}"))?;
        return Ok(Target::Cidr(mask(ip, len), len));
    }
    let lower = t.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    let (wild, name) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    validate_name(name)?;
    Ok(if wild {
        Target::Wildcard(name.to_string())
    } else {
        Target::Domain(name.to_string())
    })
}

/// Checks a domain name (without wildcard and trailing dot).
fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty domain name".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("domain name longer than {MAX_NAME_LEN} characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label".into());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!("label longer than {MAX_LABEL_LEN} characters"));
        }
        if label.contains('*') {
            return Err("a wildcard is only allowed as a leading \"*.\"".into());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("a domain name has only letters, digits, '-' and '_'".into());
        }
    }
    Ok(())
}

/// The network address of `ip` with a `len`-bit prefix.
pub fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

fn parse_rule(index: usize, v: &Value) -> Result<Rule, PolicyError> {
    let obj = v
        .as_object()
        .ok_or_else(|| PolicyError::Malformed(format!("rule {index}: expected an object")))?;
    let action_raw = string_field(obj, "action")?.unwrap_or_default();
    let action = Action::parse(&action_raw).ok_or(PolicyError::Action {
        index,
        action: action_raw,
    })?;
    let target_raw = string_field(obj, "target")?.unwrap_or_default();
    let target = target_raw.trim().to_string();
    let parsed = parse_target(&target).map_err(|reason| PolicyError::Target {
        index,
        target: target_raw.clone(),
        reason,
    })?;
    Ok(Rule {
        action,
        target,
        parsed,
    })
}

/// Parses a list of rules (a PATCH body, or a policy's `egress`).
pub fn parse_rules(v: &Value) -> Result<Vec<Arc<Rule>>, PolicyError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, r)| parse_rule(i, r).map(Arc::new))
            .collect(),
        other => Err(PolicyError::Malformed(format!(
            "expected an array of rules, got {other}"
        ))),
    }
}

/// Whether `lowered` (lowercase strings) holds `target` in any case, without
/// allocating for the usual lowercase target (a PATCH or DELETE checks every
/// rule in force).
fn contains_caseless(lowered: &HashSet<String>, target: &str) -> bool {
    if lowered.len() <= 8 {
        lowered.iter().any(|l| l.eq_ignore_ascii_case(target))
    } else if target.bytes().any(|b| b.is_ascii_uppercase()) {
        lowered.contains(&target.to_ascii_lowercase())
    } else {
        lowered.contains(target)
    }
}

impl Policy {
    /// Parses a `NetworkPolicy` JSON document. Empty input, `null` and `{}`
    /// are the default deny-all policy, as upstream.
    pub fn parse(body: &[u8]) -> Result<Self, PolicyError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let v: Value =
            serde_json::from_slice(body).map_err(|e| PolicyError::Malformed(e.to_string()))?;
        Self::from_value(&v)
    }

    /// Parses a `NetworkPolicy` from JSON.
    pub fn from_value(v: &Value) -> Result<Self, PolicyError> {
        let obj = match v {
            Value::Null => return Ok(Self::default()),
            Value::Object(o) => o,
            other => {
                return Err(PolicyError::Malformed(format!(
                    "expected a policy object, got {other}"
                )))
            }
        };
        let default_action = match string_field(obj, "defaultAction")? {
            None => Action::Deny,
            Some(s) if s.trim().is_empty() => Action::Deny,
            Some(s) => Action::parse(&s).ok_or(PolicyError::DefaultAction(s))?,
        };
        let egress = parse_rules(field(obj, "egress").unwrap_or(&Value::Null))?;
        Ok(Self {
            default_action,
            egress,
        })
    }

    /// PATCH: the new rules first (deduplicated by lowercased target, first
    /// wins), then the old rules whose target the patch does not name.
    pub fn patched(&self, patch: Vec<Arc<Rule>>) -> Result<Self, PolicyError> {
        if patch.is_empty() {
            return Err(PolicyError::Empty);
        }
        let mut seen = HashSet::new();
        let mut egress = Vec::with_capacity(patch.len() + self.egress.len());
        for r in patch {
            if seen.insert(r.target.to_ascii_lowercase()) {
                egress.push(r);
            }
        }
        for r in &self.egress {
            if !contains_caseless(&seen, &r.target) {
                egress.push(Arc::clone(r));
            }
        }
        Ok(Self {
            default_action: self.default_action,
            egress,
        })
    }

    /// DELETE: removes every rule whose target equals one of `targets`
    /// (case-insensitively). Returns the new policy and how many rules went.
    pub fn without(&self, targets: &[String]) -> Result<(Self, usize), PolicyError> {
        if targets.is_empty() {
            return Err(PolicyError::Empty);
        }
        let drop: HashSet<String> = targets
            .iter()
            .map(|t| t.trim().to_ascii_lowercase())
            .collect();
        let egress: Vec<Arc<Rule>> = self
            .egress
            .iter()
            .filter(|r| !contains_caseless(&drop, &r.target))
            .cloned()
            .collect();
        let removed = self.egress.len() - egress.len();
        Ok((
            Self {
                default_action: self.default_action,
                egress,
            },
            removed,
        ))
    }

    /// Checks the rule count against `limit` (0 = unlimited).
    pub fn check_limit(&self, limit: usize) -> Result<(), PolicyError> {
        if limit > 0 && self.egress.len() > limit {
            return Err(PolicyError::TooMany {
                count: self.egress.len(),
                limit,
            });
        }
        Ok(())
    }

    /// Upstream's `mode`: `deny_all`, `allow_all` or `enforcing`.
    pub fn mode(&self) -> &'static str {
        match (self.default_action, self.egress.is_empty()) {
            (Action::Deny, true) => "deny_all",
            (Action::Allow, true) => "allow_all",
            _ => "enforcing",
        }
    }

    /// The wire form: `{"egress":[{"action","target"}],"defaultAction"}`
    /// in upstream's key order; `egress` is `[]`, never `null`.
    pub fn wire(&self) -> PolicyWire<'_> {
        PolicyWire {
            egress: self
                .egress
                .iter()
                .map(|r| RuleWire {
                    action: r.action,
                    target: &r.target,
                })
                .collect(),
            default_action: self.default_action,
        }
    }
}

/// The wire form of a policy.
#[derive(Debug, Serialize)]
pub struct PolicyWire<'a> {
    egress: Vec<RuleWire<'a>>,
    #[serde(rename = "defaultAction")]
    default_action: Action,
}

/// The wire form of a rule.
#[derive(Debug, Serialize)]
struct RuleWire<'a> {
    action: Action,
    target: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(v: Value) -> Vec<Arc<Rule>> {
        parse_rules(&v).unwrap()
    }

    #[test]
    fn empty_and_null_are_deny_all() {
        for body in [&b""[..], b"  ", b"null", b"{}"] {
            let p = Policy::parse(body).unwrap();
            assert_eq!(p, Policy::default());
            assert_eq!(p.mode(), "deny_all");
        }
        assert_eq!(
            serde_json::to_string(&Policy::default().wire()).unwrap(),
            r#"{"egress":[],"defaultAction":"deny"}"#
        );
    }

    #[test]
    fn keys_are_case_insensitive_and_unknown_keys_ignored() {
        let p = Policy::parse(br#"{"DefaultAction":"ALLOW","Egress":[{"Action":"deny","Target":"Example.com"}],"x":1}"#)
            .unwrap();
        assert_eq!(p.default_action, Action::Allow);
        assert_eq!(p.egress[0].target, "Example.com");
        assert_eq!(p.egress[0].parsed, Target::Domain("example.com".into()));
        assert_eq!(p.mode(), "enforcing");
    }

    #[test]
    fn rejects_what_upstream_guesses() {
        assert_eq!(
            Policy::parse(br#"{"defaultAction":"block"}"#).unwrap_err(),
            PolicyError::DefaultAction("block".into())
        );
        assert!(matches!(
            Policy::parse(br#"{"egress":[{"target":"a.com"}]}"#),
            Err(PolicyError::Action { index: 0, .. })
        ));
        assert!(matches!(
            Policy::parse(br#"{"egress":[{"action":"permit","target":"a.com"}]}"#),
            Err(PolicyError::Action { .. })
        ));
        for bad in [
            "",
            "a.*.com",
            "*example.com",
            "*",
            "https://x.com",
            "a b.com",
            "10.0.0.0/33",
            "10.0.0.0/x",
            "a..com",
        ] {
            let body = json!({"egress": [{"action": "allow", "target": bad}]}).to_string();
            assert!(
                matches!(
                    Policy::parse(body.as_bytes()),
                    Err(PolicyError::Target { .. })
                ),
                "{bad:?}"
            );
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(parse_target(&long).is_err());
        let too_long = vec!["abcdefghi"; 26].join(".");
        assert!(too_long.len() > MAX_NAME_LEN && parse_target(&too_long).is_err());
        assert!(Policy::parse(b"[1]").is_err());
        assert!(Policy::parse(b"{").is_err());
    }

    #[test]
    fn targets() {
        assert_eq!(
            parse_target(" 10.1.2.3 ").unwrap(),
            Target::Ip("10.1.2.3".parse().unwrap())
        );
        assert_eq!(
            parse_target("10.1.2.3/8").unwrap(),
            Target::Cidr("10.0.0.0".parse().unwrap(), 8)
        );
        assert_eq!(
            parse_target("2001:db8::1/32").unwrap(),
            Target::Cidr("2001:db8::".parse().unwrap(), 32)
        );
        assert_eq!(
            parse_target("*.Example.COM").unwrap(),
            Target::Wildcard("example.com".into())
        );
        assert_eq!(
            parse_target("example.com.").unwrap(),
            Target::Domain("example.com".into())
        );
    }

    #[test]
    fn patch_prepends_and_dedupes() {
        let p = Policy {
            default_action: Action::Deny,
            egress: rules(
                json!([{"action":"allow","target":"a.com"},{"action":"allow","target":"b.com"}]),
            ),
        };
        let patched = p
            .patched(rules(json!([{"action":"deny","target":"B.com"},{"action":"allow","target":"b.com"},{"action":"allow","target":"c.com"}])))
            .unwrap();
        let got: Vec<(&str, &str)> = patched
            .egress
            .iter()
            .map(|r| (r.action.as_str(), r.target.as_str()))
            .collect();
        assert_eq!(
            got,
            [("deny", "B.com"), ("allow", "c.com"), ("allow", "a.com")]
        );
        assert_eq!(p.patched(vec![]).unwrap_err(), PolicyError::Empty);
        // A large patch (hashed rather than scanned) against targets in any case.
        let old = Policy {
            default_action: Action::Deny,
            egress: rules(
                json!([{"action":"allow","target":"X5.com"},{"action":"allow","target":"keep.com"},{"action":"allow","target":"x7.COM"}]),
            ),
        };
        let many: Vec<Value> = (0..20)
            .map(|i| json!({"action":"deny","target":format!("x{i}.com")}))
            .collect();
        let patched = old.patched(rules(Value::Array(many))).unwrap();
        assert_eq!(patched.egress.len(), 21);
        assert_eq!(patched.egress[20].target, "keep.com");
        let (gone, n) = patched
            .without(&(0..10).map(|i| format!("X{i}.Com")).collect::<Vec<_>>())
            .unwrap();
        assert_eq!((n, gone.egress.len()), (10, 11));
    }

    #[test]
    fn delete_removes_every_match() {
        let p = Policy {
            default_action: Action::Allow,
            egress: rules(
                json!([{"action":"deny","target":"a.com"},{"action":"deny","target":"A.com"},{"action":"deny","target":"10.0.0.0/8"}]),
            ),
        };
        let (q, n) = p.without(&[" a.COM ".into(), "nope".into()]).unwrap();
        assert_eq!(n, 2);
        assert_eq!(q.egress.len(), 1);
        assert!(p.without(&[]).is_err());
    }

    #[test]
    fn limit() {
        let p = Policy {
            default_action: Action::Deny,
            egress: rules(
                json!([{"action":"allow","target":"a.com"},{"action":"allow","target":"b.com"}]),
            ),
        };
        assert!(p.check_limit(2).is_ok());
        assert!(p.check_limit(0).is_ok());
        assert_eq!(
            p.check_limit(1).unwrap_err(),
            PolicyError::TooMany { count: 2, limit: 1 }
        );
    }
}
