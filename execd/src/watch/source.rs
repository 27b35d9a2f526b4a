//! The notify watcher (inotify on Linux: one instance and one thread per
//! watch). Its handler turns notify's events into [`Raw`] notifications on a
//! bounded channel and never blocks: when the channel is full a notification
//! is dropped and counted, and the stream reports an overflow.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix::errno::Errno;
use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;

use super::debounce::Stamp;
use super::WatchError;
use crate::files::FileError;
use crate::wire::time::now_millis;

/// A notification, as notify reports it (access events are left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raw {
    /// A file or directory appeared.
    Created {
        /// Its path.
        path: PathBuf,
        /// Whether it is a directory.
        is_dir: bool,
    },
    /// A file or directory was deleted (or the watched directory itself).
    Removed {
        /// Its path.
        path: PathBuf,
        /// Whether it was a directory, when known.
        is_dir: Option<bool>,
    },
    /// Contents or metadata changed.
    Modified {
        /// Its path.
        path: PathBuf,
    },
    /// The first half of a rename.
    MovedFrom {
        /// Pairs it with the second half.
        cookie: usize,
        /// The old path.
        path: PathBuf,
    },
    /// The second half of a rename.
    MovedTo {
        /// Pairs it with the first half.
        cookie: usize,
        /// The new path.
        path: PathBuf,
    },
    /// The watched directory itself was moved.
    SelfMoved {
        /// Its (old) path.
        path: PathBuf,
    },
    /// The kernel's queue overflowed: changes were lost.
    Rescan,
    /// notify reported an error (e.g. a new subdirectory could not be watched).
    Error(String),
}

/// A notification and when it was seen.
#[derive(Debug)]
pub struct Note {
    /// What happened.
    pub raw: Raw,
    /// When.
    pub stamp: Stamp,
}

/// A running watcher. Dropping it stops notify's thread and closes its
/// inotify descriptor.
#[derive(Debug)]
pub struct Source {
    /// Notifications, at most `cap` waiting.
    pub rx: mpsc::Receiver<Note>,
    dropped: Arc<AtomicU64>,
    _watcher: RecommendedWatcher,
}

impl Source {
    /// Watches `dir` (recursively or not) with a channel of `cap` notifications.
    /// Returns once the kernel watches are in place.
    pub fn start(dir: &Path, recursive: bool, cap: usize) -> Result<Self, WatchError> {
        let (tx, rx) = mpsc::channel(cap.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            let raw = match res {
                Ok(ev) => match classify(ev) {
                    Some(r) => r,
                    None => return,
                },
                Err(e) => Raw::Error(describe(&e)),
            };
            let stamp = Stamp {
                instant: Instant::now(),
                millis: now_millis(),
            };
            if let Err(TrySendError::Full(_)) = tx.try_send(Note { raw, stamp }) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        };
        let config = notify::Config::default().with_follow_symlinks(false);
        let mut watcher = RecommendedWatcher::new(handler, config).map_err(|e| match e.kind {
            notify::ErrorKind::Io(ref io) if is_instance_limit(io) => WatchError::Busy(
                "too many inotify instances (fs.inotify.max_user_instances)".into(),
            ),
            _ => WatchError::File(FileError::Runtime(format!(
                "error starting the watcher. {}",
                describe(&e)
            ))),
        })?;
        let mode = if recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        watcher.watch(dir, mode).map_err(|e| watch_error(dir, e))?;
        Ok(Self {
            rx,
            dropped,
            _watcher: watcher,
        })
    }

    /// Notifications dropped on a full channel since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

/// Maps one notify event; `None` for what a watch does not report.
fn classify(ev: notify::Event) -> Option<Raw> {
    if ev.need_rescan() {
        return Some(Raw::Rescan);
    }
    let cookie = ev.tracker();
    let path = ev.paths.into_iter().next()?;
    Some(match ev.kind {
        EventKind::Create(k) => Raw::Created {
            path,
            is_dir: k == CreateKind::Folder,
        },
        EventKind::Remove(k) => Raw::Removed {
            path,
            is_dir: match k {
                RemoveKind::Folder => Some(true),
                RemoveKind::File => Some(false),
                _ => None,
            },
        },
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => match cookie {
            Some(cookie) => Raw::MovedFrom { cookie, path },
            None => Raw::SelfMoved { path },
        },
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => match cookie {
            Some(cookie) => Raw::MovedTo { cookie, path },
            None => Raw::Created {
                is_dir: std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()),
                path,
            },
        },
        // notify's own pairing (`Both`) is redone by the queue, which also
        // sees halves that never pair.
        EventKind::Modify(ModifyKind::Name(_)) => return None,
        EventKind::Modify(_) => Raw::Modified { path },
        EventKind::Access(_) | EventKind::Any | EventKind::Other => return None,
    })
}

fn describe(e: &notify::Error) -> String {
    match &e.kind {
        notify::ErrorKind::MaxFilesWatch => {
            "inotify watch limit reached (fs.inotify.max_user_watches)".into()
        }
        _ => e.to_string(),
    }
}

fn is_instance_limit(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE)
    )
}

fn watch_error(dir: &Path, e: notify::Error) -> WatchError {
    let context = format!("error watching {}", dir.display());
    match e.kind {
        notify::ErrorKind::MaxFilesWatch => WatchError::Busy(format!(
            "{context}. inotify watch limit reached (fs.inotify.max_user_watches)"
        )),
        notify::ErrorKind::PathNotFound => WatchError::File(FileError::NotFound(format!(
            "{context}. no such file or directory"
        ))),
        notify::ErrorKind::Io(io) => WatchError::File(FileError::io(context, io)),
        other => WatchError::File(FileError::Runtime(format!(
            "{context}. {}",
            notify::Error::new(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, DataChange};
    use notify::Event;

    #[test]
    fn classifies() {
        let p = PathBuf::from("/w/a");
        let ev = |k| Event::new(k).add_path(p.clone());
        assert_eq!(
            classify(ev(EventKind::Create(CreateKind::Folder))),
            Some(Raw::Created {
                path: p.clone(),
                is_dir: true
            })
        );
        assert_eq!(
            classify(ev(EventKind::Modify(ModifyKind::Data(DataChange::Any)))),
            Some(Raw::Modified { path: p.clone() })
        );
        assert_eq!(
            classify(ev(EventKind::Modify(ModifyKind::Name(RenameMode::From))).set_tracker(3)),
            Some(Raw::MovedFrom {
                cookie: 3,
                path: p.clone()
            })
        );
        assert_eq!(
            classify(ev(EventKind::Modify(ModifyKind::Name(RenameMode::From)))),
            Some(Raw::SelfMoved { path: p.clone() })
        );
        assert_eq!(
            classify(ev(EventKind::Modify(ModifyKind::Name(RenameMode::Both))).set_tracker(3)),
            None
        );
        assert_eq!(
            classify(ev(EventKind::Access(AccessKind::Close(
                notify::event::AccessMode::Write
            )))),
            None
        );
        assert_eq!(
            classify(Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan)),
            Some(Raw::Rescan)
        );
    }
}
