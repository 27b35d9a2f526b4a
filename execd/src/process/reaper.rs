//! The one place that calls `waitpid`. Every child execd starts is spawned
//! through [`spawn`], which registers its pid before the reaper can see it
//! exit; adopted orphans (execd is a subreaper) are reaped and discarded.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

use super::ExitStatus;

static WAITERS: OnceLock<Mutex<HashMap<i32, oneshot::Sender<ExitStatus>>>> = OnceLock::new();

fn waiters() -> &'static Mutex<HashMap<i32, oneshot::Sender<ExitStatus>>> {
    WAITERS.get_or_init(|| Mutex::new(HashMap::new()))
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
        let waiter = waiters()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&status.0.as_raw());
        if let Some(tx) = waiter {
            let _ = tx.send(status.1);
        }
    }
}

/// Spawns `cmd` and returns the child (never wait on it) and a receiver for
/// its exit status.
pub fn spawn(cmd: &mut Command) -> io::Result<(Child, oneshot::Receiver<ExitStatus>)> {
    let (tx, rx) = oneshot::channel();
    // Hold the lock across fork so that the reaper cannot reap the child
    // before it is registered.
    let mut map = waiters()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let child = cmd.spawn()?;
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    map.insert(pid, tx);
    Ok((child, rx))
}
