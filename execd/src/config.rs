//! Configuration: Go-style flags and upstream's environment variables, parsed
//! once into [`Config`].
//!
//! Flags accept `-name=value`, `--name=value`, `-name value` and, for booleans,
//! a bare `-name`, like Go's `flag` package. An environment variable gives a
//! flag its default; an explicit flag wins. Parsing takes the arguments and a
//! lookup function, so it is tested with a map, not the process environment.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A secret string: its `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value, for the one place that must compare or send it.
    pub fn expose(&self) -> &str {
        &self.0
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

/// Everything execd is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    /// TCP port on 0.0.0.0 (`-port`, default 44772; 0 picks a free port).
    pub port: u16,
    /// Required value of `X-EXECD-ACCESS-TOKEN` (`-access-token`, `EXECD_ACCESS_TOKEN`).
    pub access_token: Option<Secret>,
    /// Upstream's numeric log level (`-log-level`, default 6): 0-3 error, 4 warn, 5-6 info, 7+ debug.
    pub log_level: i64,
    /// Log destination (`EXECD_LOG_FILE`, else the first of `OPENSANDBOX_LOG_OUTPUT`); stdout if unset.
    pub log_file: Option<PathBuf>,
    /// Accepted for compatibility (`-graceful-shutdown-timeout`, `EXECD_API_GRACE_SHUTDOWN`).
    /// Upstream sleeps this long after every command; execd ends the stream at the terminal event.
    pub graceful_shutdown_timeout: Duration,
    /// Jupyter host (`-jupyter-host`, `JUPYTER_HOST`); kept for the code-context issue.
    pub jupyter_host: Option<String>,
    /// Jupyter token (`-jupyter-token`, `JUPYTER_TOKEN`).
    pub jupyter_token: Option<Secret>,
    /// Jupyter idle poll interval (`-jupyter-idle-poll-interval`, `EXECD_JUPYTER_IDLE_POLL_INTERVAL`).
    pub jupyter_idle_poll_interval: Duration,
    /// File of `KEY=VALUE` lines merged into every command's environment (`EXECD_ENVS`).
    pub envs_file: Option<PathBuf>,
    /// Where background command logs are spooled (`TMPDIR`, default `/tmp`).
    pub tmp_dir: PathBuf,
    /// How long finished command records and their logs are kept
    /// (`-command-retention`, `EXECD_COMMAND_RETENTION`, default 1h).
    pub command_retention: Duration,
    /// Most finished command records kept at once; the oldest go first
    /// (`-max-finished-commands`, `EXECD_MAX_FINISHED_COMMANDS`, default 10000).
    pub max_finished_commands: usize,
    /// A bash session with no run for this long is closed
    /// (`-session-idle-timeout`, `EXECD_SESSION_IDLE_TIMEOUT`, default 24h).
    pub session_idle_timeout: Duration,
    /// A PTY session no client has been attached to for this long is closed
    /// (`-pty-idle-timeout`, `EXECD_PTY_IDLE_TIMEOUT`, default 24h).
    pub pty_idle_timeout: Duration,
    /// Most commands running at once; more get 503 (`-max-commands`, `EXECD_MAX_COMMANDS`, default 4096).
    pub max_commands: usize,
    /// Most bash sessions at once (`-max-sessions`, `EXECD_MAX_SESSIONS`, default 1024).
    pub max_sessions: usize,
    /// Most file watches at once (`-max-watches`, `EXECD_MAX_WATCHES`, default 64).
    pub max_watches: usize,
    /// Largest spooled log of one background command; output past it is
    /// dropped and counted (`-max-log-bytes`, `EXECD_MAX_LOG_BYTES`, default 1 GiB).
    pub max_log_bytes: u64,
    /// Shells kept started and waiting for the next foreground command
    /// (`-warm-shells`, `EXECD_WARM_SHELLS`, default 2; 0 disables).
    pub warm_shells: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 44772,
            access_token: None,
            log_level: 6,
            log_file: None,
            graceful_shutdown_timeout: Duration::from_secs(1),
            jupyter_host: None,
            jupyter_token: None,
            jupyter_idle_poll_interval: Duration::from_millis(100),
            envs_file: None,
            tmp_dir: PathBuf::from("/tmp"),
            command_retention: Duration::from_secs(3600),
            max_finished_commands: 10_000,
            session_idle_timeout: Duration::from_secs(24 * 3600),
            pty_idle_timeout: Duration::from_secs(24 * 3600),
            max_commands: 4096,
            max_sessions: 1024,
            max_watches: 64,
            max_log_bytes: 1 << 30,
            warm_shells: 2,
        }
    }
}

/// Why the configuration could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `-h` or `-help` was given: print usage and exit 0.
    #[error("help requested")]
    Help,
    /// A flag that execd does not know.
    #[error("flag provided but not defined: -{0}")]
    UnknownFlag(String),
    /// A flag that needs a value was last on the command line.
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
    /// A flag or environment variable with a value of the wrong form.
    #[error("invalid value {value:?} for {name}: {reason}")]
    InvalidValue {
        /// Flag or variable name.
        name: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Usage text printed for `-h` and for flag errors.
pub const USAGE: &str = "Usage of execd:
  -port int                          listening port (default 44772)
  -access-token string               required X-EXECD-ACCESS-TOKEN (env EXECD_ACCESS_TOKEN)
  -log-level int                     0-3 error, 4 warn, 5-6 info, 7+ debug (default 6)
  -graceful-shutdown-timeout dur     accepted for compatibility; no tail is added (env EXECD_API_GRACE_SHUTDOWN)
  -jupyter-host string               (env JUPYTER_HOST)
  -jupyter-token string              (env JUPYTER_TOKEN)
  -jupyter-idle-poll-interval dur    (env EXECD_JUPYTER_IDLE_POLL_INTERVAL, default 100ms)
  -command-retention dur             keep finished command records and logs (env EXECD_COMMAND_RETENTION, default 1h)
  -max-finished-commands int         finished records kept at most (env EXECD_MAX_FINISHED_COMMANDS, default 10000)
  -session-idle-timeout dur          close idle bash sessions (env EXECD_SESSION_IDLE_TIMEOUT, default 24h)
  -pty-idle-timeout dur              close PTY sessions without a client (env EXECD_PTY_IDLE_TIMEOUT, default 24h)
  -max-commands int                  running commands at most (env EXECD_MAX_COMMANDS, default 4096)
  -max-sessions int                  bash sessions at most (env EXECD_MAX_SESSIONS, default 1024)
  -max-watches int                   file watches at most (env EXECD_MAX_WATCHES, default 64)
  -max-log-bytes int                 spooled log bytes per background command (env EXECD_MAX_LOG_BYTES, default 1073741824)
  -warm-shells int                   shells kept ready for the next command, 0-64 (env EXECD_WARM_SHELLS, default 2)
";

/// The flags execd knows, with the environment variable that gives each its default.
const FLAGS: &[(&str, Option<&str>)] = &[
    ("port", None),
    ("access-token", Some("EXECD_ACCESS_TOKEN")),
    ("log-level", None),
    (
        "graceful-shutdown-timeout",
        Some("EXECD_API_GRACE_SHUTDOWN"),
    ),
    ("jupyter-host", Some("JUPYTER_HOST")),
    ("jupyter-token", Some("JUPYTER_TOKEN")),
    (
        "jupyter-idle-poll-interval",
        Some("EXECD_JUPYTER_IDLE_POLL_INTERVAL"),
    ),
    ("command-retention", Some("EXECD_COMMAND_RETENTION")),
    ("max-finished-commands", Some("EXECD_MAX_FINISHED_COMMANDS")),
    ("session-idle-timeout", Some("EXECD_SESSION_IDLE_TIMEOUT")),
    ("pty-idle-timeout", Some("EXECD_PTY_IDLE_TIMEOUT")),
    ("max-commands", Some("EXECD_MAX_COMMANDS")),
    ("max-sessions", Some("EXECD_MAX_SESSIONS")),
    ("max-watches", Some("EXECD_MAX_WATCHES")),
    ("max-log-bytes", Some("EXECD_MAX_LOG_BYTES")),
    ("warm-shells", Some("EXECD_WARM_SHELLS")),
];

impl Config {
    /// Parses command-line arguments (without the program name) and the
    /// environment, given as a lookup function.
    pub fn parse<I, S, F>(args: I, env: F) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
        F: Fn(&str) -> Option<String>,
    {
        // Start from the environment, then let explicit flags override.
        let mut values: Vec<(&'static str, String, String)> = Vec::new();
        for (flag, var) in FLAGS {
            if let Some(var) = var {
                if let Some(v) = env(var).filter(|v| !v.is_empty()) {
                    values.push((flag, v, (*var).to_string()));
                }
            }
        }
        let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_string()).collect();
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            i += 1;
            if arg == "--" {
                break;
            }
            let Some(stripped) = arg.strip_prefix('-') else {
                break; // Go's flag package stops at the first non-flag argument.
            };
            let stripped = stripped.strip_prefix('-').unwrap_or(stripped);
            if stripped.is_empty() || stripped.starts_with('-') || stripped.starts_with('=') {
                return Err(ConfigError::UnknownFlag(stripped.to_string()));
            }
            let (name, inline) = match stripped.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (stripped, None),
            };
            if name == "h" || name == "help" {
                return Err(ConfigError::Help);
            }
            let Some((flag, _)) = FLAGS.iter().find(|(f, _)| *f == name) else {
                return Err(ConfigError::UnknownFlag(name.to_string()));
            };
            let value = match inline {
                Some(v) => v,
                None => {
                    let v = args
                        .get(i)
                        .cloned()
                        .ok_or_else(|| ConfigError::MissingValue(name.to_string()))?;
                    i += 1;
                    v
                }
            };
            values.retain(|(f, _, _)| f != flag);
            values.push((flag, value, format!("-{flag}")));
        }

        let mut cfg = Config::default();
        for (flag, value, source) in values {
            let invalid = |reason: String| ConfigError::InvalidValue {
                name: source.clone(),
                value: value.clone(),
                reason,
            };
            match flag {
                "port" => cfg.port = value.parse().map_err(|e| invalid(format!("{e}")))?,
                "access-token" => cfg.access_token = non_empty(&value).map(Secret::new),
                "log-level" => {
                    cfg.log_level = value.parse().map_err(|e| invalid(format!("{e}")))?
                }
                "graceful-shutdown-timeout" => {
                    cfg.graceful_shutdown_timeout = non_negative(&value).map_err(invalid)?;
                }
                "jupyter-host" => {
                    if !value.is_empty()
                        && !value.starts_with("http://")
                        && !value.starts_with("https://")
                    {
                        return Err(invalid("must start with http:// or https://".into()));
                    }
                    cfg.jupyter_host = non_empty(&value);
                }
                "jupyter-token" => cfg.jupyter_token = non_empty(&value).map(Secret::new),
                "jupyter-idle-poll-interval" => {
                    let d = parse_go_duration(&value).map_err(invalid)?;
                    // Upstream: a value <= 0 falls back to 100ms.
                    cfg.jupyter_idle_poll_interval = if d <= 0 {
                        Duration::from_millis(100)
                    } else {
                        nanos_to_duration(d)
                    };
                }
                "command-retention" => cfg.command_retention = positive(&value).map_err(invalid)?,
                "session-idle-timeout" => {
                    cfg.session_idle_timeout = positive(&value).map_err(invalid)?;
                }
                "pty-idle-timeout" => cfg.pty_idle_timeout = positive(&value).map_err(invalid)?,
                "max-finished-commands" => {
                    cfg.max_finished_commands = positive_int(&value).map_err(invalid)?;
                }
                "max-commands" => cfg.max_commands = positive_int(&value).map_err(invalid)?,
                "max-sessions" => cfg.max_sessions = positive_int(&value).map_err(invalid)?,
                "max-watches" => cfg.max_watches = positive_int(&value).map_err(invalid)?,
                "max-log-bytes" => {
                    cfg.max_log_bytes = positive_int::<u64>(&value).map_err(invalid)?;
                }
                "warm-shells" => {
                    cfg.warm_shells = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n <= 64)
                        .ok_or_else(|| invalid("must be an integer from 0 to 64".into()))?;
                }
                _ => unreachable!("flag table and match agree"),
            }
        }

        cfg.envs_file = env("EXECD_ENVS")
            .and_then(|v| non_empty(&v))
            .map(PathBuf::from);
        cfg.tmp_dir = env("TMPDIR")
            .and_then(|v| non_empty(&v))
            .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
        cfg.log_file = env("EXECD_LOG_FILE")
            .and_then(|v| non_empty(&v))
            .or_else(|| {
                env("OPENSANDBOX_LOG_OUTPUT").and_then(|v| {
                    v.split(',')
                        .map(str::trim)
                        .find(|s| !s.is_empty())
                        .map(String::from)
                })
            })
            .map(PathBuf::from);
        Ok(cfg)
    }
}

fn non_empty(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

fn non_negative(v: &str) -> Result<Duration, String> {
    let d = parse_go_duration(v)?;
    if d < 0 {
        return Err("must not be negative".into());
    }
    Ok(nanos_to_duration(d))
}

fn positive(v: &str) -> Result<Duration, String> {
    let d = parse_go_duration(v)?;
    if d <= 0 {
        return Err("must be positive".into());
    }
    Ok(nanos_to_duration(d))
}

fn positive_int<T: std::str::FromStr + PartialOrd + Default>(v: &str) -> Result<T, String> {
    match v.parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err("must be a positive integer".into()),
    }
}

fn nanos_to_duration(n: i128) -> Duration {
    let n = u128::try_from(n).unwrap_or(0);
    Duration::new(
        u64::try_from(n / 1_000_000_000).unwrap_or(u64::MAX),
        u32::try_from(n % 1_000_000_000).unwrap_or(0),
    )
}

/// Parses a Go duration string (`300ms`, `1.5h`, `2h45m`, `-1s`, `0`) into
/// signed nanoseconds.
pub fn parse_go_duration(s: &str) -> Result<i128, String> {
    let err = || format!("time: invalid duration {s:?}");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(err());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("time: missing unit in duration {s:?}"))?;
        if num_len == 0 {
            return Err(err());
        }
        let num: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale: f64 = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            u => return Err(format!("time: unknown unit {u:?} in duration {s:?}")),
        };
        total += num * scale;
        rest = &rest[unit_len..];
    }
    if total > 9.2e18 {
        return Err(err());
    }
    // Truncation to whole nanoseconds is the intent.
    #[allow(clippy::cast_possible_truncation)]
    let n = total as i128;
    Ok(if neg { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        Config::parse(args.iter().copied(), |k| env.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = parse(&[], &[]).unwrap();
        assert_eq!(c.port, 44772);
        assert!(c.access_token.is_none());
        assert_eq!(c.graceful_shutdown_timeout, Duration::from_secs(1));
        assert_eq!(c.tmp_dir, PathBuf::from("/tmp"));
        assert_eq!(c.command_retention, Duration::from_secs(3600));
    }

    #[test]
    fn go_style_flags() {
        let c = parse(
            &[
                "-port=1234",
                "--log-level",
                "7",
                "-graceful-shutdown-timeout=500ms",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.port, 1234);
        assert_eq!(c.log_level, 7);
        assert_eq!(c.graceful_shutdown_timeout, Duration::from_millis(500));
    }

    #[test]
    fn env_token_and_flag_override() {
        let c = parse(&[], &[("EXECD_ACCESS_TOKEN", "env-token")]).unwrap();
        assert_eq!(c.access_token.unwrap().expose(), "env-token");
        let c = parse(
            &["--access-token=cli-token"],
            &[("EXECD_ACCESS_TOKEN", "env-token")],
        )
        .unwrap();
        assert_eq!(c.access_token.unwrap().expose(), "cli-token");
    }

    #[test]
    fn secret_never_prints() {
        let c = parse(&["-access-token=hunter2"], &[]).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn idle_poll_zero_falls_back() {
        let c = parse(&["--jupyter-idle-poll-interval=0"], &[]).unwrap();
        assert_eq!(c.jupyter_idle_poll_interval, Duration::from_millis(100));
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse(&["-nope"], &[]).unwrap_err(),
            ConfigError::UnknownFlag("nope".into())
        );
        assert_eq!(
            parse(&["-port"], &[]).unwrap_err(),
            ConfigError::MissingValue("port".into())
        );
        assert!(matches!(
            parse(&["-port=x"], &[]),
            Err(ConfigError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse(&[], &[("EXECD_API_GRACE_SHUTDOWN", "soon")]),
            Err(ConfigError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse(&["-jupyter-host=localhost"], &[]),
            Err(ConfigError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse(&["-command-retention=0s"], &[]),
            Err(ConfigError::InvalidValue { .. })
        ));
        assert_eq!(parse(&["-h"], &[]).unwrap_err(), ConfigError::Help);
    }

    #[test]
    fn env_files_and_dirs() {
        let c = parse(
            &[],
            &[
                ("EXECD_ENVS", "/opt/opensandbox/.env"),
                ("TMPDIR", "/var/tmp"),
                ("OPENSANDBOX_LOG_OUTPUT", " ,/a.log,/b.log"),
            ],
        )
        .unwrap();
        assert_eq!(c.envs_file, Some(PathBuf::from("/opt/opensandbox/.env")));
        assert_eq!(c.tmp_dir, PathBuf::from("/var/tmp"));
        assert_eq!(c.log_file, Some(PathBuf::from("/a.log")));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("300ms"), Ok(300_000_000));
        assert_eq!(parse_go_duration("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(parse_go_duration("2h45m"), Ok(9_900_000_000_000));
        assert_eq!(parse_go_duration("-1s"), Ok(-1_000_000_000));
        assert_eq!(parse_go_duration("1us"), Ok(1000));
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("5d").is_err());
        assert!(parse_go_duration("ms").is_err());
    }
}
