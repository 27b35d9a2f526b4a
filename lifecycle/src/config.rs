//! Configuration: the TOML file, the command line and the environment, parsed
//! in one place into one typed [`Config`].
//!
//! Where a key means the same as in upstream's `opensandbox-server`, it has
//! upstream's name (see `upstream-lifecycle.md` §5). Unknown sections and keys
//! are errors that name the key, so a typo never silently falls back to a
//! default.
//!
//! Precedence:
//! - config file: `--config PATH`, else `SANDBOX_CONFIG_PATH`, else
//!   `$HOME/.sandbox.toml` (only this default may be missing: then every key
//!   takes its default);
//! - `OPENSANDBOX_SERVER_API_KEY` overrides `server.api_key`;
//! - `OPENSANDBOX_INSECURE_SERVER=YES` (exactly) allows running without a key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The command-line help, printed for `--help` (see [`ConfigError::Help`]).
pub const USAGE: &str = "\
Usage: opensandbox-lifecycle [--config PATH]

Serves the OpenSandbox Lifecycle API, running sandboxes as Docker containers.

Options:
  --config PATH   configuration file (TOML). Default: $SANDBOX_CONFIG_PATH,
                  else $HOME/.sandbox.toml (all defaults if that one is missing)
  -h, --help      print this help and exit

Environment:
  SANDBOX_CONFIG_PATH          configuration file when --config is not given
  OPENSANDBOX_SERVER_API_KEY   the API key (overrides server.api_key)
  OPENSANDBOX_INSECURE_SERVER  set to YES to serve without an API key
  HOME                         default locations of the config file and store
";

/// Environment variable naming the config file when `--config` is absent.
pub const ENV_CONFIG_PATH: &str = "SANDBOX_CONFIG_PATH";
/// Environment variable that overrides `server.api_key`.
pub const ENV_API_KEY: &str = "OPENSANDBOX_SERVER_API_KEY";
/// Environment variable that, set to exactly `YES`, allows serving without a key.
pub const ENV_INSECURE: &str = "OPENSANDBOX_INSECURE_SERVER";

/// Drop list applied to sandbox containers when `docker.drop_capabilities`
/// is not set (upstream's list).
pub const DEFAULT_DROP_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "MKNOD",
    "NET_ADMIN",
    "NET_RAW",
    "SYS_ADMIN",
    "SYS_MODULE",
    "SYS_PTRACE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
];

/// Why the configuration could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--help` or `-h` was given: print [`USAGE`] and exit successfully.
    #[error("help requested")]
    Help,
    /// The command line is wrong (unknown flag, missing value, extra argument).
    #[error("{0}\n\n{USAGE}")]
    Usage(String),
    /// The config file could not be read (an explicitly named file that is
    /// missing is reported here too).
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown section or key, or a value
    /// of the wrong type. The message names the key and its line.
    #[error("invalid config file{}: {message}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file, if the text came from one.
        path: Option<PathBuf>,
        /// The parser's message (names the offending key).
        message: String,
    },
    /// A value is out of range or otherwise unusable.
    #[error("invalid config value {key}: {message}")]
    Invalid {
        /// The dotted key, e.g. `docker.port_range_max`.
        key: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// No API key is configured and the insecure opt-in is absent.
    #[error(
        "no API key: set server.api_key or {ENV_API_KEY}, \
         or set {ENV_INSECURE}=YES to serve without authentication"
    )]
    MissingApiKey,
}

/// A secret string (the API key). `Debug` and `Display` print `***`, so it
/// never ends up in logs; [`Secret::expose`] gives the value.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares with a candidate (e.g. a request header) in time independent
    /// of where the two differ.
    pub fn matches(&self, candidate: &str) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.as_bytes().ct_eq(candidate.as_bytes()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from; `None` when every value is a default
    /// (the default file was missing) or the text was given directly.
    pub source: Option<PathBuf>,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[runtime]`.
    pub runtime: RuntimeConfig,
    /// `[docker]`.
    pub docker: DockerConfig,
    /// `[egress]`.
    pub egress: EgressConfig,
    /// `[store]`.
    pub store: StoreConfig,
}

/// `[server]`: the HTTP listener and authentication.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (default `127.0.0.1`).
    pub host: String,
    /// Port to listen on (default 8080).
    pub port: u16,
    /// The API key clients send in `OPEN-SANDBOX-API-KEY`; `None` (or blank)
    /// disables authentication, allowed only when [`Self::insecure`] is set.
    pub api_key: Option<Secret>,
    /// Public `host[:port]` of this server, used in endpoint answers.
    pub eip: Option<String>,
    /// Largest `timeout` a create request may ask for, in seconds (≥ 60).
    pub max_sandbox_timeout_seconds: Option<u64>,
    /// `OPENSANDBOX_INSECURE_SERVER=YES`: serving without a key was confirmed.
    pub insecure: bool,
}

impl ServerConfig {
    /// `host:port` for binding, with brackets around an IPv6 host.
    pub fn bind_address(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `[runtime]`: what runs sandboxes.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The runtime; only `docker` exists.
    pub kind: RuntimeKind,
    /// Image holding the execd binary injected into sandboxes
    /// (default `opensandbox/execd:local`).
    pub execd_image: String,
}

/// `runtime.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// `docker`.
    Docker,
}

/// `docker.network_mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    /// `bridge` (default): the default bridge, ports published on the host.
    Bridge,
    /// `host`: the host's network namespace.
    Host,
    /// A user-defined network, by name.
    Named(String),
}

impl NetworkMode {
    /// The name Docker uses (`bridge`, `host` or the network's name).
    pub fn as_str(&self) -> &str {
        match self {
            NetworkMode::Bridge => "bridge",
            NetworkMode::Host => "host",
            NetworkMode::Named(name) => name,
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[docker]`: how sandbox containers are created.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Network of sandbox containers (default bridge).
    pub network_mode: NetworkMode,
    /// IPv4 address sandbox ports are published on (default `127.0.0.1`).
    pub publish_host: Ipv4Addr,
    /// Host name put into endpoint answers. Default: `publish_host`, or
    /// `127.0.0.1` when `publish_host` is `0.0.0.0`.
    pub endpoint_host: String,
    /// Lowest host port used for publishing (default 40000).
    pub port_range_min: u16,
    /// Highest host port used for publishing (default 60000; at least
    /// `port_range_min + 100`).
    pub port_range_max: u16,
    /// Capabilities dropped from sandbox containers
    /// (default [`DEFAULT_DROP_CAPABILITIES`]).
    pub drop_capabilities: Vec<String>,
    /// Sets `no-new-privileges` on sandbox containers (default true).
    pub no_new_privileges: bool,
    /// PID limit per sandbox (default 4096); a value ≤ 0 in the file means
    /// no limit, which is `None` here.
    pub pids_limit: Option<i64>,
    /// AppArmor profile for sandbox containers.
    pub apparmor_profile: Option<String>,
    /// Seccomp profile for sandbox containers.
    pub seccomp_profile: Option<String>,
    /// Environment added to every sandbox (default empty).
    pub sandbox_env: BTreeMap<String, String>,
    /// Timeout of one Docker API call, in seconds (default 180).
    pub api_timeout_seconds: u64,
    /// Prefix of our container labels (default `opensandbox.io/`); must end
    /// with `/` or `.`.
    pub label_prefix: String,
}

impl DockerConfig {
    /// The full label key for `name`, e.g. `opensandbox.io/id`.
    pub fn label(&self, name: &str) -> String {
        format!("{}{}", self.label_prefix, name)
    }
}

/// `egress.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressMode {
    /// `dns`: DNS-based filtering only.
    Dns,
    /// `dns+nft` (default): DNS filtering plus nftables rules.
    DnsNft,
}

impl EgressMode {
    /// The configuration spelling (`dns` or `dns+nft`).
    pub fn as_str(self) -> &'static str {
        match self {
            EgressMode::Dns => "dns",
            EgressMode::DnsNft => "dns+nft",
        }
    }
}

impl fmt::Display for EgressMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[egress]`: the network-policy sidecar.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// Sidecar image (default `opensandbox/egress:local`).
    pub image: String,
    /// Enforcement mode (default `dns+nft`).
    pub mode: EgressMode,
    /// Disable IPv6 in sandboxes that have a network policy (default true).
    pub disable_ipv6: bool,
    /// How long to wait for the sidecar to become ready, in seconds
    /// (default 30).
    pub readiness_timeout_seconds: u64,
}

/// `store.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `sqlite`.
    Sqlite,
}

/// `[store]`: persistence.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The store; only `sqlite` exists.
    pub kind: StoreKind,
    /// Database file (default `$HOME/.opensandbox/lifecycle.db`; a leading
    /// `~/` is expanded).
    pub path: PathBuf,
}

// ---------------------------------------------------------------------------
// Entry points

/// Builds the configuration from the process arguments (after the program
/// name) and an environment lookup (`|name| std::env::var(name).ok()` in
/// production, a map in tests).
///
/// # Errors
/// [`ConfigError::Help`] for `--help`; otherwise any problem with the command
/// line, the file, a value, or a missing API key without the insecure opt-in.
pub fn load(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    let flag_path = parse_args(args)?;
    let home = env("HOME");

    let (path, explicit) = match flag_path.or_else(|| env(ENV_CONFIG_PATH).map(PathBuf::from)) {
        Some(path) => (Some(path), true),
        None => (
            home.as_ref().map(|h| Path::new(h).join(".sandbox.toml")),
            false,
        ),
    };

    let (text, source) = match path {
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(text) => (text, Some(path)),
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                (String::new(), None)
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        },
        None => (String::new(), None),
    };

    let raw = parse_raw(&text, source.as_deref())?;
    if home.is_none() && raw.store.path.is_none() {
        return Err(ConfigError::Invalid {
            key: "store.path",
            message: "HOME is not set, so there is no default; set store.path".into(),
        });
    }
    let mut config = build(raw, home.as_deref())?;
    config.source = source;

    if let Some(key) = env(ENV_API_KEY) {
        config.server.api_key = Some(Secret(key));
    }
    if config
        .server
        .api_key
        .as_ref()
        .is_some_and(|k| k.0.trim().is_empty())
    {
        config.server.api_key = None;
    }
    config.server.insecure = env(ENV_INSECURE).as_deref() == Some("YES");
    if config.server.api_key.is_none() && !config.server.insecure {
        return Err(ConfigError::MissingApiKey);
    }
    Ok(config)
}

/// Parses and validates a config file's text alone: no environment, no
/// API-key rule (`insecure` stays false). `HOME` counts as unset, so the
/// default `store.path` is the relative `.opensandbox/lifecycle.db`.
///
/// # Errors
/// [`ConfigError::Parse`] for bad TOML, unknown keys or wrong types;
/// [`ConfigError::Invalid`] for values out of range.
pub fn parse_toml(text: &str) -> Result<Config, ConfigError> {
    build(parse_raw(text, None)?, None)
}

/// Reads `--config PATH`, `--config=PATH` and `--help`.
fn parse_args(args: &[String]) -> Result<Option<PathBuf>, ConfigError> {
    let mut config = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = match arg.as_str() {
            "-h" | "--help" => return Err(ConfigError::Help),
            "--config" => match it.next() {
                Some(v) => v.clone(),
                None => return Err(ConfigError::Usage("--config needs a PATH".into())),
            },
            other => match other.strip_prefix("--config=") {
                Some(v) => v.to_string(),
                None if other.starts_with('-') => {
                    return Err(ConfigError::Usage(format!("unknown option {other}")))
                }
                None => return Err(ConfigError::Usage(format!("unexpected argument {other}"))),
            },
        };
        if value.is_empty() {
            return Err(ConfigError::Usage("--config needs a non-empty PATH".into()));
        }
        if config.replace(PathBuf::from(value)).is_some() {
            return Err(ConfigError::Usage("--config given more than once".into()));
        }
    }
    Ok(config)
}

// ---------------------------------------------------------------------------
// The file as written

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawFile {
    server: RawServer,
    runtime: RawRuntime,
    docker: RawDocker,
    egress: RawEgress,
    store: RawStore,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    host: Option<String>,
    port: Option<i64>,
    api_key: Option<String>,
    eip: Option<String>,
    max_sandbox_timeout_seconds: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawRuntime {
    #[serde(rename = "type")]
    kind: Option<String>,
    execd_image: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawDocker {
    network_mode: Option<String>,
    publish_host: Option<String>,
    endpoint_host: Option<String>,
    port_range_min: Option<i64>,
    port_range_max: Option<i64>,
    drop_capabilities: Option<Vec<String>>,
    no_new_privileges: Option<bool>,
    pids_limit: Option<i64>,
    apparmor_profile: Option<String>,
    seccomp_profile: Option<String>,
    sandbox_env: Option<BTreeMap<String, String>>,
    api_timeout_seconds: Option<i64>,
    label_prefix: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawEgress {
    image: Option<String>,
    mode: Option<String>,
    disable_ipv6: Option<bool>,
    readiness_timeout_seconds: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    #[serde(rename = "type")]
    kind: Option<String>,
    path: Option<String>,
}

fn parse_raw(text: &str, path: Option<&Path>) -> Result<RawFile, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.map(Path::to_path_buf),
        message: e.to_string().trim_end().to_string(),
    })
}

// ---------------------------------------------------------------------------
// Validation

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// A non-empty string without whitespace or control characters (host names,
/// image references, label prefixes).
fn word(key: &'static str, value: String) -> Result<String, ConfigError> {
    if value.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            key,
            format!("must not contain spaces or control characters (got {value:?})"),
        ));
    }
    Ok(value)
}

fn in_range(key: &'static str, value: i64, min: i64, max: i64) -> Result<i64, ConfigError> {
    if value < min || value > max {
        return Err(invalid(
            key,
            format!("must be between {min} and {max} (got {value})"),
        ));
    }
    Ok(value)
}

fn port(key: &'static str, value: i64) -> Result<u16, ConfigError> {
    let v = in_range(key, value, 0, i64::from(u16::MAX))?;
    u16::try_from(v).map_err(|_| invalid(key, "out of range"))
}

fn seconds(key: &'static str, value: i64, min: i64) -> Result<u64, ConfigError> {
    if value < min {
        return Err(invalid(
            key,
            format!("must be at least {min} seconds (got {value})"),
        ));
    }
    u64::try_from(value).map_err(|_| invalid(key, "out of range"))
}

fn optional_word(key: &'static str, value: Option<String>) -> Result<Option<String>, ConfigError> {
    value.map(|v| word(key, v)).transpose()
}

fn expand_home(key: &'static str, path: &str, home: Option<&str>) -> Result<PathBuf, ConfigError> {
    if path.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    match path.strip_prefix("~/") {
        Some(rest) => match home {
            Some(home) => Ok(Path::new(home).join(rest)),
            None => Err(invalid(key, "starts with ~/ but HOME is not set")),
        },
        None => Ok(PathBuf::from(path)),
    }
}

fn build(raw: RawFile, home: Option<&str>) -> Result<Config, ConfigError> {
    Ok(Config {
        source: None,
        server: build_server(raw.server)?,
        runtime: build_runtime(raw.runtime)?,
        docker: build_docker(raw.docker)?,
        egress: build_egress(raw.egress)?,
        store: build_store(raw.store, home)?,
    })
}

fn build_server(raw: RawServer) -> Result<ServerConfig, ConfigError> {
    let eip = optional_word("server.eip", raw.eip)?;
    if let Some(eip) = &eip {
        if eip.contains('/') {
            return Err(invalid(
                "server.eip",
                format!("must be host or host:port, without scheme or path (got {eip:?})"),
            ));
        }
    }
    Ok(ServerConfig {
        host: word(
            "server.host",
            raw.host.unwrap_or_else(|| "127.0.0.1".into()),
        )?,
        port: raw.port.map_or(Ok(8080), |p| port("server.port", p))?,
        api_key: raw.api_key.filter(|k| !k.trim().is_empty()).map(Secret),
        eip,
        max_sandbox_timeout_seconds: raw
            .max_sandbox_timeout_seconds
            .map(|s| seconds("server.max_sandbox_timeout_seconds", s, 60))
            .transpose()?,
        insecure: false,
    })
}

fn build_runtime(raw: RawRuntime) -> Result<RuntimeConfig, ConfigError> {
    let kind = match raw.kind.as_deref() {
        None | Some("docker") => RuntimeKind::Docker,
        Some(other) => {
            return Err(invalid(
                "runtime.type",
                format!("only \"docker\" is supported (got {other:?})"),
            ))
        }
    };
    Ok(RuntimeConfig {
        kind,
        execd_image: word(
            "runtime.execd_image",
            raw.execd_image
                .unwrap_or_else(|| "opensandbox/execd:local".into()),
        )?,
    })
}

fn network_mode(value: String) -> Result<NetworkMode, ConfigError> {
    const KEY: &str = "docker.network_mode";
    match value.as_str() {
        "bridge" => return Ok(NetworkMode::Bridge),
        "host" => return Ok(NetworkMode::Host),
        "none" => {
            return Err(invalid(
                KEY,
                "\"none\" leaves sandboxes unreachable; use bridge, host or a network name",
            ))
        }
        _ => {}
    }
    let valid = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !valid {
        return Err(invalid(
            KEY,
            format!("must be \"bridge\", \"host\" or a Docker network name ([A-Za-z0-9][A-Za-z0-9_.-]*) (got {value:?})"),
        ));
    }
    Ok(NetworkMode::Named(value))
}

fn build_docker(raw: RawDocker) -> Result<DockerConfig, ConfigError> {
    let network_mode = raw
        .network_mode
        .map_or(Ok(NetworkMode::Bridge), network_mode)?;

    let publish_host = match raw.publish_host {
        None => Ipv4Addr::LOCALHOST,
        Some(s) => s.parse().map_err(|_| {
            invalid(
                "docker.publish_host",
                format!("must be an IPv4 address such as 127.0.0.1 or 0.0.0.0 (got {s:?})"),
            )
        })?,
    };
    let endpoint_host = match raw.endpoint_host {
        Some(h) => word("docker.endpoint_host", h)?,
        None if publish_host.is_unspecified() => Ipv4Addr::LOCALHOST.to_string(),
        None => publish_host.to_string(),
    };

    let port_range_min = raw
        .port_range_min
        .map_or(Ok(40000), |p| port("docker.port_range_min", p))?;
    let port_range_max = raw
        .port_range_max
        .map_or(Ok(60000), |p| port("docker.port_range_max", p))?;
    if port_range_min == 0 {
        return Err(invalid("docker.port_range_min", "must be at least 1"));
    }
    if port_range_max < port_range_min || port_range_max - port_range_min < 100 {
        return Err(invalid(
            "docker.port_range_max",
            format!(
                "the range must span at least 100 ports (port_range_min = {port_range_min}, port_range_max = {port_range_max})"
            ),
        ));
    }

    let drop_capabilities = match raw.drop_capabilities {
        None => DEFAULT_DROP_CAPABILITIES
            .iter()
            .map(|s| (*s).to_string())
            .collect(),
        Some(caps) => {
            for cap in &caps {
                if cap.is_empty() || !cap.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(invalid(
                        "docker.drop_capabilities",
                        format!("capability names are letters, digits and _, such as NET_RAW (got {cap:?})"),
                    ));
                }
            }
            caps
        }
    };

    let sandbox_env = raw.sandbox_env.unwrap_or_default();
    for (name, value) in &sandbox_env {
        if name.is_empty() || name.contains('=') || name.contains('\0') || value.contains('\0') {
            return Err(invalid(
                "docker.sandbox_env",
                format!("variable names must be non-empty without '=' and nothing may contain NUL (got {name:?})"),
            ));
        }
    }

    let label_prefix = word(
        "docker.label_prefix",
        raw.label_prefix.unwrap_or_else(|| "opensandbox.io/".into()),
    )?;
    if !(label_prefix.ends_with('/') || label_prefix.ends_with('.')) {
        return Err(invalid(
            "docker.label_prefix",
            format!("must end with '/' or '.', such as \"opensandbox.io/\" (got {label_prefix:?})"),
        ));
    }

    Ok(DockerConfig {
        network_mode,
        publish_host,
        endpoint_host,
        port_range_min,
        port_range_max,
        drop_capabilities,
        no_new_privileges: raw.no_new_privileges.unwrap_or(true),
        pids_limit: match raw.pids_limit {
            None => Some(4096),
            Some(n) if n <= 0 => None,
            Some(n) => Some(n),
        },
        apparmor_profile: optional_word("docker.apparmor_profile", raw.apparmor_profile)?,
        seccomp_profile: raw
            .seccomp_profile
            .map(|p| {
                if p.is_empty() {
                    Err(invalid("docker.seccomp_profile", "must not be empty"))
                } else {
                    Ok(p)
                }
            })
            .transpose()?,
        sandbox_env,
        api_timeout_seconds: raw
            .api_timeout_seconds
            .map_or(Ok(180), |s| seconds("docker.api_timeout_seconds", s, 1))?,
        label_prefix,
    })
}

fn build_egress(raw: RawEgress) -> Result<EgressConfig, ConfigError> {
    let mode = match raw.mode.as_deref() {
        None | Some("dns+nft") => EgressMode::DnsNft,
        Some("dns") => EgressMode::Dns,
        Some(other) => {
            return Err(invalid(
                "egress.mode",
                format!("must be \"dns\" or \"dns+nft\" (got {other:?})"),
            ))
        }
    };
    Ok(EgressConfig {
        image: word(
            "egress.image",
            raw.image
                .unwrap_or_else(|| "opensandbox/egress:local".into()),
        )?,
        mode,
        disable_ipv6: raw.disable_ipv6.unwrap_or(true),
        readiness_timeout_seconds: raw.readiness_timeout_seconds.map_or(Ok(30), |s| {
            seconds("egress.readiness_timeout_seconds", s, 1)
        })?,
    })
}

fn build_store(raw: RawStore, home: Option<&str>) -> Result<StoreConfig, ConfigError> {
    let kind = match raw.kind.as_deref() {
        None | Some("sqlite") => StoreKind::Sqlite,
        Some(other) => {
            return Err(invalid(
                "store.type",
                format!("only \"sqlite\" is supported (got {other:?})"),
            ))
        }
    };
    let path = match raw.path {
        Some(p) => expand_home("store.path", &p, home)?,
        None => match home {
            Some(home) => Path::new(home).join(".opensandbox").join("lifecycle.db"),
            None => Path::new(".opensandbox").join("lifecycle.db"),
        },
    };
    Ok(StoreConfig { kind, path })
}

// ---------------------------------------------------------------------------

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_string()).collect()
    }

    fn load_with(a: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        load(&args(a), &move |k| map.get(k).cloned())
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> Self {
            let p = std::env::temp_dir()
                .join(format!("lifecycle-config-test-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn write(&self, name: &str, text: &str) -> String {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p.to_string_lossy().into_owned()
        }
        fn home(&self) -> String {
            self.0.to_string_lossy().into_owned()
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn invalid_key(r: Result<Config, ConfigError>) -> (&'static str, String) {
        match r {
            Err(ConfigError::Invalid { key, message }) => (key, message),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = parse_toml("").unwrap();
        assert_eq!(c.server.host, "127.0.0.1");
        assert_eq!(c.server.port, 8080);
        assert!(c.server.api_key.is_none());
        assert!(c.server.eip.is_none());
        assert!(c.server.max_sandbox_timeout_seconds.is_none());
        assert!(!c.server.insecure);
        assert_eq!(c.runtime.kind, RuntimeKind::Docker);
        assert_eq!(c.runtime.execd_image, "opensandbox/execd:local");
        assert_eq!(c.docker.network_mode, NetworkMode::Bridge);
        assert_eq!(c.docker.publish_host, Ipv4Addr::LOCALHOST);
        assert_eq!(c.docker.endpoint_host, "127.0.0.1");
        assert_eq!(
            (c.docker.port_range_min, c.docker.port_range_max),
            (40000, 60000)
        );
        assert_eq!(c.docker.drop_capabilities, DEFAULT_DROP_CAPABILITIES);
        assert!(c.docker.no_new_privileges);
        assert_eq!(c.docker.pids_limit, Some(4096));
        assert!(c.docker.apparmor_profile.is_none() && c.docker.seccomp_profile.is_none());
        assert!(c.docker.sandbox_env.is_empty());
        assert_eq!(c.docker.api_timeout_seconds, 180);
        assert_eq!(c.docker.label_prefix, "opensandbox.io/");
        assert_eq!(c.docker.label("id"), "opensandbox.io/id");
        assert_eq!(c.egress.image, "opensandbox/egress:local");
        assert_eq!(c.egress.mode, EgressMode::DnsNft);
        assert!(c.egress.disable_ipv6);
        assert_eq!(c.egress.readiness_timeout_seconds, 30);
        assert_eq!(c.store.kind, StoreKind::Sqlite);
        assert_eq!(c.store.path, Path::new(".opensandbox/lifecycle.db"));
        assert_eq!(c.server.bind_address(), "127.0.0.1:8080");
    }

    const FULL: &str = r#"
[server]
host = "::1"
port = 9090
api_key = "file-key"
eip = "sandbox.example.com:443"
max_sandbox_timeout_seconds = 3600

[runtime]
type = "docker"
execd_image = "registry/execd:v1"

[docker]
network_mode = "my-net_1"
publish_host = "0.0.0.0"
endpoint_host = "box.local"
port_range_min = 30000
port_range_max = 30100
drop_capabilities = ["NET_RAW"]
no_new_privileges = false
pids_limit = 100
apparmor_profile = "docker-default"
seccomp_profile = "/etc/seccomp.json"
sandbox_env = { FOO = "bar", EMPTY = "" }
api_timeout_seconds = 60
label_prefix = "lifecycle.example/"

[egress]
image = "registry/egress:v2"
mode = "dns"
disable_ipv6 = false
readiness_timeout_seconds = 5

[store]
type = "sqlite"
path = "/var/lib/lc/db.sqlite"
"#;

    #[test]
    fn every_key_parsed() {
        let c = parse_toml(FULL).unwrap();
        assert_eq!(c.server.host, "::1");
        assert_eq!(c.server.port, 9090);
        assert_eq!(c.server.api_key.as_ref().unwrap().expose(), "file-key");
        assert_eq!(c.server.eip.as_deref(), Some("sandbox.example.com:443"));
        assert_eq!(c.server.max_sandbox_timeout_seconds, Some(3600));
        assert_eq!(c.server.bind_address(), "[::1]:9090");
        assert_eq!(c.runtime.execd_image, "registry/execd:v1");
        assert_eq!(c.docker.network_mode, NetworkMode::Named("my-net_1".into()));
        assert_eq!(c.docker.network_mode.to_string(), "my-net_1");
        assert_eq!(c.docker.publish_host, Ipv4Addr::UNSPECIFIED);
        assert_eq!(c.docker.endpoint_host, "box.local");
        assert_eq!(
            (c.docker.port_range_min, c.docker.port_range_max),
            (30000, 30100)
        );
        assert_eq!(c.docker.drop_capabilities, vec!["NET_RAW".to_string()]);
        assert!(!c.docker.no_new_privileges);
        assert_eq!(c.docker.pids_limit, Some(100));
        assert_eq!(c.docker.apparmor_profile.as_deref(), Some("docker-default"));
        assert_eq!(
            c.docker.seccomp_profile.as_deref(),
            Some("/etc/seccomp.json")
        );
        assert_eq!(
            c.docker.sandbox_env.get("FOO").map(String::as_str),
            Some("bar")
        );
        assert_eq!(
            c.docker.sandbox_env.get("EMPTY").map(String::as_str),
            Some("")
        );
        assert_eq!(c.docker.api_timeout_seconds, 60);
        assert_eq!(c.docker.label("id"), "lifecycle.example/id");
        assert_eq!(c.egress.image, "registry/egress:v2");
        assert_eq!(c.egress.mode, EgressMode::Dns);
        assert!(!c.egress.disable_ipv6);
        assert_eq!(c.egress.readiness_timeout_seconds, 5);
        assert_eq!(c.store.path, Path::new("/var/lib/lc/db.sqlite"));
    }

    #[test]
    fn small_value_rules() {
        let c = parse_toml(
            "[docker]\nnetwork_mode = \"host\"\npids_limit = 0\npublish_host = \"0.0.0.0\"",
        )
        .unwrap();
        assert_eq!(c.docker.network_mode, NetworkMode::Host);
        assert_eq!(c.docker.pids_limit, None);
        // An unspecified publish address is not a useful endpoint host.
        assert_eq!(c.docker.endpoint_host, "127.0.0.1");
        let c = parse_toml("[docker]\npublish_host = \"10.0.0.5\"").unwrap();
        assert_eq!(c.docker.endpoint_host, "10.0.0.5");
        let c = parse_toml("[server]\napi_key = \"  \"").unwrap();
        assert!(c.server.api_key.is_none(), "a blank key is no key");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "[server]\nport = 70000",
                "server.port",
                "between 0 and 65535",
            ),
            (
                "[server]\nmax_sandbox_timeout_seconds = 59",
                "server.max_sandbox_timeout_seconds",
                "at least 60",
            ),
            (
                "[server]\neip = \"http://x\"",
                "server.eip",
                "without scheme",
            ),
            ("[server]\nhost = \"\"", "server.host", "empty"),
            (
                "[runtime]\ntype = \"kubernetes\"",
                "runtime.type",
                "\"docker\"",
            ),
            (
                "[docker]\nport_range_min = 50000\nport_range_max = 50099",
                "docker.port_range_max",
                "at least 100",
            ),
            (
                "[docker]\nport_range_min = 50000\nport_range_max = 40000",
                "docker.port_range_max",
                "at least 100",
            ),
            (
                "[docker]\nport_range_min = 0",
                "docker.port_range_min",
                "at least 1",
            ),
            (
                "[docker]\npublish_host = \"::\"",
                "docker.publish_host",
                "IPv4",
            ),
            (
                "[docker]\nnetwork_mode = \"none\"",
                "docker.network_mode",
                "none",
            ),
            (
                "[docker]\nnetwork_mode = \"container:x\"",
                "docker.network_mode",
                "network name",
            ),
            (
                "[docker]\ndrop_capabilities = [\"NET RAW\"]",
                "docker.drop_capabilities",
                "NET RAW",
            ),
            (
                "[docker]\nsandbox_env = { \"A=B\" = \"x\" }",
                "docker.sandbox_env",
                "A=B",
            ),
            (
                "[docker]\napi_timeout_seconds = 0",
                "docker.api_timeout_seconds",
                "at least 1",
            ),
            (
                "[docker]\nlabel_prefix = \"foo\"",
                "docker.label_prefix",
                "end with",
            ),
            ("[egress]\nmode = \"nft\"", "egress.mode", "\"dns+nft\""),
            (
                "[egress]\nreadiness_timeout_seconds = -1",
                "egress.readiness_timeout_seconds",
                "at least 1",
            ),
            ("[store]\ntype = \"postgresql\"", "store.type", "\"sqlite\""),
            ("[store]\npath = \"~/x.db\"", "store.path", "HOME"),
        ];
        for (text, key, needle) in cases {
            let (k, message) = invalid_key(parse_toml(text));
            assert_eq!(k, *key, "{text}");
            assert!(message.contains(needle), "{text}: {message}");
            let shown = parse_toml(text).unwrap_err().to_string();
            assert!(shown.contains(key), "{shown}");
        }
    }

    #[test]
    fn unknown_keys_and_types_are_named() {
        for (text, needle) in [
            ("[server]\nbogus_key = 1", "bogus_key"),
            ("[nonsense]\nx = 1", "nonsense"),
            ("top_level = true", "top_level"),
            ("[docker]\nhost_ip = \"1.2.3.4\"", "host_ip"),
            ("[server]\nport = \"80\"", "port"),
            ("[server\n", "TOML"),
        ] {
            match parse_toml(text) {
                Err(e @ ConfigError::Parse { .. }) => {
                    let shown = e.to_string();
                    assert!(shown.contains(needle), "{text}: {shown}");
                }
                other => panic!("{text}: expected Parse, got {other:?}"),
            }
        }
    }

    #[test]
    fn secret_is_never_printed() {
        let c = parse_toml("[server]\napi_key = \"hunter2-very-secret\"").unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("***"));
        let key = c.server.api_key.unwrap();
        assert_eq!(key.to_string(), "***");
        assert!(key.matches("hunter2-very-secret"));
        assert!(!key.matches("hunter2-very-secreT"));
        assert!(!key.matches("hunter2"));
        assert!(!key.matches(""));
    }

    #[test]
    fn args_parsing() {
        assert!(matches!(
            load_with(&["--help"], &[]),
            Err(ConfigError::Help)
        ));
        assert!(matches!(load_with(&["-h"], &[]), Err(ConfigError::Help)));
        for bad in [
            &["--verbose"][..],
            &["--config"],
            &["stray"],
            &["--config=a", "--config", "b"],
            &["--config="],
        ] {
            match load_with(bad, &[]) {
                Err(ConfigError::Usage(m)) => assert!(!m.is_empty()),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let e = load_with(&["--bogus"], &[]).unwrap_err().to_string();
        assert!(e.contains("--bogus") && e.contains("Usage:"), "{e}");
    }

    #[test]
    fn missing_default_file_means_defaults() {
        let dir = TempDir::new();
        let home = dir.home();
        let c = load_with(&[], &[("HOME", &home), (ENV_API_KEY, "k")]).unwrap();
        assert!(c.source.is_none());
        assert_eq!(c.server.port, 8080);
        assert_eq!(c.store.path, dir.0.join(".opensandbox/lifecycle.db"));
    }

    #[test]
    fn default_file_is_read_from_home() {
        let dir = TempDir::new();
        let path = dir.write(
            ".sandbox.toml",
            "[server]\nport = 1234\napi_key = \"k\"\n[store]\npath = \"~/db\"",
        );
        let c = load_with(&[], &[("HOME", &dir.home())]).unwrap();
        assert_eq!(c.source.as_deref(), Some(Path::new(&path)));
        assert_eq!(c.server.port, 1234);
        assert_eq!(c.store.path, dir.0.join("db"));
    }

    #[test]
    fn explicit_paths_flag_then_env() {
        let dir = TempDir::new();
        let a = dir.write("a.toml", "[server]\nport = 1001\napi_key = \"k\"");
        let b = dir.write("b.toml", "[server]\nport = 1002\napi_key = \"k\"");
        let home = dir.home();
        let env = [("HOME", home.as_str()), (ENV_CONFIG_PATH, b.as_str())];
        assert_eq!(
            load_with(&["--config", &a], &env).unwrap().server.port,
            1001
        );
        assert_eq!(
            load_with(&[&format!("--config={a}")], &env)
                .unwrap()
                .server
                .port,
            1001
        );
        assert_eq!(load_with(&[], &env).unwrap().server.port, 1002);
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let dir = TempDir::new();
        let missing = dir.0.join("nope.toml").to_string_lossy().into_owned();
        let home = dir.home();
        for (a, env) in [
            (
                vec!["--config", missing.as_str()],
                vec![("HOME", home.as_str())],
            ),
            (
                vec![],
                vec![("HOME", home.as_str()), (ENV_CONFIG_PATH, missing.as_str())],
            ),
        ] {
            match load_with(&a, &env) {
                Err(e @ ConfigError::Read { .. }) => {
                    assert!(e.to_string().contains("nope.toml"), "{e}")
                }
                other => panic!("expected Read, got {other:?}"),
            }
        }
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = TempDir::new();
        let p = dir.write("bad.toml", "[server]\nprot = 1");
        let e = load_with(&["--config", &p], &[("HOME", &dir.home())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml") && e.contains("prot"), "{e}");
    }

    #[test]
    fn env_overrides_and_insecure_rule() {
        let dir = TempDir::new();
        let with_key = dir.write("key.toml", "[server]\napi_key = \"from-file\"");
        let no_key = dir.write("nokey.toml", "[server]\nport = 8081");
        let home = dir.home();
        let h = ("HOME", home.as_str());

        // The file's key, then the environment's.
        let c = load_with(&["--config", &with_key], &[h]).unwrap();
        assert_eq!(c.server.api_key.unwrap().expose(), "from-file");
        let c = load_with(&["--config", &with_key], &[h, (ENV_API_KEY, "from-env")]).unwrap();
        assert_eq!(c.server.api_key.unwrap().expose(), "from-env");
        // An empty variable is unset.
        let c = load_with(&["--config", &with_key], &[h, (ENV_API_KEY, "")]).unwrap();
        assert_eq!(c.server.api_key.unwrap().expose(), "from-file");

        // No key at all: refused unless opted in with exactly YES.
        assert!(matches!(
            load_with(&["--config", &no_key], &[h]),
            Err(ConfigError::MissingApiKey)
        ));
        for not_yes in ["yes", "1", "true", "YES "] {
            let r = load_with(&["--config", &no_key], &[h, (ENV_INSECURE, not_yes)]);
            assert!(matches!(r, Err(ConfigError::MissingApiKey)), "{not_yes:?}");
        }
        let c = load_with(&["--config", &no_key], &[h, (ENV_INSECURE, "YES")]).unwrap();
        assert!(c.server.insecure && c.server.api_key.is_none());
        // A blank key from the environment is no key either.
        let r = load_with(&["--config", &no_key], &[h, (ENV_API_KEY, "   ")]);
        assert!(matches!(r, Err(ConfigError::MissingApiKey)));
        // The opt-in is recorded even when a key exists.
        let c = load_with(&["--config", &with_key], &[h, (ENV_INSECURE, "YES")]).unwrap();
        assert!(c.server.insecure && c.server.api_key.is_some());

        let msg = ConfigError::MissingApiKey.to_string();
        assert!(
            msg.contains(ENV_API_KEY) && msg.contains("OPENSANDBOX_INSECURE_SERVER=YES"),
            "{msg}"
        );
    }

    #[test]
    fn no_home_needs_store_path() {
        let dir = TempDir::new();
        let p = dir.write("c.toml", "[server]\napi_key = \"k\"");
        let (key, _) = invalid_key(load_with(&["--config", &p], &[]));
        assert_eq!(key, "store.path");
        let p = dir.write(
            "d.toml",
            "[server]\napi_key = \"k\"\n[store]\npath = \"/tmp/x.db\"",
        );
        let c = load_with(&["--config", &p], &[]).unwrap();
        assert_eq!(c.store.path, Path::new("/tmp/x.db"));
    }
}
