//! `/command`: running commands in the foreground (events streamed as the
//! output is produced) or the background (output spooled to a bounded log),
//! interrupting them, and reporting their status and logs.

pub mod env;
pub mod lines;
pub mod registry;
mod run;
pub mod warm;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use crate::config::Config;
use crate::pathutil::expand_path;
use crate::process::tree;
use crate::wire::stream::StreamRx;
use env::{command_env, Env};
use registry::{Record, Registry};

/// How long an interrupt waits after SIGTERM before SIGKILL (upstream: 3 s).
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(3);

/// Body of `POST /command`.
#[derive(Debug, Default, Deserialize)]
pub struct RunRequest {
    /// Shell command, run as `bash -c` (or `sh -c` without bash).
    pub command: Option<String>,
    /// Program and arguments, run without a shell (SDK 1.1.1).
    pub argv: Option<Vec<String>>,
    /// Working directory; `$VAR` and `~` are expanded.
    pub cwd: Option<String>,
    /// Run detached; output goes to the log endpoint.
    #[serde(default)]
    pub background: bool,
    /// Milliseconds before the command's process tree is killed; absent or 0 = none.
    pub timeout: Option<i64>,
    /// Run as this uid.
    pub uid: Option<u32>,
    /// Run with this gid (needs `uid`).
    pub gid: Option<u32>,
    /// Extra environment variables.
    pub envs: Option<BTreeMap<String, String>>,
}

/// Why a command request failed before it started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The working directory is unusable.
    #[error("{0}")]
    BadCwd(String),
    /// Too many commands are running.
    #[error("too many running commands (limit {0})")]
    TooMany(usize),
    /// No command with this id.
    #[error("command not found: {0}")]
    NotFound(String),
    /// The command is not running.
    #[error("command {0} is not running")]
    NotRunning(String),
    /// The command is a foreground one (no spooled log).
    #[error("command {0} is not running in background")]
    NotBackground(String),
    /// An I/O failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The command service.
#[derive(Debug)]
pub struct Commands {
    cfg: Arc<Config>,
    base_env: Env,
    registry: Registry,
    warm: Arc<warm::WarmPool>,
}

/// A validated run, ready to spawn.
#[derive(Debug)]
struct Plan {
    id: String,
    content: String,
    program: PathBuf,
    args: Vec<String>,
    env: Env,
    cwd: Option<String>,
    timeout: Option<Duration>,
    creds: Option<crate::process::creds::Credentials>,
    /// Nothing in the request stops it from running in a warm shell.
    warm_ok: bool,
}

impl Commands {
    /// A service using `cfg` and execd's environment `base_env`.
    pub fn new(cfg: Arc<Config>, base_env: Env) -> Arc<Self> {
        let registry = Registry::new(cfg.command_retention, cfg.max_finished_commands);
        let warm = warm::WarmPool::new(cfg.warm_shells, base_env.clone(), cfg.envs_file.clone());
        Arc::new(Self {
            cfg,
            base_env,
            registry,
            warm,
        })
    }

    /// Starts the warm shells in the background.
    pub fn warm_up(&self) {
        self.warm.refill();
    }

    /// The registry of records.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn plan(&self, req: RunRequest) -> Result<Plan, CommandError> {
        let command = req.command.filter(|c| !c.is_empty());
        let argv = req.argv.filter(|a| !a.is_empty());
        let argv_given = argv.as_ref().map(Vec::len);
        let (content, program, args) = match (command, argv) {
            (Some(_), Some(_)) => {
                return Err(CommandError::Invalid("only one of command and argv may be given".into()))
            }
            (None, None) => {
                return Err(CommandError::Invalid(
                    "Key: 'RunCommandRequest.Command' Error:Field validation for 'Command' failed on the 'required' tag"
                        .into(),
                ))
            }
            (Some(c), None) => (c.clone(), crate::process::spawn::shell().to_path_buf(), vec!["-c".into(), c]),
            (None, Some(a)) => (a.join(" "), PathBuf::from(&a[0]), a[1..].to_vec()),
        };
        if content.contains('\0') || args.iter().any(|a| a.contains('\0')) {
            return Err(CommandError::Invalid("command contains a NUL byte".into()));
        }
        let timeout = match req.timeout {
            None | Some(0) => None,
            Some(t) if t < 0 => {
                return Err(CommandError::Invalid(
                    "Key: 'RunCommandRequest.Timeout' Error:Field validation for 'Timeout' failed on the 'gte' tag"
                        .into(),
                ))
            }
            Some(t) => Some(Duration::from_millis(t.unsigned_abs())),
        };
        if req.gid.is_some() && req.uid.is_none() {
            return Err(CommandError::Invalid(
                "uid is required when gid is provided".into(),
            ));
        }
        let env = command_env(
            &self.base_env,
            self.cfg.envs_file.as_deref(),
            req.envs.as_ref(),
        );
        if env
            .pairs()
            .iter()
            .any(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0'))
        {
            return Err(CommandError::Invalid(
                "envs: names must be non-empty without '=' and nothing may contain NUL".into(),
            ));
        }
        let cwd = match req.cwd.filter(|c| !c.is_empty()) {
            None => None,
            Some(raw) => {
                let path = expand_path(&raw, |k| env.get(k).map(String::from)).map_err(|e| {
                    CommandError::BadCwd(format!("cannot resolve working directory {raw:?}: {e}"))
                })?;
                match std::fs::metadata(&path) {
                    Err(e) => {
                        return Err(CommandError::BadCwd(format!(
                            "working directory does not exist: {raw}: stat {path}: {e}"
                        )))
                    }
                    Ok(m) if !m.is_dir() => {
                        return Err(CommandError::BadCwd(format!(
                            "working directory path is not a directory: {raw}"
                        )))
                    }
                    Ok(_) => Some(path),
                }
            }
        };
        let warm_ok = argv_given.is_none()
            && req.uid.is_none()
            && req.envs.as_ref().is_none_or(BTreeMap::is_empty);
        let creds = req
            .uid
            .map(|uid| crate::process::creds::resolve_system(uid, req.gid));
        Ok(Plan {
            id: uuid::Uuid::new_v4().simple().to_string(),
            content,
            program,
            args,
            env,
            cwd,
            timeout,
            creds,
            warm_ok,
        })
    }

    /// Starts a command and returns its event stream.
    pub async fn run(self: &Arc<Self>, req: RunRequest) -> Result<StreamRx, CommandError> {
        let background = req.background;
        let plan = self.plan(req)?;
        if !self.registry.try_reserve(self.cfg.max_commands) {
            return Err(CommandError::TooMany(self.cfg.max_commands));
        }
        let res = if background {
            run::background(self, plan)
        } else {
            run::foreground(self, plan).await
        };
        if res.is_err() {
            self.registry.release();
        }
        res
    }

    /// Interrupts a running command: SIGTERM to its whole process tree, then
    /// SIGKILL after [`INTERRUPT_GRACE`]. Returns once it has ended.
    pub async fn interrupt(&self, id: &str) -> Result<(), CommandError> {
        let rec = self
            .registry
            .get(id)
            .ok_or_else(|| CommandError::NotFound(id.to_string()))?;
        let leader = rec
            .leader()
            .ok_or_else(|| CommandError::NotRunning(id.to_string()))?;
        tracing::info!(command = id, "interrupting");
        tree::terminate(leader, INTERRUPT_GRACE).await;
        rec.wait_done(Duration::from_secs(2)).await;
        Ok(())
    }

    /// Looks a record up.
    pub fn get(&self, id: &str) -> Result<Arc<Record>, CommandError> {
        self.registry
            .get(id)
            .ok_or_else(|| CommandError::NotFound(id.to_string()))
    }

    /// The spool file of a background command.
    pub fn log_path(&self, id: &str) -> Result<PathBuf, CommandError> {
        let rec = self.get(id)?;
        rec.log_path
            .clone()
            .ok_or_else(|| CommandError::NotBackground(id.to_string()))
    }

    /// Removes expired records; call periodically.
    pub fn sweep(&self) {
        let n = self.registry.sweep(Instant::now());
        if n > 0 {
            tracing::debug!(removed = n, "swept finished command records");
        }
    }

    fn spool_path(&self, id: &str) -> PathBuf {
        self.cfg.tmp_dir.join(format!("{id}.output"))
    }
}

fn elapsed_ms(since: Instant) -> i64 {
    i64::try_from(since.elapsed().as_millis()).unwrap_or(i64::MAX)
}

fn now() -> SystemTime {
    SystemTime::now()
}
