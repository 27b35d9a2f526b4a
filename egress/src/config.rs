//! Configuration from upstream's environment variables, parsed once into
//! [`Config`]; tested with a map, not the process environment.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The auth token: prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The value, for the one comparison that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// What is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// DNS filtering only.
    Dns,
    /// DNS filtering plus nftables on every connection.
    DnsNft,
}

impl Mode {
    /// `dns` or `dns+nft`, as the API reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dns => "dns",
            Self::DnsNft => "dns+nft",
        }
    }
}

/// Everything egress is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    /// `OPENSANDBOX_EGRESS_MODE`: `dns` (default) or `dns+nft` (tokens in any order and case).
    pub mode: Mode,
    /// `OPENSANDBOX_EGRESS_RULES`: the initial policy as JSON.
    pub rules: Option<String>,
    /// `OPENSANDBOX_EGRESS_POLICY_FILE`: where the policy is kept across restarts.
    pub policy_file: Option<PathBuf>,
    /// `OPENSANDBOX_EGRESS_HTTP_ADDR` (default `:18080`, all interfaces).
    pub http_addr: SocketAddr,
    /// `OPENSANDBOX_EGRESS_TOKEN`: required `OPENSANDBOX-EGRESS-AUTH` value.
    pub token: Option<Token>,
    /// `OPENSANDBOX_EGRESS_MAX_RULES` (default 4096; 0 = unlimited).
    pub max_rules: usize,
    /// `OPENSANDBOX_EGRESS_LOG_LEVEL` (default `info`).
    pub log_level: String,
    /// `OPENSANDBOX_LOG_OUTPUT`: where log lines go (stdout, stderr, files).
    pub log_outputs: Vec<crate::logs::Output>,
    /// `OPENSANDBOX_EGRESS_DNS_UPSTREAM`: resolvers (literal IP[:port]); else from resolv.conf.
    pub dns_upstream: Vec<SocketAddr>,
    /// `OPENSANDBOX_EGRESS_DNS_UPSTREAM_TIMEOUT` seconds per upstream exchange (1..=120, default 5).
    pub dns_upstream_timeout: Duration,
    /// `OPENSANDBOX_EGRESS_DNS_ADDR` (extension): the DNS proxy's address (default 127.0.0.1:15353).
    pub dns_addr: SocketAddr,
    /// `OPENSANDBOX_EGRESS_RESOLV_CONF` (extension): where upstream resolvers are read from.
    pub resolv_conf: PathBuf,
    /// `OPENSANDBOX_EGRESS_EVENTS_MAX` (extension): refusals kept for `GET /events` (default 1024).
    pub events_max: usize,
    /// `OPENSANDBOX_EGRESS_REDIRECT` (extension, default on): redirect the
    /// namespace's DNS to the proxy; `off` when something else does (or in
    /// tests that must not touch the host's network namespace).
    pub redirect: bool,
    /// Directory of `deny.always` / `allow.always` (`OPENSANDBOX_EGRESS_RULES_DIR`,
    /// extension; default upstream's `/var/egress/rules`).
    pub rules_dir: PathBuf,
    /// How often the always files are checked for changes
    /// (`OPENSANDBOX_EGRESS_RULES_RELOAD_SEC`, extension; default 60).
    pub rules_reload: Duration,
    /// `OPENSANDBOX_EGRESS_BLOCK_DOH_443` (truthy: 1, true, yes, y, on): drop port 443
    /// (TCP and UDP/QUIC), to `doh_blocklist` if given, else everywhere.
    pub block_doh_443: bool,
    /// `OPENSANDBOX_EGRESS_DOH_BLOCKLIST`: IPs and CIDRs of DoH resolvers.
    pub doh_blocklist: Vec<(IpAddr, u8)>,
    /// `OPENSANDBOX_EGRESS_NAMESERVER_EXEMPT`: resolver IPs the sandbox may
    /// query directly (literal IPs; anything else is ignored, as upstream).
    pub nameserver_exempt: Vec<IpAddr>,
    /// `OPENSANDBOX_EGRESS_DNS_UPSTREAM_PROBE`: probe name (`.` = root NS).
    pub dns_probe: String,
    /// `OPENSANDBOX_EGRESS_DNS_UPSTREAM_PROBE_INTERVAL_SEC` (1..=3600, default 30).
    pub dns_probe_interval: Duration,
    /// `OPENSANDBOX_EGRESS_DENY_WEBHOOK`: URL told about every refused name.
    pub deny_webhook: Option<String>,
    /// `OPENSANDBOX_EGRESS_DENY_WEBHOOK_CA` (extension): extra trusted roots (PEM) for an https webhook.
    pub deny_webhook_ca: Option<PathBuf>,
    /// `OPENSANDBOX_EGRESS_SOCKET_UID` (extension, default 4000000000): owner of
    /// egress's sockets when it has no cgroup v2 of its own (a uid the sandbox
    /// must not be able to take).
    pub socket_uid: u32,
    /// Where metrics are pushed (OTLP/HTTP JSON): `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, `HOST_IP` or `/etc/hostinfo`, as upstream.
    pub metrics_endpoint: Option<String>,
    /// `OPENSANDBOX_EGRESS_METRICS_EXTRA_ATTRS` (`k=v,k2=v2`).
    pub metrics_attrs: Vec<(String, String)>,
    /// `OTEL_METRIC_EXPORT_INTERVAL` in milliseconds (default 60000).
    pub metrics_interval: Duration,
    /// `OPENSANDBOX_EGRESS_SANDBOX_ID`: `sandboxId` in webhook events.
    pub sandbox_id: String,
}

/// A configuration error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name}: {reason}")]
pub struct ConfigError {
    /// The variable.
    pub name: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// Default owner of egress's sockets in the socket-mark fallback.
pub const DEFAULT_SOCKET_UID: u32 = 4_000_000_000;

fn err(name: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        name,
        reason: reason.into(),
    }
}

/// Parses `ip`, `ip:port`, `[v6]` or `[v6]:port` (port 53 by default).
pub fn parse_resolver(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa);
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Some(SocketAddr::new(ip, 53));
    }
    None
}

fn parse_listen(name: &'static str, s: &str) -> Result<SocketAddr, ConfigError> {
    let s = s.trim();
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .map_err(|_| err(name, format!("invalid listen address {s:?}")))
}

impl Config {
    /// Parses the configuration from an environment lookup.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| {
            env(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mode = match get("OPENSANDBOX_EGRESS_MODE") {
            None => Mode::Dns,
            Some(m) => {
                let mut toks: Vec<String> = m
                    .split('+')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .collect();
                toks.sort();
                match toks
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .as_slice()
                {
                    ["dns"] => Mode::Dns,
                    ["dns", "nft"] => Mode::DnsNft,
                    _ => {
                        return Err(err(
                            "OPENSANDBOX_EGRESS_MODE",
                            format!("{m:?}: must be dns or dns+nft"),
                        ))
                    }
                }
            }
        };
        let dns_upstream = match get("OPENSANDBOX_EGRESS_DNS_UPSTREAM") {
            None => Vec::new(),
            Some(list) => {
                let mut out: Vec<SocketAddr> = Vec::new();
                for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let sa = parse_resolver(item).ok_or_else(|| {
                        err(
                            "OPENSANDBOX_EGRESS_DNS_UPSTREAM",
                            format!("{item:?} is not a literal IP[:port]"),
                        )
                    })?;
                    if !out.contains(&sa) {
                        out.push(sa);
                    }
                }
                out
            }
        };
        let timeout = get("OPENSANDBOX_EGRESS_DNS_UPSTREAM_TIMEOUT")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(5)
            .clamp(1, 120);
        Ok(Self {
            mode,
            rules: get("OPENSANDBOX_EGRESS_RULES"),
            policy_file: get("OPENSANDBOX_EGRESS_POLICY_FILE").map(PathBuf::from),
            http_addr: parse_listen(
                "OPENSANDBOX_EGRESS_HTTP_ADDR",
                &get("OPENSANDBOX_EGRESS_HTTP_ADDR").unwrap_or_else(|| ":18080".into()),
            )?,
            token: get("OPENSANDBOX_EGRESS_TOKEN").map(Token),
            max_rules: match get("OPENSANDBOX_EGRESS_MAX_RULES") {
                None => 4096,
                Some(v) => v.parse().unwrap_or(4096),
            },
            log_level: get("OPENSANDBOX_EGRESS_LOG_LEVEL").unwrap_or_else(|| "info".into()),
            log_outputs: crate::logs::parse(&get("OPENSANDBOX_LOG_OUTPUT").unwrap_or_default()),
            dns_upstream,
            dns_upstream_timeout: Duration::from_secs(timeout),
            dns_addr: parse_listen(
                "OPENSANDBOX_EGRESS_DNS_ADDR",
                &get("OPENSANDBOX_EGRESS_DNS_ADDR").unwrap_or_else(|| "127.0.0.1:15353".into()),
            )?,
            resolv_conf: get("OPENSANDBOX_EGRESS_RESOLV_CONF")
                .map_or_else(|| PathBuf::from("/etc/resolv.conf"), PathBuf::from),
            rules_dir: get("OPENSANDBOX_EGRESS_RULES_DIR")
                .map_or_else(|| PathBuf::from("/var/egress/rules"), PathBuf::from),
            rules_reload: Duration::from_secs(
                get("OPENSANDBOX_EGRESS_RULES_RELOAD_SEC")
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .unwrap_or(60),
            ),
            nameserver_exempt: get("OPENSANDBOX_EGRESS_NAMESERVER_EXEMPT")
                .map(|l| l.split(',').filter_map(|s| s.trim().parse().ok()).collect())
                .unwrap_or_default(),
            dns_probe: get("OPENSANDBOX_EGRESS_DNS_UPSTREAM_PROBE").unwrap_or_else(|| ".".into()),
            dns_probe_interval: Duration::from_secs(
                get("OPENSANDBOX_EGRESS_DNS_UPSTREAM_PROBE_INTERVAL_SEC")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(30)
                    .clamp(1, 3600),
            ),
            deny_webhook: get("OPENSANDBOX_EGRESS_DENY_WEBHOOK"),
            sandbox_id: get("OPENSANDBOX_EGRESS_SANDBOX_ID").unwrap_or_default(),
            deny_webhook_ca: get("OPENSANDBOX_EGRESS_DENY_WEBHOOK_CA").map(PathBuf::from),
            socket_uid: match get("OPENSANDBOX_EGRESS_SOCKET_UID") {
                None => DEFAULT_SOCKET_UID,
                Some(v) => v
                    .parse::<u32>()
                    .ok()
                    .filter(|u| *u != 0 && *u != u32::MAX)
                    .ok_or_else(|| {
                        err(
                            "OPENSANDBOX_EGRESS_SOCKET_UID",
                            format!("{v:?} is not a uid other than 0"),
                        )
                    })?,
            },
            metrics_endpoint: crate::metrics::endpoint(
                &env,
                std::fs::read_to_string("/etc/hostinfo").ok(),
            ),
            metrics_attrs: crate::metrics::parse_attrs(
                &get("OPENSANDBOX_EGRESS_METRICS_EXTRA_ATTRS").unwrap_or_default(),
            ),
            metrics_interval: get("OTEL_METRIC_EXPORT_INTERVAL")
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|ms| *ms > 0)
                .map_or(Duration::from_secs(60), Duration::from_millis),
            block_doh_443: matches!(
                get("OPENSANDBOX_EGRESS_BLOCK_DOH_443")
                    .map(|v| v.to_ascii_lowercase())
                    .as_deref(),
                Some("1" | "true" | "yes" | "y" | "on")
            ),
            doh_blocklist: match get("OPENSANDBOX_EGRESS_DOH_BLOCKLIST") {
                None => Vec::new(),
                Some(list) => list
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|item| match crate::policy::parse_target(item) {
                        Ok(crate::policy::Target::Ip(ip)) => {
                            Ok((ip, if ip.is_ipv4() { 32 } else { 128 }))
                        }
                        Ok(crate::policy::Target::Cidr(ip, len)) => Ok((ip, len)),
                        _ => Err(err(
                            "OPENSANDBOX_EGRESS_DOH_BLOCKLIST",
                            format!("{item:?} is not an IP or CIDR"),
                        )),
                    })
                    .collect::<Result<_, _>>()?,
            },
            redirect: !matches!(
                get("OPENSANDBOX_EGRESS_REDIRECT")
                    .map(|v| v.to_ascii_lowercase())
                    .as_deref(),
                Some("off" | "0" | "false" | "no")
            ),
            events_max: get("OPENSANDBOX_EGRESS_EVENTS_MAX")
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .unwrap_or(1024),
        })
    }

    /// The resolvers to forward to: the configured ones, else the
    /// `nameserver` lines of resolv.conf (non-loopback first, at most 10,
    /// never the proxy itself), else 8.8.8.8 as upstream does.
    pub fn resolvers(&self) -> Vec<SocketAddr> {
        if !self.dns_upstream.is_empty() {
            return self.dns_upstream.clone();
        }
        let text = std::fs::read_to_string(&self.resolv_conf).unwrap_or_default();
        let mut found: Vec<SocketAddr> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .filter_map(|rest| parse_resolver(rest.split('#').next().unwrap_or("")))
            .filter(|sa| *sa != self.dns_addr)
            .collect();
        found.dedup();
        found.sort_by_key(|sa| sa.ip().is_loopback());
        found.truncate(10);
        if found.is_empty() {
            found.push(SocketAddr::from(([8, 8, 8, 8], 53)));
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        Config::from_env(|k| m.get(k).cloned())
    }

    #[test]
    fn log_outputs() {
        use crate::logs::Output;
        assert_eq!(parse(&[]).unwrap().log_outputs, [Output::Stdout]);
        assert_eq!(
            parse(&[("OPENSANDBOX_LOG_OUTPUT", "stderr,/tmp/e.log")])
                .unwrap()
                .log_outputs,
            [Output::Stderr, Output::File("/tmp/e.log".into())]
        );
    }

    #[test]
    fn socket_uid() {
        assert_eq!(parse(&[]).unwrap().socket_uid, DEFAULT_SOCKET_UID);
        assert_eq!(
            parse(&[("OPENSANDBOX_EGRESS_SOCKET_UID", "61000")])
                .unwrap()
                .socket_uid,
            61000
        );
        for bad in ["0", "-1", "4294967295", "nobody"] {
            let e = parse(&[("OPENSANDBOX_EGRESS_SOCKET_UID", bad)]).unwrap_err();
            assert!(
                e.to_string().contains("OPENSANDBOX_EGRESS_SOCKET_UID"),
                "{e}"
            );
        }
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.mode, Mode::Dns);
        assert_eq!(c.http_addr, "0.0.0.0:18080".parse().unwrap());
        assert_eq!(c.dns_addr, "127.0.0.1:15353".parse().unwrap());
        assert_eq!(c.max_rules, 4096);
        assert_eq!(c.dns_upstream_timeout, Duration::from_secs(5));
        assert!(c.token.is_none());
    }

    #[test]
    fn values() {
        let c = parse(&[
            ("OPENSANDBOX_EGRESS_MODE", "NFT+dns"),
            ("OPENSANDBOX_EGRESS_TOKEN", "t0k"),
            (
                "OPENSANDBOX_EGRESS_DNS_UPSTREAM",
                "10.0.0.2, [::1]:5353,10.0.0.2:53",
            ),
            ("OPENSANDBOX_EGRESS_DNS_UPSTREAM_TIMEOUT", "500"),
            ("OPENSANDBOX_EGRESS_HTTP_ADDR", "127.0.0.1:9"),
            ("OPENSANDBOX_EGRESS_MAX_RULES", "0"),
        ])
        .unwrap();
        assert_eq!(c.mode, Mode::DnsNft);
        assert_eq!(c.token.as_ref().unwrap().expose(), "t0k");
        assert!(!format!("{c:?}").contains("t0k"));
        assert_eq!(
            c.dns_upstream,
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "[::1]:5353".parse().unwrap()
            ]
        );
        assert_eq!(c.dns_upstream_timeout, Duration::from_secs(120));
        assert_eq!(c.max_rules, 0);
    }

    #[test]
    fn doh_settings() {
        let c = parse(&[
            ("OPENSANDBOX_EGRESS_BLOCK_DOH_443", "Yes"),
            ("OPENSANDBOX_EGRESS_DOH_BLOCKLIST", "1.1.1.1, 8.8.0.0/16"),
        ])
        .unwrap();
        assert!(c.block_doh_443);
        assert_eq!(
            c.doh_blocklist,
            vec![
                ("1.1.1.1".parse().unwrap(), 32),
                ("8.8.0.0".parse().unwrap(), 16)
            ]
        );
        assert!(!parse(&[]).unwrap().block_doh_443);
        assert!(parse(&[("OPENSANDBOX_EGRESS_DOH_BLOCKLIST", "dns.google")]).is_err());
    }

    #[test]
    fn errors() {
        assert!(parse(&[("OPENSANDBOX_EGRESS_MODE", "nft")]).is_err());
        assert!(parse(&[("OPENSANDBOX_EGRESS_DNS_UPSTREAM", "dns.google")]).is_err());
        assert!(parse(&[("OPENSANDBOX_EGRESS_HTTP_ADDR", "nowhere")]).is_err());
    }

    #[test]
    fn resolv_conf_order() {
        let path = std::env::temp_dir().join(format!("egress-resolv-{}", std::process::id()));
        std::fs::write(&path, "search x\nnameserver 127.0.0.53\nnameserver 10.1.1.1 # corp\nnameserver 127.0.0.1:15353\n").unwrap();
        let c = parse(&[("OPENSANDBOX_EGRESS_RESOLV_CONF", path.to_str().unwrap())]).unwrap();
        let found = c.resolvers();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            found,
            vec![
                "10.1.1.1:53".parse().unwrap(),
                "127.0.0.53:53".parse().unwrap()
            ]
        );
    }
}
