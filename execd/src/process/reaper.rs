//! The one place that calls `waitpid`. Every child execd starts is spawned
//! through [`spawn`], which registers its pid for its exit status. A status
//! reaped before its pid was registered waits, briefly and in bounded
//! number, among the unclaimed ones; adopted orphans (execd is a subreaper)
//! end up there too and age out.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

use super::ExitStatus;

/// Unclaimed exit statuses kept at most.
const MAX_UNCLAIMED: usize = 4096;
/// How long an unclaimed status is kept.
const UNCLAIMED_FOR: Duration = Duration::from_secs(10);

#[derive(Default)]
struct State {
    waiters: HashMap<i32, oneshot::Sender<ExitStatus>>,
    unclaimed: VecDeque<(i32, ExitStatus, Instant)>,
}

static STATE: OnceLock<Mutex<State>> = OnceLock::new();

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE
        .get_or_init(|| Mutex::new(State::default()))
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts the reaper task and makes execd a child subreaper. Call once, inside
/// the tokio runtime, before anything is spawned.
pub fn start() -> io::Result<()> {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphans go to pid 1");
    }
    let mut sigchld = signal(SignalKind::child())?;
    tokio::spawn(async move {
        loop {
            reap_all();
            if sigchld.recv().await.is_none() {
                break;
            }
        }
    });
    Ok(())
}

fn reap_all() {
    loop {
        let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signal(sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "waitpid failed");
                return;
            }
        };
        let (pid, exit) = (status.0.as_raw(), status.1);
        let mut st = state();
        match st.waiters.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(exit);
            }
            None => {
                let now = Instant::now();
                while st
                    .unclaimed
                    .front()
                    .is_some_and(|(_, _, t)| now.duration_since(*t) > UNCLAIMED_FOR)
                    || st.unclaimed.len() >= MAX_UNCLAIMED
                {
                    st.unclaimed.pop_front();
                }
                st.unclaimed.push_back((pid, exit, now));
            }
        }
    }
}

/// Spawns `cmd` and returns the child (never wait on it) and a receiver for
/// its exit status.
pub fn spawn(cmd: &mut Command) -> io::Result<(Child, oneshot::Receiver<ExitStatus>)> {
    let (tx, rx) = oneshot::channel();
    let before = Instant::now();
    // No lock is held across fork and exec: other commands' exits are
    // dispatched meanwhile.
    let child = cmd.spawn()?;
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let mut st = state();
    // Reaped already? Only a status reaped after this fork began can be this
    // child's (until then its pid belonged to someone else).
    let early = st
        .unclaimed
        .iter()
        .position(|(p, _, t)| *p == pid && *t >= before);
    match early.and_then(|i| st.unclaimed.remove(i)) {
        Some((_, exit, _)) => {
            let _ = tx.send(exit);
        }
        None => {
            st.waiters.insert(pid, tx);
        }
    }
    Ok((child, rx))
}
