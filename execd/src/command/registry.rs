//! Records of commands (running and finished) and their retention: a finished
//! record and its spooled log are removed after the retention period, and
//! never more than a fixed number of finished records are kept.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::watch;

use crate::process::tree::Proc;
use crate::process::ExitStatus;
use crate::wire::time::rfc3339_nano;

/// What is known about one command.
#[derive(Debug)]
pub struct Record {
    /// 32 lowercase hex characters.
    pub id: String,
    /// The command as given.
    pub content: String,
    /// Whether it runs in the background (logs spooled to `log_path`).
    pub background: bool,
    /// Spool file of a background command.
    pub log_path: Option<PathBuf>,
    /// When it started.
    pub started_at: SystemTime,
    state: Mutex<State>,
    done: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct State {
    leader: Option<Proc>,
    exit_code: Option<i32>,
    error: Option<String>,
    finished_at: Option<SystemTime>,
    finished_instant: Option<Instant>,
}

/// The JSON of `GET /command/status/{id}`, in upstream's field order.
#[derive(Debug, Serialize)]
pub struct Status {
    id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    content: String,
    running: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<String>,
}

impl Record {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The leader process while the command runs.
    pub fn leader(&self) -> Option<Proc> {
        let s = self.state();
        if s.finished_at.is_some() {
            None
        } else {
            s.leader
        }
    }

    /// Whether the command is still running.
    pub fn running(&self) -> bool {
        self.state().finished_at.is_none()
    }

    /// Records the end of the command.
    pub fn finish(&self, exit: Result<ExitStatus, String>) {
        {
            let mut s = self.state();
            match exit {
                Ok(status) => {
                    s.exit_code = Some(status.code());
                    s.error = (!status.success()).then(|| status.describe());
                }
                Err(e) => {
                    s.exit_code = Some(255);
                    s.error = Some(e);
                }
            }
            s.finished_at = Some(SystemTime::now());
            s.finished_instant = Some(Instant::now());
            s.leader = None;
        }
        self.done.send_replace(true);
    }

    /// Waits until the command has finished, at most `limit`.
    pub async fn wait_done(&self, limit: Duration) -> bool {
        let mut rx = self.done.subscribe();
        let done = tokio::time::timeout(limit, rx.wait_for(|d| *d))
            .await
            .is_ok();
        done
    }

    /// The status as the API reports it.
    pub fn status(&self) -> Status {
        let s = self.state();
        let finished = s.finished_at.is_some();
        Status {
            id: self.id.clone(),
            content: self.content.clone(),
            running: !finished,
            exit_code: if finished { s.exit_code } else { None },
            error: s.error.clone(),
            started_at: rfc3339_nano(self.started_at),
            finished_at: s.finished_at.map(rfc3339_nano),
        }
    }
}

/// All command records.
#[derive(Debug)]
pub struct Registry {
    records: Mutex<HashMap<String, Arc<Record>>>,
    running: AtomicUsize,
    retention: Duration,
    max_finished: usize,
}

impl Registry {
    /// An empty registry.
    pub fn new(retention: Duration, max_finished: usize) -> Self {
        Self {
            records: Mutex::new(HashMap::new()),
            running: AtomicUsize::new(0),
            retention,
            max_finished,
        }
    }

    fn records(&self) -> MutexGuard<'_, HashMap<String, Arc<Record>>> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reserves a running slot if fewer than `max` commands run.
    pub fn try_reserve(&self, max: usize) -> bool {
        self.running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Releases a slot taken by [`Registry::try_reserve`].
    pub fn release(&self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
    }

    /// Registers a new record.
    pub fn insert(
        &self,
        id: String,
        content: String,
        background: bool,
        log_path: Option<PathBuf>,
        started_at: SystemTime,
        leader: Option<Proc>,
    ) -> Arc<Record> {
        let rec = Arc::new(Record {
            id: id.clone(),
            content,
            background,
            log_path,
            started_at,
            state: Mutex::new(State {
                leader,
                ..State::default()
            }),
            done: watch::channel(false).0,
        });
        self.records().insert(id, rec.clone());
        rec
    }

    /// The record with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Record>> {
        self.records().get(id).cloned()
    }

    /// Every record of a running command.
    pub fn running_records(&self) -> Vec<Arc<Record>> {
        self.records()
            .values()
            .filter(|r| r.running())
            .cloned()
            .collect()
    }

    /// Removes expired finished records (and their logs); returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut removed: Vec<Arc<Record>> = Vec::new();
        {
            let mut map = self.records();
            let mut finished: Vec<(Instant, String)> = map
                .values()
                .filter_map(|r| r.state().finished_instant.map(|t| (t, r.id.clone())))
                .collect();
            finished.sort();
            let excess = finished.len().saturating_sub(self.max_finished);
            for (i, (t, id)) in finished.iter().enumerate() {
                if i < excess || now.saturating_duration_since(*t) >= self.retention {
                    if let Some(r) = map.remove(id) {
                        removed.push(r);
                    }
                }
            }
        }
        for r in &removed {
            if let Some(p) = &r.log_path {
                let _ = std::fs::remove_file(p);
            }
        }
        removed.len()
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.records().len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_omits_fields_while_running() {
        let reg = Registry::new(Duration::from_secs(60), 10);
        let r = reg.insert(
            "a".into(),
            "sleep 2".into(),
            true,
            None,
            SystemTime::UNIX_EPOCH,
            None,
        );
        let json = serde_json::to_string(&r.status()).unwrap();
        assert_eq!(
            json,
            r#"{"id":"a","content":"sleep 2","running":true,"started_at":"1970-01-01T00:00:00Z"}"#
        );
        r.finish(Ok(ExitStatus::Code(3)));
        let v: serde_json::Value = serde_json::to_value(r.status()).unwrap();
        assert_eq!(v["exit_code"], 3);
        assert_eq!(v["error"], "exit status 3");
        assert_eq!(v["running"], false);
        assert!(v["finished_at"].is_string());
    }

    #[test]
    fn sweep_honours_retention_and_bound() {
        let reg = Registry::new(Duration::from_secs(60), 2);
        for i in 0..4 {
            reg.insert(
                format!("{i}"),
                String::new(),
                false,
                None,
                SystemTime::now(),
                None,
            )
            .finish(Ok(ExitStatus::Code(0)));
        }
        reg.insert(
            "running".into(),
            String::new(),
            false,
            None,
            SystemTime::now(),
            None,
        );
        assert_eq!(reg.sweep(Instant::now()), 2); // bound: keep the 2 newest finished
        assert!(reg.get("0").is_none() && reg.get("3").is_some());
        assert_eq!(reg.sweep(Instant::now() + Duration::from_secs(61)), 2); // retention
        assert_eq!(reg.len(), 1); // running records are never swept
    }

    #[test]
    fn reserve_is_bounded() {
        let reg = Registry::new(Duration::from_secs(60), 2);
        assert!(reg.try_reserve(1));
        assert!(!reg.try_reserve(1));
        reg.release();
        assert!(reg.try_reserve(1));
    }
}
