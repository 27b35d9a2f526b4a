//! Warm shells: a `bash` started ahead of time, its process group, pipes and
//! subreaper flag in place, blocked reading its command from descriptor 3.
//! A foreground command that needs nothing a warm shell cannot give (no
//! `uid`/`gid`, no `argv`, no request `envs`, an unchanged `EXECD_ENVS` file)
//! takes one, so the fork, exec and start-up of bash are off its critical
//! path; a new warm shell is started in the background.
//!
//! The command runs through `eval` in that bash, not as `bash -c` would run
//! it: bash does not replace itself with the last command (it stays the
//! leader), so a program killed by a signal on its own reports exit code
//! 128+N where a cold `bash -c` reports -1. `-warm-shells=0` turns this off.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::env::{command_env, Env};
use super::run::{spawn_piped, Started};
use crate::process::spawn::prepare;

/// Largest command (with its cwd) sent to a warm shell; longer ones start cold.
const MAX_WARM_COMMAND: usize = 32 * 1024;
/// How long a command waits for a warm shell that is being started before
/// it starts cold. Waiting for one already under way is faster than a cold
/// start when commands come back to back.
const WAIT_FOR_STARTING: Duration = Duration::from_millis(20);

/// The script a warm bash runs (one line, so `$LINENO` in the command
/// counts from 1 as under `bash -c`): read the cwd and the command (each
/// ended by a NUL) from descriptor 3, `cd`, then run the command in this
/// shell. Like `bash -c`, a command that is one simple command running a
/// program replaces the shell (`exec`), so the program is the leader and its
/// own exit status (a signal, say) is what execd sees; that is decided
/// conservatively: plain words only (no quotes, expansions, globs or
/// operators) and a first word that is a program, not a builtin, function
/// or keyword. Anything else runs through `eval`.
const BOOTSTRAP: &str = concat!(
    r#"IFS= read -r -d '' __execd_d <&3 && IFS= read -r -d '' __execd_c <&3 || exit 255; exec 3<&-; "#,
    r#"if [ -n "$__execd_d" ]; then cd -- "$__execd_d" || exit 1; fi; unset __execd_d; "#,
    r#"BASH_EXECUTION_STRING=$__execd_c; "#,
    // A program name, then words of safe characters, single-quoted strings,
    // or double-quoted strings without `$`, backquote or backslash.
    r#"__execd_re=$'^[A-Za-z0-9_./-]+( +([A-Za-z0-9_./=:,@%+-]|\'[^\']*\'|"[^"$`\\]*")+)*$'; "#,
    r#"if [[ $__execd_c =~ $__execd_re ]]; then __execd_w=${__execd_c%% *}; "#,
    r#"case $__execd_w in time|coproc|function|select|if|while|until|for|case|do|done|then|else|elif|fi|esac|in) ;; "#,
    r#"*/*) [[ -f $__execd_w && -x $__execd_w ]] && unset __execd_re __execd_w && eval "exec $__execd_c" ;; "#,
    r#"*) ! declare -F "$__execd_w" >/dev/null && hash "$__execd_w" 2>/dev/null && hash -t "$__execd_w" >/dev/null 2>&1 "#,
    r#"&& unset __execd_re __execd_w && eval "exec $__execd_c" ;; esac; fi; unset __execd_re __execd_w; "#,
    r#"eval "unset __execd_c; $__execd_c""#
);

/// Identity of the `EXECD_ENVS` file's content: a changed file means the
/// warm shells' environment is stale.
type Stamp = Option<(u64, i64, i64, u64)>;

fn stamp(path: Option<&Path>) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path?).ok()?;
    Some((m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
}

/// A started, waiting shell.
#[derive(Debug)]
pub(super) struct Warm {
    started: Started,
    ctrl: std::io::PipeWriter,
    stamp: Stamp,
}

/// A bounded pool of warm shells.
#[derive(Debug)]
pub struct WarmPool {
    size: usize,
    bash: Option<PathBuf>,
    base_env: Env,
    envs_file: Option<PathBuf>,
    slots: Mutex<Vec<Warm>>,
    starting: AtomicUsize,
    ready: Notify,
}

impl WarmPool {
    /// A pool of `size` shells (0 disables it).
    pub fn new(size: usize, base_env: Env, envs_file: Option<PathBuf>) -> Arc<Self> {
        let bash = crate::process::spawn::bash().map(Path::to_path_buf);
        Arc::new(Self {
            size: if bash.is_some() { size } else { 0 },
            bash,
            base_env,
            envs_file,
            slots: Mutex::new(Vec::new()),
            starting: AtomicUsize::new(0),
            ready: Notify::new(),
        })
    }

    fn slots(&self) -> MutexGuard<'_, Vec<Warm>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a command with this shell program can run warm.
    pub(super) fn serves(&self, program: &Path) -> bool {
        self.size > 0 && self.bash.as_deref() == Some(program)
    }

    /// Starts shells in the background until the pool (ready and starting)
    /// is full.
    pub fn refill(self: &Arc<Self>) {
        loop {
            let have = self.slots().len() + self.starting.load(Ordering::Acquire);
            if have >= self.size {
                return;
            }
            self.starting.fetch_add(1, Ordering::AcqRel);
            let pool = self.clone();
            tokio::task::spawn_blocking(move || {
                match pool.spawn() {
                    Ok(w) => pool.slots().push(w),
                    Err(e) => tracing::warn!(error = %e, "cannot start a warm shell"),
                }
                pool.starting.fetch_sub(1, Ordering::AcqRel);
                pool.ready.notify_waiters();
            });
        }
    }

    fn spawn(&self) -> std::io::Result<Warm> {
        let bash = self
            .bash
            .as_deref()
            .ok_or_else(|| std::io::Error::other("no bash"))?;
        let st = stamp(self.envs_file.as_deref());
        let env = command_env(&self.base_env, self.envs_file.as_deref(), None);
        let (r, w) = std::io::pipe()?;
        let mut cmd = Command::new(bash);
        cmd.args(["-c", BOOTSTRAP])
            .env_clear()
            .envs(env.pairs().iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        use std::os::fd::AsRawFd;
        prepare(&mut cmd, None, Some((r.as_raw_fd(), 3)));
        let started = spawn_piped(&mut cmd);
        drop(cmd);
        drop(r);
        Ok(Warm {
            started: started?,
            ctrl: w,
            stamp: st,
        })
    }

    /// Takes a warm shell (waiting briefly for one being started) and hands
    /// it `command` to run in `cwd`; None means: start it cold.
    pub(super) async fn take(
        self: &Arc<Self>,
        command: &str,
        cwd: Option<&str>,
    ) -> Option<Started> {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(s) = self.try_take(command, cwd) {
                self.refill();
                return Some(s);
            }
            if self.size == 0 || self.starting.load(Ordering::Acquire) == 0 {
                self.refill();
                return None;
            }
            if tokio::time::timeout(WAIT_FOR_STARTING, notified)
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// Takes a ready warm shell that still matches the environment commands
    /// get now, and hands it the command.
    fn try_take(&self, command: &str, cwd: Option<&str>) -> Option<Started> {
        if self.size == 0 || command.len() + cwd.map_or(0, str::len) > MAX_WARM_COMMAND {
            return None;
        }
        let current = stamp(self.envs_file.as_deref());
        loop {
            let mut w = self.slots().pop()?;
            if w.stamp != current || w.started.exited() {
                continue; // stale or dead: dropping it closes descriptor 3 and the shell exits
            }
            let mut msg = Vec::with_capacity(command.len() + 64);
            msg.extend_from_slice(cwd.unwrap_or("").as_bytes());
            msg.push(0);
            msg.extend_from_slice(command.as_bytes());
            msg.push(0);
            // The pipe holds 64 KiB, more than MAX_WARM_COMMAND: this does not block.
            if w.ctrl.write_all(&msg).is_err() {
                continue;
            }
            drop(w.ctrl);
            return Some(w.started);
        }
    }
}
