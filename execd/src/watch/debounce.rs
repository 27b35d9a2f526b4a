//! The bounded, ordered queue between raw notifications and the client: it
//! coalesces bursts of changes of one path, pairs the two halves of a
//! rename, and turns a full queue into one explicit overflow marker.
//!
//! The first change of a path opens a window of `debounce`; later changes of
//! the same path in that window merge into the pending entry (created then
//! modified stays `created`, modified then removed becomes `removed`, created
//! then removed vanishes). Entries leave in the order they were opened, each
//! once its window has closed, so the client sees changes in the order they
//! began. A move or a change that cannot merge seals the pending entry: later
//! changes of that path queue behind it. What a scan of a new directory finds
//! goes right behind that directory, so that a directory always comes before
//! its contents.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

/// How long the first half of a rename waits for its second half, at least.
/// The kernel queues both together; this only covers the hop between threads.
pub const RENAME_GRACE: Duration = Duration::from_millis(20);

/// When a notification was seen.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// For the windows.
    pub instant: Instant,
    /// For the events, Unix milliseconds.
    pub millis: i64,
}

/// A change of one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The path appeared (created, or moved in from outside the watch).
    Created,
    /// Its contents or metadata changed.
    Modified,
    /// It disappeared.
    Removed,
}

impl Change {
    /// The event type on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Modified => "modified",
            Self::Removed => "removed",
        }
    }
}

/// A pending or flushed change of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathChange {
    /// What happened.
    pub change: Change,
    /// The absolute path.
    pub path: PathBuf,
    /// Whether it is a directory, when known.
    pub is_dir: Option<bool>,
    /// When the last merged change was seen (Unix ms).
    pub at: i64,
    /// Whether the client is told (else the entry only schedules `scan`).
    pub visible: bool,
    /// A new directory whose contents must be looked at when it is flushed.
    pub scan: bool,
}

/// What leaves the queue, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// A coalesced change.
    Change(PathChange),
    /// Both halves of a rename inside the watch.
    Renamed {
        /// The previous path.
        old: PathBuf,
        /// The new path.
        new: PathBuf,
        /// When the first half was seen (Unix ms).
        at: i64,
    },
    /// The first half of a rename whose second half never came: moved out.
    MovedOut {
        /// The previous path.
        path: PathBuf,
        /// When it was seen (Unix ms).
        at: i64,
    },
    /// Changes were lost from here on.
    Overflow {
        /// How many (0 when unknown).
        dropped: u64,
        /// When the loss was noticed (Unix ms).
        at: i64,
    },
    /// A problem worth telling the client that does not end the watch.
    Error {
        /// What went wrong.
        message: String,
        /// When (Unix ms).
        at: i64,
    },
    /// The watched directory itself is gone: the stream ends here.
    RootGone {
        /// When (Unix ms).
        at: i64,
    },
}

#[derive(Debug)]
enum Item {
    Change(PathChange),
    MovedFrom { path: PathBuf, at: i64 },
    Renamed { old: PathBuf, new: PathBuf, at: i64 },
    Overflow { dropped: u64, at: i64 },
    Error { message: String, at: i64 },
    RootGone { at: i64 },
}

#[derive(Debug)]
struct Entry {
    item: Item,
    deadline: Instant,
    /// Whether it counts against the capacity (markers do not).
    counted: bool,
}

/// What a change does to the pending entry of its path.
enum Merge {
    Absorb,
    Cancel,
    Seal,
}

/// The queue. At most `cap` changes wait at once; a change that finds it full
/// is dropped and counted in one overflow marker.
#[derive(Debug)]
pub struct Queue {
    window: Duration,
    cap: usize,
    /// By (arrival, position behind a scanned directory).
    entries: BTreeMap<Key, Entry>,
    /// Entries that later changes of their path may merge into.
    open: BTreeMap<PathBuf, Key>,
    /// First halves of renames by cookie.
    moves: HashMap<usize, Key>,
    overflow: Option<Key>,
    error: Option<Key>,
    counted: usize,
    next: u64,
    /// The key of the last entry popped, then of the last change queued behind it.
    last: Key,
}

/// Orders the entries.
type Key = (u64, u64);

impl Queue {
    /// An empty queue with this window and capacity (at least 1).
    pub fn new(window: Duration, cap: usize) -> Self {
        Self {
            window,
            cap: cap.max(1),
            entries: BTreeMap::new(),
            open: BTreeMap::new(),
            moves: HashMap::new(),
            overflow: None,
            error: None,
            counted: 0,
            next: 0,
            last: (0, 0),
        }
    }

    /// Number of changes waiting (markers excluded).
    pub fn len(&self) -> usize {
        self.counted
    }

    /// Whether no further change fits.
    pub fn is_full(&self) -> bool {
        self.counted >= self.cap
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When the oldest entry is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.first_key_value().map(|(_, e)| e.deadline)
    }

    /// Queues a change of `path`, merging it into a pending one if it can.
    pub fn push(&mut self, c: PathChange, t: Stamp) {
        if let Some(&seq) = self.open.get(&c.path) {
            let merge = match self.entries.get_mut(&seq) {
                Some(Entry {
                    item: Item::Change(p),
                    ..
                }) => merge(p, &c, t),
                _ => Merge::Seal,
            };
            match merge {
                Merge::Absorb => return,
                Merge::Cancel => {
                    self.remove(seq);
                    return;
                }
                Merge::Seal => {
                    self.open.remove(&c.path);
                }
            }
        }
        let path = c.path.clone();
        if let Some(seq) = self.insert(Item::Change(c), t.instant + self.window, true, t) {
            self.open.insert(path, seq);
        }
    }

    /// Queues a change found by scanning the directory popped last: right
    /// behind it, before what arrived since. A pending change of the same
    /// path moves there (unless it is a removal, which stays before).
    pub fn push_scanned(&mut self, mut c: PathChange, t: Stamp) {
        c.scan = false; // the scan went all the way down
        let key = (self.last.0, self.last.1 + 1);
        if self.entries.contains_key(&key) {
            return self.push(c, t);
        }
        if let Some(&seq) = self.open.get(&c.path) {
            let movable = matches!(
                self.entries.get(&seq),
                Some(Entry { item: Item::Change(p), .. }) if p.change != Change::Removed
            );
            if !movable {
                return self.push(c, t);
            }
            if let Some(mut e) = self.entries.remove(&seq) {
                if let Item::Change(p) = &mut e.item {
                    let _ = merge(p, &c, t);
                    p.scan = false;
                }
                self.entries.insert(key, e);
                self.open.insert(c.path, key);
                self.last = key;
            }
            return;
        }
        let path = c.path.clone();
        let deadline = t.instant + self.window;
        if let Some(seq) = self.insert_at(key, Item::Change(c), deadline, true, t) {
            self.open.insert(path, seq);
            self.last = key;
        }
    }

    /// The first half of a rename (`cookie` pairs it with the second).
    pub fn moved_from(&mut self, cookie: usize, path: PathBuf, t: Stamp) {
        self.seal_under(&path);
        let deadline = t.instant + self.window.max(RENAME_GRACE);
        let item = Item::MovedFrom { path, at: t.millis };
        if let Some(seq) = self.insert(item, deadline, true, t) {
            // A reused cookie leaves the earlier half a move out.
            self.moves.insert(cookie, seq);
        }
    }

    /// The second half of a rename. False when no first half is waiting (a
    /// move into the watch, to be queued as created).
    pub fn moved_to(&mut self, cookie: usize, path: PathBuf) -> bool {
        let Some(seq) = self.moves.remove(&cookie) else {
            return false;
        };
        self.seal_under(&path);
        let Some(e) = self.entries.get_mut(&seq) else {
            return false;
        };
        let Item::MovedFrom { path: old, at } = &mut e.item else {
            return false;
        };
        e.item = Item::Renamed {
            old: std::mem::take(old),
            new: path,
            at: *at,
        };
        true
    }

    /// Records `dropped` lost changes in the pending overflow marker (one
    /// marker until it is flushed).
    pub fn overflow(&mut self, dropped: u64, t: Stamp) {
        if let Some(Entry {
            item: Item::Overflow { dropped: d, at },
            ..
        }) = self.overflow.and_then(|s| self.entries.get_mut(&s))
        {
            *d += dropped;
            *at = t.millis;
            return;
        }
        let item = Item::Overflow {
            dropped,
            at: t.millis,
        };
        self.overflow = self.insert(item, t.instant, false, t);
    }

    /// Queues an error message (one pending at a time; later ones are dropped).
    pub fn error(&mut self, message: String, t: Stamp) {
        if self.error.is_some_and(|s| self.entries.contains_key(&s)) {
            return;
        }
        let item = Item::Error {
            message,
            at: t.millis,
        };
        self.error = self.insert(item, t.instant, false, t);
    }

    /// The watched directory is gone: after what is pending, the stream ends.
    pub fn root_gone(&mut self, t: Stamp) {
        let item = Item::RootGone { at: t.millis };
        self.insert(item, t.instant + self.window, false, t);
    }

    /// The oldest entry, if its window has closed by `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Out> {
        let (&seq, e) = self.entries.first_key_value()?;
        if e.deadline > now {
            return None;
        }
        let e = self.remove(seq)?;
        self.last = seq;
        Some(match e.item {
            Item::Change(c) => Out::Change(c),
            Item::MovedFrom { path, at } => Out::MovedOut { path, at },
            Item::Renamed { old, new, at } => Out::Renamed { old, new, at },
            Item::Overflow { dropped, at } => Out::Overflow { dropped, at },
            Item::Error { message, at } => Out::Error { message, at },
            Item::RootGone { at } => Out::RootGone { at },
        })
    }

    fn insert(&mut self, item: Item, deadline: Instant, counted: bool, t: Stamp) -> Option<Key> {
        let seq = (self.next, 0);
        self.next += 1;
        self.insert_at(seq, item, deadline, counted, t)
    }

    fn insert_at(
        &mut self,
        seq: Key,
        item: Item,
        deadline: Instant,
        counted: bool,
        t: Stamp,
    ) -> Option<Key> {
        if counted {
            if self.counted >= self.cap {
                self.overflow(1, t);
                return None;
            }
            self.counted += 1;
        }
        self.entries.insert(
            seq,
            Entry {
                item,
                deadline,
                counted,
            },
        );
        Some(seq)
    }

    fn remove(&mut self, seq: Key) -> Option<Entry> {
        let e = self.entries.remove(&seq)?;
        if e.counted {
            self.counted -= 1;
        }
        if let Item::Change(c) = &e.item {
            if self.open.get(&c.path) == Some(&seq) {
                self.open.remove(&c.path);
            }
        }
        if self.overflow == Some(seq) {
            self.overflow = None;
        }
        if self.error == Some(seq) {
            self.error = None;
        }
        if matches!(e.item, Item::MovedFrom { .. }) {
            self.moves.retain(|_, s| *s != seq);
        }
        Some(e)
    }

    /// Seals the open entries of `path` and everything below it.
    fn seal_under(&mut self, path: &Path) {
        let under: Vec<PathBuf> = self
            .open
            .range::<Path, _>((std::ops::Bound::Included(path), std::ops::Bound::Unbounded))
            .map(|(p, _)| p)
            .take_while(|p| p.starts_with(path))
            .cloned()
            .collect();
        for p in under {
            self.open.remove(&p);
        }
    }
}

/// Merges change `c` into the pending change `p` of the same path.
fn merge(p: &mut PathChange, c: &PathChange, t: Stamp) -> Merge {
    use Change::{Created, Modified, Removed};
    match (p.change, c.change) {
        (Created, Created | Modified) | (Modified, Modified) | (Removed, Removed) => {
            p.at = t.millis;
            p.is_dir = c.is_dir.or(p.is_dir);
            p.scan |= c.scan;
            Merge::Absorb
        }
        (Modified, Removed) => {
            p.change = Removed;
            p.at = t.millis;
            p.is_dir = c.is_dir.or(p.is_dir);
            p.scan = false;
            Merge::Absorb
        }
        (Created, Removed) => Merge::Cancel,
        (Removed, Created | Modified) | (Modified, Created) => Merge::Seal,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const W: Duration = Duration::from_millis(50);

    fn at(base: Instant, ms: u64) -> Stamp {
        Stamp {
            instant: base + Duration::from_millis(ms),
            millis: i64::try_from(ms).unwrap(),
        }
    }

    fn ch(change: Change, p: &str) -> PathChange {
        PathChange {
            change,
            path: PathBuf::from(p),
            is_dir: Some(false),
            at: 0,
            visible: true,
            scan: false,
        }
    }

    fn drain(q: &mut Queue, base: Instant, ms: u64) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(o) = q.pop_due(base + Duration::from_millis(ms)) {
            out.push(match o {
                Out::Change(c) => format!("{} {}", c.change.name(), c.path.display()),
                Out::Renamed { old, new, .. } => {
                    format!("renamed {} {}", old.display(), new.display())
                }
                Out::MovedOut { path, .. } => format!("out {}", path.display()),
                Out::Overflow { dropped, .. } => format!("overflow {dropped}"),
                Out::Error { message, .. } => format!("error {message}"),
                Out::RootGone { .. } => "gone".into(),
            });
        }
        out
    }

    #[test]
    fn coalesces_within_the_window_in_order() {
        let b = Instant::now();
        let mut q = Queue::new(W, 100);
        q.push(ch(Change::Created, "/w/a"), at(b, 0));
        q.push(ch(Change::Modified, "/w/b"), at(b, 5));
        q.push(ch(Change::Modified, "/w/a"), at(b, 10));
        q.push(ch(Change::Modified, "/w/b"), at(b, 20));
        assert_eq!(q.len(), 2);
        assert!(drain(&mut q, b, 49).is_empty());
        assert_eq!(drain(&mut q, b, 50), ["created /w/a"]);
        assert_eq!(drain(&mut q, b, 55), ["modified /w/b"]);
        // A later change opens a new window.
        q.push(ch(Change::Modified, "/w/a"), at(b, 60));
        q.push(ch(Change::Removed, "/w/a"), at(b, 70));
        assert_eq!(drain(&mut q, b, 200), ["removed /w/a"]);
        assert!(q.is_empty());
    }

    #[test]
    fn transient_files_vanish_and_recreation_keeps_order() {
        let b = Instant::now();
        let mut q = Queue::new(W, 100);
        q.push(ch(Change::Created, "/w/t"), at(b, 0));
        q.push(ch(Change::Removed, "/w/t"), at(b, 1));
        q.push(ch(Change::Removed, "/w/x"), at(b, 2));
        q.push(ch(Change::Created, "/w/x"), at(b, 3));
        assert_eq!(drain(&mut q, b, 100), ["removed /w/x", "created /w/x"]);
    }

    #[test]
    fn renames_pair_or_become_moves_out() {
        let b = Instant::now();
        let mut q = Queue::new(W, 100);
        q.push(ch(Change::Created, "/w/d/f"), at(b, 0));
        q.moved_from(7, "/w/d".into(), at(b, 1));
        assert!(q.moved_to(7, "/w/e".into()));
        // Sealed: a new /w/d/f queues behind the rename.
        q.push(ch(Change::Created, "/w/d/f"), at(b, 2));
        q.moved_from(8, "/w/g".into(), at(b, 3));
        assert!(!q.moved_to(9, "/w/h".into()));
        assert_eq!(
            drain(&mut q, b, 100),
            [
                "created /w/d/f",
                "renamed /w/d /w/e",
                "created /w/d/f",
                "out /w/g"
            ]
        );
    }

    #[test]
    fn full_queue_overflows_once_and_recovers() {
        let b = Instant::now();
        let mut q = Queue::new(W, 2);
        for i in 0..5 {
            q.push(ch(Change::Created, &format!("/w/{i}")), at(b, i));
        }
        // Merging into a pending entry needs no room.
        q.push(ch(Change::Modified, "/w/0"), at(b, 6));
        assert_eq!(q.len(), 2);
        assert_eq!(
            drain(&mut q, b, 100),
            ["created /w/0", "created /w/1", "overflow 3"]
        );
        q.push(ch(Change::Created, "/w/9"), at(b, 100));
        assert_eq!(drain(&mut q, b, 200), ["created /w/9"]);
    }

    #[test]
    fn scanned_entries_go_right_behind_their_directory() {
        let b = Instant::now();
        let mut q = Queue::new(W, 10);
        let mut d = ch(Change::Created, "/w/t");
        d.scan = true;
        q.push(d, at(b, 0));
        q.push(ch(Change::Created, "/w/t/u/g"), at(b, 1)); // seen by inotify
        q.push(ch(Change::Created, "/w/x"), at(b, 2));
        let Some(Out::Change(t)) = q.pop_due(b + W) else {
            panic!("the directory first");
        };
        assert!(t.scan);
        q.push_scanned(ch(Change::Created, "/w/t/u"), at(b, 50));
        q.push_scanned(ch(Change::Created, "/w/t/u/g"), at(b, 50));
        assert_eq!(q.len(), 3);
        assert_eq!(
            drain(&mut q, b, 200),
            ["created /w/t/u", "created /w/t/u/g", "created /w/x"]
        );
    }

    #[test]
    fn root_gone_comes_after_pending_changes() {
        let b = Instant::now();
        let mut q = Queue::new(W, 10);
        q.push(ch(Change::Removed, "/w/a"), at(b, 0));
        q.root_gone(at(b, 1));
        assert_eq!(drain(&mut q, b, 100), ["removed /w/a", "gone"]);
    }
}
