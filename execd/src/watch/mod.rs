//! Live file watching, our extension: `GET /files/watch` streams one event
//! per change of a file or directory tree, framed like command events
//! (compact JSON followed by a blank line). `docs/execd-extensions.yaml`
//! documents the endpoint.
//!
//! One job per module:
//! - [`source`]: the notify watcher (its own inotify instance and thread) and
//!   a bounded, never-blocking channel of raw notifications.
//! - [`debounce`]: the bounded, ordered queue that coalesces bursts, pairs
//!   renames and turns loss into one explicit overflow marker.
//! - [`filter`]: which paths are reported (`pattern`, or only the file).
//! - [`event`]: the events on the wire.
//! - [`slots`]: the limit on concurrent watches.
//! - `task`: the loop tying them to the client, with keep-alive pings.
//!
//! A watch ends, dropping its watcher (which stops notify's thread and closes
//! the inotify descriptor), when the client goes away (noticed at the latest
//! at the next `ping`) or when the watched directory itself is gone.

pub mod debounce;
pub mod event;
pub mod filter;
pub mod slots;
pub mod source;
mod task;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::files::FileError;
use crate::wire::stream::{StreamRx, STREAM_CHUNKS};
use debounce::Queue;
use event::WatchEvent;
use filter::Filter;
use slots::Slot;
use source::Source;

/// Default window in which changes of one path are coalesced.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);
/// Longest window a request may ask for.
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(10);
/// Default number of changes that may wait for the client.
pub const DEFAULT_QUEUE: usize = 4096;
/// Most changes a request may let wait.
pub const MAX_QUEUE: usize = 16384;
/// Interval of `ping` keep-alives (as command streams).
pub const PING_EVERY: Duration = Duration::from_secs(3);

/// What to watch and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Absolute, clean path of a directory or a file.
    pub path: PathBuf,
    /// Also watch subdirectories, including those created later (directories only).
    pub recursive: bool,
    /// Glob on the basename, or on the path relative to `path` when it has a
    /// `/` or `**`.
    pub pattern: Option<String>,
    /// Window in which changes of one path are coalesced.
    pub debounce: Duration,
    /// Most changes waiting for the client; beyond, changes are dropped and
    /// an `overflow` event is sent.
    pub queue: usize,
    /// Most watches at once in this execd.
    pub max_watches: usize,
}

/// Why a watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The path: missing, unreadable, …
    #[error(transparent)]
    File(#[from] FileError),
    /// The pattern is not a valid glob.
    #[error("{0}")]
    Pattern(String),
    /// Too many watches (execd's limit or the kernel's).
    #[error("{0}")]
    Busy(String),
}

/// Starts watching: the returned stream begins with `ready` (the watch is in
/// place) and then carries one event per change, and `ping` every
/// [`PING_EVERY`].
pub fn start(opts: Options) -> Result<StreamRx, WatchError> {
    let root = opts.path;
    let filter = Filter::new(&root, opts.pattern.as_deref()).map_err(WatchError::Pattern)?;
    let meta = std::fs::metadata(&root)
        .map_err(|e| FileError::io(format!("error watching {}", root.display()), e))?;
    let file = !meta.is_dir();
    let filter = filter.for_file(file);
    let slot = Slot::acquire(opts.max_watches).ok_or_else(|| {
        WatchError::Busy(format!(
            "too many watches: at most {} at once",
            opts.max_watches
        ))
    })?;
    let dir = if file {
        root.parent().unwrap_or(Path::new("/")).to_path_buf()
    } else {
        root.clone()
    };
    let recursive = opts.recursive && !file;
    let queue = opts.queue.clamp(1, MAX_QUEUE);
    let span = tracing::info_span!("watch", path = %root.display(), recursive);
    let source = span.in_scope(|| {
        if recursive {
            // Adding a watch per subdirectory walks the tree.
            blocking(|| Source::start(&dir, true, queue))
        } else {
            Source::start(&dir, false, queue)
        }
    })?;
    let (tx, rx) = mpsc::channel(STREAM_CHUNKS);
    let mut first = Vec::new();
    WatchEvent::ready(&root, !file, recursive).write_to(&mut first);
    // The channel is empty: this cannot fail.
    let _ = tx.try_send(Bytes::from(first));
    let task = task::Task {
        source,
        queue: Queue::new(opts.debounce.min(MAX_DEBOUNCE), queue),
        filter,
        root,
        dir,
        file,
        recursive,
        scan_limit: queue.saturating_mul(4),
        out: tx,
        present: true,
        _slot: slot,
    };
    tokio::spawn(task.run().instrument(span));
    Ok(rx)
}

/// Runs blocking `f` without stalling other tasks on this worker, where the
/// runtime allows it.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
