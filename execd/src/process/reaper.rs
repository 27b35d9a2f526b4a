//! The one place that reaps children. Every child execd starts is spawned
//! through [`spawn`], which registers its pid for its exit status; adopted
//! orphans (execd is a subreaper) are reaped and their status discarded.
//!
//! The reaper looks at an exited child before reaping it (`WNOWAIT`): while
//! a spawn is in flight, an exited child that is not registered may be the
//! one std's `Command::spawn` is about to wait for itself (its exec failed),
//! so it is left alone; the spawner runs the reaper again when it is done.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard, OnceLock};

use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

use super::ExitStatus;

#[derive(Default)]
struct State {
    waiters: HashMap<i32, oneshot::Sender<ExitStatus>>,
    spawning: usize,
}

static STATE: OnceLock<Mutex<State>> = OnceLock::new();

fn state() -> MutexGuard<'static, State> {
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

fn exited_pid(s: WaitStatus) -> Option<(Pid, ExitStatus)> {
    match s {
        WaitStatus::Exited(pid, code) => Some((pid, ExitStatus::Code(code))),
        WaitStatus::Signaled(pid, sig, _) => Some((pid, ExitStatus::Signal(sig as i32))),
        _ => None,
    }
}

/// Reaps every exited child it may.
fn reap_all() {
    loop {
        let peek = waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        );
        let pid = match peek {
            Ok(s) => match exited_pid(s) {
                Some((pid, _)) => pid,
                None => return, // StillAlive: nothing has exited
            },
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => return,
            Err(e) => {
                tracing::warn!(error = %e, "waitid failed");
                return;
            }
        };
        let mut st = state();
        if st.spawning > 0 && !st.waiters.contains_key(&pid.as_raw()) {
            return;
        }
        let reaped = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(s) => exited_pid(s),
            Err(Errno::EINTR) => continue,
            Err(_) => None,
        };
        if let Some((pid, exit)) = reaped {
            if let Some(tx) = st.waiters.remove(&pid.as_raw()) {
                let _ = tx.send(exit);
            }
        }
    }
}

/// Spawns `cmd` and returns the child (never wait on it) and a receiver for
/// its exit status.
pub fn spawn(cmd: &mut Command) -> io::Result<(Child, oneshot::Receiver<ExitStatus>)> {
    let (tx, rx) = oneshot::channel();
    state().spawning += 1;
    // No lock is held across fork and exec: other commands' exits are
    // dispatched meanwhile.
    let spawned = cmd.spawn();
    {
        let mut st = state();
        st.spawning -= 1;
        if let Ok(child) = &spawned {
            st.waiters
                .insert(i32::try_from(child.id()).unwrap_or(i32::MAX), tx);
        }
    }
    // Children left for this spawn to finish can be reaped now.
    reap_all();
    Ok((spawned?, rx))
}
