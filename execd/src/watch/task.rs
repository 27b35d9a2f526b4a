//! The task behind one watch stream: it feeds notifications into the
//! [`Queue`], writes what leaves it as events, sends `ping` keep-alives, and
//! ends (dropping the watcher, which stops its thread) when the client goes
//! away or the watched directory itself is gone.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use walkdir::WalkDir;

use super::debounce::{Change, Out, PathChange, Queue, Stamp};
use super::event::WatchEvent;
use super::filter::Filter;
use super::slots::Slot;
use super::source::{Note, Raw, Source};
use super::PING_EVERY;
use crate::wire::event::Event;
use crate::wire::time::now_millis;

/// Notifications taken from the channel before the queue is flushed.
const BATCH: usize = 1024;

/// One watch.
#[derive(Debug)]
pub(super) struct Task {
    pub source: Source,
    pub queue: Queue,
    pub filter: Filter,
    /// The watched path.
    pub root: PathBuf,
    /// The directory inotify watches: `root`, or its parent for a file.
    pub dir: PathBuf,
    /// Whether `root` is a file.
    pub file: bool,
    pub recursive: bool,
    /// Most directory entries looked at when a new directory is scanned.
    pub scan_limit: usize,
    pub out: mpsc::Sender<Bytes>,
    /// For a file watch: whether the file exists, as far as the client was told.
    pub present: bool,
    pub _slot: Slot,
}

fn stamp() -> Stamp {
    Stamp {
        instant: Instant::now(),
        millis: now_millis(),
    }
}

impl Task {
    /// Runs until the client goes away or the watched directory is gone.
    pub async fn run(mut self) {
        tracing::debug!("watch started");
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let why = loop {
            let mut chunk = Vec::new();
            let deadline = self.queue.next_deadline();
            tokio::select! {
                biased;
                () = self.out.closed() => break "client gone",
                note = self.source.rx.recv() => match note {
                    Some(n) => {
                        self.take(n);
                        for _ in 0..BATCH {
                            match self.source.rx.try_recv() {
                                Ok(n) => self.take(n),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break "watcher stopped",
                },
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
                    if deadline.is_some() => {}
                _ = ping.tick() => Event::ping().write_to(&mut chunk),
            }
            let dropped = self.source.take_dropped();
            if dropped > 0 {
                self.queue.overflow(dropped, stamp());
            }
            let ended = self.flush(Instant::now(), &mut chunk);
            if !chunk.is_empty() && self.out.send(Bytes::from(chunk)).await.is_err() {
                break "client gone";
            }
            if ended {
                break "watched path gone";
            }
        };
        tracing::debug!(why, "watch ended");
    }

    /// Takes one notification. A loss on the full channel is noticed here, so
    /// its overflow marker comes before whatever was sent after the loss.
    fn take(&mut self, n: Note) {
        let dropped = self.source.take_dropped();
        if dropped > 0 {
            self.queue.overflow(dropped, n.stamp);
        }
        self.ingest(n);
    }

    fn ingest(&mut self, n: Note) {
        let t = n.stamp;
        match n.raw {
            Raw::Created { path, is_dir } => {
                self.change(Change::Created, path, Some(is_dir), is_dir, t);
            }
            Raw::Modified { path } => self.change(Change::Modified, path, None, false, t),
            Raw::Removed { path, .. } | Raw::SelfMoved { path } if path == self.dir => {
                self.queue.root_gone(t);
            }
            Raw::Removed { path, is_dir } => self.change(Change::Removed, path, is_dir, false, t),
            Raw::SelfMoved { .. } => {}
            Raw::MovedFrom { cookie, path } => self.queue.moved_from(cookie, path, t),
            Raw::MovedTo { cookie, path } => {
                if !self.queue.moved_to(cookie, path.clone()) {
                    let is_dir = kind_of(&path) == Some(true);
                    self.change(Change::Created, path, Some(is_dir), is_dir, t);
                }
            }
            Raw::Rescan => self.queue.overflow(0, t),
            Raw::Error(message) => {
                tracing::warn!(%message, "watcher error");
                self.queue.error(message, t);
            }
        }
    }

    /// Queues a change if the client is told, or if it is a new directory of
    /// a recursive watch (whose contents are scanned even when it is not shown).
    fn change(&mut self, change: Change, path: PathBuf, is_dir: Option<bool>, dir: bool, t: Stamp) {
        let visible = self.filter.matches(&path);
        let scan = dir && self.recursive;
        if visible || scan {
            let c = PathChange {
                change,
                path,
                is_dir,
                at: t.millis,
                visible,
                scan,
            };
            self.queue.push(c, t);
        }
    }

    /// Writes what is due by `now`; true when the stream must end.
    fn flush(&mut self, now: Instant, chunk: &mut Vec<u8>) -> bool {
        while let Some(out) = self.queue.pop_due(now) {
            match out {
                Out::Change(c) => {
                    if c.visible {
                        let is_dir = c.is_dir.or_else(|| kind_of(&c.path));
                        WatchEvent::change(c.change.name(), &c.path, is_dir, c.at).write_to(chunk);
                        self.saw(&c.path, c.change != Change::Removed);
                    }
                    if c.scan && c.change != Change::Removed {
                        self.scan(&c.path);
                    }
                }
                Out::Renamed { old, new, at } => {
                    let is_dir = kind_of(&new);
                    match (self.filter.matches(&old), self.filter.matches(&new)) {
                        (true, true) => WatchEvent::renamed(&old, &new, is_dir, at).write_to(chunk),
                        (true, false) => {
                            WatchEvent::change("removed", &old, is_dir, at).write_to(chunk);
                        }
                        (false, true) => {
                            WatchEvent::change("created", &new, is_dir, at).write_to(chunk);
                        }
                        (false, false) => {}
                    }
                    self.saw(&old, false);
                    self.saw(&new, true);
                    if is_dir == Some(true) && self.recursive && self.filter.narrows_dir() {
                        self.renamed_contents(&old, &new, at, chunk);
                    }
                }
                Out::MovedOut { path, at } => {
                    if self.filter.matches(&path) {
                        WatchEvent::change("removed", &path, None, at).write_to(chunk);
                        self.saw(&path, false);
                    }
                }
                Out::Overflow { dropped, at } => {
                    tracing::debug!(dropped, "watch overflow");
                    WatchEvent::overflow(&self.root, dropped, at).write_to(chunk);
                }
                Out::Error { message, at } => WatchEvent::error(message, at).write_to(chunk),
                Out::RootGone { at } => {
                    if !self.file || self.present {
                        WatchEvent::change("removed", &self.root, Some(!self.file), at)
                            .write_to(chunk);
                    }
                    return true;
                }
            }
        }
        false
    }

    /// Tracks whether a watched file exists.
    fn saw(&mut self, path: &Path, exists: bool) {
        if self.file && path == self.root {
            self.present = exists;
        }
    }

    /// With a pattern, tells about the matching entries of a renamed
    /// directory, whose own event may not be shown: `renamed` when the entry
    /// matches at both paths, else `removed` or `created`.
    fn renamed_contents(&self, old: &Path, new: &Path, at: i64, chunk: &mut Vec<u8>) {
        let entries = entries_below(new);
        for (n, entry) in entries.enumerate() {
            if n >= self.scan_limit {
                WatchEvent::overflow(&self.root, 0, at).write_to(chunk);
                return;
            }
            let is_dir = Some(entry.file_type().is_dir());
            let now_at = entry.path();
            let Ok(rel) = now_at.strip_prefix(new) else {
                continue;
            };
            let was_at = old.join(rel);
            match (self.filter.matches(&was_at), self.filter.matches(now_at)) {
                (true, true) => WatchEvent::renamed(&was_at, now_at, is_dir, at).write_to(chunk),
                (true, false) => WatchEvent::change("removed", &was_at, is_dir, at).write_to(chunk),
                (false, true) => WatchEvent::change("created", now_at, is_dir, at).write_to(chunk),
                (false, false) => {}
            }
        }
    }

    /// Queues `created` for what a new directory already holds: entries made
    /// before its own watch was in place would otherwise go unseen.
    fn scan(&mut self, dir: &Path) {
        let t = stamp();
        let entries = entries_below(dir);
        for (n, entry) in entries.enumerate() {
            if n >= self.scan_limit || self.queue.is_full() {
                self.queue.overflow(0, t);
                return;
            }
            let is_dir = entry.file_type().is_dir();
            let path = entry.into_path();
            if self.filter.matches(&path) {
                let c = PathChange {
                    change: Change::Created,
                    path,
                    is_dir: Some(is_dir),
                    at: t.millis,
                    visible: true,
                    scan: false,
                };
                self.queue.push_scanned(c, t);
            }
        }
    }
}

/// Whether `path` is a directory now (not following a final symlink).
fn kind_of(path: &Path) -> Option<bool> {
    std::fs::symlink_metadata(path).ok().map(|m| m.is_dir())
}

/// Everything below `dir` (not `dir` itself), links not followed, unreadable
/// entries skipped.
fn entries_below(dir: &Path) -> impl Iterator<Item = walkdir::DirEntry> {
    WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .follow_root_links(false)
        .into_iter()
        .filter_map(Result::ok)
}
