//! Bash sessions: a real persistent shell per session. Shell variables,
//! functions, aliases, options, `cd` and exports all persist between runs;
//! stdout and stderr stay separate. Runs in one session are serialized.
//! A session unused for the idle timeout is closed.

pub mod marker;
mod shell;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::time::Instant as TokioInstant;
use tracing::Instrument;

use crate::command::env::{command_env, Env};
use crate::command::lines::LineSplitter;
use crate::config::Config;
use crate::pathutil::expand_path;
use crate::process::tree::{self, Proc};
use crate::process::ExitStatus;
use crate::wire::event::Event;
use crate::wire::stream::{EventSink, StreamRx};
use marker::Piece;
use shell::{Out, Shell};

/// Default run timeout when the request gives none (upstream: 24 h).
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// How long to wait for the stdout/stderr markers once the exit status is
/// known (they can be lost when the command redirected the shell's output).
const MARKER_GRACE: Duration = Duration::from_millis(250);
/// How long a timed-out run may take to report after its processes were killed.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// Body of `POST /session`.
#[derive(Debug, Default, Deserialize)]
pub struct CreateRequest {
    /// Initial working directory (created if missing).
    pub cwd: Option<String>,
}

/// Body of `POST /session/{id}/run`.
#[derive(Debug, Default, Deserialize)]
pub struct RunRequest {
    /// The command.
    pub command: Option<String>,
    /// Working directory for this run (it persists afterwards).
    pub cwd: Option<String>,
    /// Milliseconds; absent or 0 means 24 h.
    pub timeout: Option<i64>,
}

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// No such session.
    #[error("session {0} not found")]
    NotFound(String),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// Too many sessions.
    #[error("too many sessions (limit {0})")]
    TooMany(usize),
    /// bash is not installed.
    #[error("bash not found in PATH")]
    NoBash,
    /// Creating the session failed.
    #[error("{0}")]
    Create(String),
}

/// One session.
#[derive(Debug)]
pub struct Session {
    id: String,
    cwd: Option<String>,
    env: Env,
    shell: tokio::sync::Mutex<Option<Shell>>,
    leader: Mutex<Option<Proc>>,
    last_used: Mutex<Instant>,
}

impl Session {
    fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }

    fn kill(&self) {
        if let Some(l) = lock(&self.leader).take() {
            tree::kill_now(&HashSet::from([l]));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// All sessions.
#[derive(Debug)]
pub struct Sessions {
    cfg: Arc<Config>,
    base_env: Env,
    map: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    /// The session service.
    pub fn new(cfg: Arc<Config>, base_env: Env) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            base_env,
            map: Mutex::new(HashMap::new()),
        })
    }

    fn get(&self, id: &str) -> Result<Arc<Session>, SessionError> {
        lock(&self.map)
            .get(id)
            .cloned()
            .ok_or_else(|| SessionError::NotFound(id.to_string()))
    }

    /// Whether a session with this id exists.
    pub fn contains(&self, id: &str) -> bool {
        lock(&self.map).contains_key(id)
    }

    /// Creates a session and starts its shell.
    pub async fn create(&self, req: CreateRequest) -> Result<String, SessionError> {
        let bash = crate::process::spawn::bash().ok_or(SessionError::NoBash)?;
        if lock(&self.map).len() >= self.cfg.max_sessions {
            return Err(SessionError::TooMany(self.cfg.max_sessions));
        }
        let env = command_env(&self.base_env, self.cfg.envs_file.as_deref(), None);
        let cwd = match req.cwd.filter(|c| !c.is_empty()) {
            None => None,
            Some(raw) => {
                let path = expand_path(&raw, |k| env.get(k).map(String::from))
                    .map_err(|e| SessionError::Create(e.to_string()))?;
                std::fs::create_dir_all(&path)
                    .map_err(|e| SessionError::Create(format!("mkdir {path}: {e}")))?;
                Some(path)
            }
        };
        let mut shell = Shell::spawn(bash, &env, cwd.as_deref())
            .map_err(|e| SessionError::Create(e.to_string()))?;
        shell
            .init()
            .await
            .map_err(|e| SessionError::Create(e.to_string()))?;
        let id = uuid::Uuid::new_v4().to_string();
        let session = Arc::new(Session {
            id: id.clone(),
            cwd,
            env,
            leader: Mutex::new(shell.leader),
            shell: tokio::sync::Mutex::new(Some(shell)),
            last_used: Mutex::new(Instant::now()),
        });
        lock(&self.map).insert(id.clone(), session);
        tracing::info!(session = %id, "session created");
        Ok(id)
    }

    /// Deletes a session, killing its shell and everything it started.
    pub fn delete(&self, id: &str) -> Result<(), SessionError> {
        let s = lock(&self.map)
            .remove(id)
            .ok_or_else(|| SessionError::NotFound(id.to_string()))?;
        s.kill();
        tracing::info!(session = %id, "session deleted");
        Ok(())
    }

    /// Closes sessions idle for longer than the configured timeout.
    pub fn sweep(&self) {
        let idle = self.cfg.session_idle_timeout;
        let stale: Vec<String> = lock(&self.map)
            .values()
            .filter(|s| lock(&s.last_used).elapsed() >= idle && s.shell.try_lock().is_ok())
            .map(|s| s.id.clone())
            .collect();
        for id in stale {
            tracing::info!(session = %id, "closing idle session");
            let _ = self.delete(&id);
        }
    }

    /// Starts a run and returns its event stream.
    pub fn run(&self, id: &str, req: RunRequest) -> Result<StreamRx, SessionError> {
        let session = self.get(id)?;
        let command = req
            .command
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                SessionError::Invalid(
                    "Key: 'RunInSessionRequest.Command' Error:Field validation for 'Command' failed on the 'required' tag"
                        .into(),
                )
            })?;
        if command.contains('\0') {
            return Err(SessionError::Invalid("command contains a NUL byte".into()));
        }
        let timeout = match req.timeout {
            None | Some(0) => DEFAULT_RUN_TIMEOUT,
            Some(t) if t < 0 => {
                return Err(SessionError::Invalid(
                    "Key: 'RunInSessionRequest.Timeout' Error:Field validation for 'Timeout' failed on the 'gte' tag"
                        .into(),
                ))
            }
            Some(t) => Duration::from_millis(t.unsigned_abs()),
        };
        let cwd = match req.cwd.filter(|c| !c.is_empty()) {
            None => None,
            Some(raw) => {
                let path =
                    expand_path(&raw, |k| session.env.get(k).map(String::from)).map_err(|e| {
                        SessionError::Invalid(format!(
                            "cannot resolve working directory {raw:?}: {e}"
                        ))
                    })?;
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_dir() => Some(path),
                    Ok(_) => {
                        return Err(SessionError::Invalid(format!(
                            "working directory path is not a directory: {raw}"
                        )))
                    }
                    Err(e) => {
                        return Err(SessionError::Invalid(format!(
                            "working directory does not exist: {raw}: stat {path}: {e}"
                        )))
                    }
                }
            }
        };
        let (sink, rx) = EventSink::channel();
        let span = tracing::info_span!("session_run", session = %session.id);
        tokio::spawn(run_task(session, command, cwd, timeout, sink).instrument(span));
        Ok(rx)
    }
}

/// What ended a run.
enum End {
    Status(i32),
    ShellExited(ExitStatus),
    TimedOut,
    Failed(String),
}

/// A finished run: how it ended, and whether the shell is gone.
struct Outcome {
    end: End,
    shell_gone: bool,
}

async fn run_task(
    session: Arc<Session>,
    command: String,
    cwd: Option<String>,
    timeout: Duration,
    mut sink: EventSink,
) {
    let mut guard = session.shell.lock().await;
    session.touch();
    let started = Instant::now();
    let mut first = Event::init(&session.id).to_bytes();
    Event::ping().write_to(&mut first);

    if guard.is_none() {
        // The previous shell exited (e.g. `exit` in a run): start a fresh one.
        let respawned = match crate::process::spawn::bash() {
            None => Err("bash not found in PATH".to_string()),
            Some(bash) => match Shell::spawn(bash, &session.env, session.cwd.as_deref()) {
                Ok(mut sh) => sh.init().await.map(|()| sh).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
        };
        match respawned {
            Ok(sh) => {
                *lock(&session.leader) = sh.leader;
                *guard = Some(sh);
            }
            Err(e) => {
                Event::command_error(e.clone(), e).write_to(&mut first);
                sink.send(first).await;
                return;
            }
        }
    }
    let Some(shell) = guard.as_mut() else { return };
    sink.send(first).await;

    // Processes that exist before the run (background jobs of earlier runs)
    // are not the run's to kill on timeout.
    let before: HashSet<Proc> = shell.leader.map(tree::descendants).unwrap_or_default();
    let outcome = match shell.send_run(&command, cwd.as_deref()).await {
        Err(e) => Outcome {
            end: End::Failed(format!("write to shell: {e}")),
            shell_gone: false,
        },
        Ok(seq) => collect(shell, seq, timeout, &before, &mut sink).await,
    };
    let event = match outcome.end {
        End::Status(0) => {
            shell.set_last_status(0);
            Event::complete(i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX))
        }
        End::Status(code) => {
            shell.set_last_status(code);
            Event::command_error(code.to_string(), format!("exit status {code}"))
        }
        End::ShellExited(status) => {
            Event::command_error(status.code().to_string(), status.describe())
        }
        End::TimedOut => {
            shell.set_last_status(137);
            Event::command_error("-1".into(), format!("timeout after {timeout:?}"))
        }
        End::Failed(e) => {
            session.kill();
            Event::command_error(e.clone(), e)
        }
    };
    if outcome.shell_gone {
        *guard = None;
        *lock(&session.leader) = None;
    }
    session.touch();
    sink.send(event.to_bytes()).await;
}

/// Streams one run's output until its end markers (or the shell's exit).
async fn collect(
    shell: &mut Shell,
    seq: u64,
    timeout: Duration,
    before: &HashSet<Proc>,
    sink: &mut EventSink,
) -> Outcome {
    let mut out_lines = LineSplitter::default();
    let mut err_lines = LineSplitter::default();
    let (mut out_done, mut err_done) = (false, false);
    let mut result: Option<End> = None;
    let mut grace_until: Option<TokioInstant> = None;
    let deadline = TokioInstant::now().checked_add(timeout);
    let mut timed_out = false;
    let mut shell_gone = false;
    let mut ping = tokio::time::interval_at(
        TokioInstant::now() + Duration::from_secs(3),
        Duration::from_secs(3),
    );
    let far = TokioInstant::now() + Duration::from_secs(86400 * 365);
    loop {
        if result.is_some() && out_done && err_done {
            break;
        }
        let mut chunk = Vec::new();
        tokio::select! {
            o = shell.out.recv(), if !out_done => {
                out_done = handle(o, seq, "stdout", &mut out_lines, &mut chunk);
            }
            e = shell.err.recv(), if !err_done => {
                err_done = handle(e, seq, "stderr", &mut err_lines, &mut chunk);
            }
            line = shell.ctrl.next_line(), if result.is_none() => {
                let code = line.ok().flatten().and_then(|l| l.trim().parse::<i32>().ok());
                if let Some(code) = code {
                    result = Some(if timed_out { End::TimedOut } else { End::Status(code) });
                    grace_until = Some(TokioInstant::now() + MARKER_GRACE);
                }
            }
            status = &mut shell.exit, if !shell_gone => {
                shell_gone = true;
                if result.is_none() {
                    let status = status.unwrap_or(ExitStatus::Code(-1));
                    result = Some(if timed_out { End::TimedOut } else { End::ShellExited(status) });
                }
                grace_until = Some(TokioInstant::now() + MARKER_GRACE);
            }
            () = tokio::time::sleep_until(deadline.unwrap_or(far)), if !timed_out && deadline.is_some() => {
                timed_out = true;
                kill_run(shell.leader, before);
                grace_until = Some(TokioInstant::now() + KILL_GRACE);
            }
            () = tokio::time::sleep_until(grace_until.unwrap_or(far)), if grace_until.is_some() => {
                if result.is_none() {
                    // The run did not come back after its processes were
                    // killed (a builtin loop, say): kill the shell itself.
                    if let Some(l) = shell.leader {
                        tree::kill_now(&HashSet::from([l]));
                    }
                    shell_gone = true;
                    result = Some(End::TimedOut);
                    grace_until = Some(TokioInstant::now() + MARKER_GRACE);
                    continue;
                }
                break;
            }
            _ = ping.tick() => Event::ping().write_to(&mut chunk),
        }
        sink.send(chunk).await;
    }
    let mut chunk = Vec::new();
    out_lines.finish(&mut |l| Event::output("stdout", l).write_to(&mut chunk));
    err_lines.finish(&mut |l| Event::output("stderr", l).write_to(&mut chunk));
    sink.send(chunk).await;
    let end = result.unwrap_or_else(|| End::Failed("session shell stopped responding".into()));
    Outcome { end, shell_gone }
}

/// Handles one piece of a stream; returns whether this run's part of the
/// stream is complete.
fn handle(
    o: Option<Out>,
    seq: u64,
    kind: &'static str,
    lines: &mut LineSplitter,
    chunk: &mut Vec<u8>,
) -> bool {
    match o {
        None | Some(Out::Eof) => true,
        Some(Out::Piece(Piece::Marker(s))) => s >= seq,
        Some(Out::Piece(Piece::Data(d))) => {
            lines.push(&d, &mut |l| Event::output(kind, l).write_to(chunk));
            false
        }
    }
}

/// Kills the processes a run started: descendants of the shell that did not
/// exist before the run (background jobs of earlier runs are left alone).
fn kill_run(leader: Option<Proc>, before: &HashSet<Proc>) {
    let Some(leader) = leader else { return };
    let victims: HashSet<Proc> = tree::descendants(leader)
        .difference(before)
        .copied()
        .collect();
    if !victims.is_empty() {
        tree::kill_now(&victims);
    }
}
