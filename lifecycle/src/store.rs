//! The SQLite store: what Docker labels cannot hold.
//!
//! Docker stays the source of truth for a sandbox's container, but labels
//! cannot change after creation, so this store keeps renewed expiries, patched
//! metadata, state-transition history and snapshots, plus the list of known
//! sandbox ids so a restarted server finds everything again.
//!
//! - One connection behind a [`Mutex`]: [`Store`] is `Send + Sync`; call it
//!   from `tokio::task::spawn_blocking` or briefly from async code (every
//!   call is a few small statements).
//! - WAL journal, `busy_timeout` 5 s, `synchronous=FULL`.
//! - The schema is versioned with `PRAGMA user_version`; pending migrations
//!   run on open, each in its own transaction.
//! - Every write runs in one `BEGIN IMMEDIATE` transaction, so a crash leaves
//!   either all of it or none of it.
//! - Times are milliseconds since the Unix epoch (`i64`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{
    params, params_from_iter, Connection, OptionalExtension, Row, Transaction, TransactionBehavior,
};

/// Most transitions kept per sandbox; older ones are dropped.
pub const MAX_TRANSITIONS: usize = 100;

/// How long a statement waits for a lock held by another connection.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The snapshot states the store accepts.
pub const SNAPSHOT_STATES: &[&str] = &["Creating", "Ready", "Failed", "Deleting"];

/// Schema migrations: entry `i` brings the schema from version `i` to `i + 1`.
/// Append only; never edit a released entry.
const MIGRATIONS: &[&str] = &[
    // 1: sandboxes, their transitions, snapshots.
    "CREATE TABLE sandboxes (
        id            TEXT PRIMARY KEY NOT NULL,
        container_id  TEXT NOT NULL,
        sidecar_id    TEXT,
        created_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER,
        metadata      TEXT,
        deleted       INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE transitions (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        sandbox_id TEXT NOT NULL,
        state      TEXT NOT NULL,
        reason     TEXT,
        message    TEXT,
        at_ms      INTEGER NOT NULL
    );
    CREATE INDEX transitions_by_sandbox ON transitions (sandbox_id, seq);
    CREATE TABLE snapshots (
        id                 TEXT PRIMARY KEY NOT NULL,
        sandbox_id         TEXT NOT NULL,
        name               TEXT,
        state              TEXT NOT NULL,
        reason             TEXT,
        message            TEXT,
        image              TEXT,
        created_at_ms      INTEGER NOT NULL,
        last_transition_ms INTEGER NOT NULL
    );
    CREATE INDEX snapshots_by_sandbox ON snapshots (sandbox_id);
    CREATE INDEX snapshots_by_state ON snapshots (state);
    CREATE INDEX snapshots_by_created ON snapshots (created_at_ms);",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database's parent directory could not be created.
    #[error("cannot create directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened or configured.
    #[error("cannot open store {}: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A schema migration failed (it was rolled back).
    #[error("store migration to schema version {version} failed: {source}")]
    Migration {
        /// The version being migrated to.
        version: i64,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer build.
    #[error("store schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// [`SCHEMA_VERSION`].
        supported: i64,
    },
    /// A statement failed.
    #[error("store: {context}: {source}")]
    Sqlite {
        /// What the store was doing.
        context: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A JSON column holds something that does not decode.
    #[error("store: corrupt {column} of {id}: {source}")]
    CorruptJson {
        /// The column, e.g. `sandboxes.metadata`.
        column: &'static str,
        /// The row's id.
        id: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// No sandbox row has this id.
    #[error("store: no sandbox {0}")]
    SandboxNotFound(String),
    /// No snapshot row has this id.
    #[error("store: no snapshot {0}")]
    SnapshotNotFound(String),
    /// A snapshot state outside [`SNAPSHOT_STATES`].
    #[error(
        "store: invalid snapshot state {0:?} (expected one of Creating, Ready, Failed, Deleting)"
    )]
    InvalidSnapshotState(String),
}

/// Adds context to rusqlite results.
trait Context<T> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite { context, source })
    }
}

/// What the store keeps about one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRow {
    /// The sandbox id (API-visible).
    pub id: String,
    /// The Docker container id.
    pub container_id: String,
    /// The egress sidecar's container id, if any.
    pub sidecar_id: Option<String>,
    /// Creation time, ms since the epoch.
    pub created_at_ms: i64,
    /// Current expiry (after renewals), ms since the epoch; `None` for
    /// manual cleanup.
    pub expires_at_ms: Option<i64>,
    /// The metadata after a PATCH; `None` while the labels' metadata holds.
    pub metadata: Option<BTreeMap<String, String>>,
    /// The sandbox was deleted (kept as a tombstone until removed).
    pub deleted: bool,
}

/// One state transition of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The state entered, e.g. `Running`.
    pub state: String,
    /// Machine-readable reason.
    pub reason: Option<String>,
    /// Human-readable message.
    pub message: Option<String>,
    /// When, ms since the epoch.
    pub at_ms: i64,
}

/// One snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    /// The snapshot id.
    pub id: String,
    /// The sandbox it was taken from.
    pub sandbox_id: String,
    /// Optional user-given name.
    pub name: Option<String>,
    /// `Creating`, `Ready`, `Failed` or `Deleting` (see [`SNAPSHOT_STATES`]).
    pub state: String,
    /// Machine-readable reason of the last transition.
    pub reason: Option<String>,
    /// Human-readable message of the last transition.
    pub message: Option<String>,
    /// The committed image to restore from (set once Ready).
    pub image: Option<String>,
    /// Creation time, ms since the epoch.
    pub created_at_ms: i64,
    /// Time of the last state change, ms since the epoch.
    pub last_transition_ms: i64,
}

/// The SQLite store. Cheap to share behind an `Arc`.
pub struct Store {
    conn: Mutex<Connection>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`, creating its parent
    /// directories, and applies pending migrations.
    ///
    /// # Errors
    /// [`StoreError::CreateDir`], [`StoreError::Open`],
    /// [`StoreError::Migration`] or [`StoreError::SchemaTooNew`].
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Returns the resulting mode; "wal" unless the file system refuses.
        let _mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        Self::init(conn, Some(path.to_path_buf()))
    }

    /// An in-memory database (tests).
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        Self::init(conn, None)
    }

    fn init(mut conn: Connection, path: Option<PathBuf>) -> Result<Store, StoreError> {
        migrate(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
            path,
        })
    }

    /// The database file; `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The connection. A panic while it was held cannot have left partial
    /// state (the open transaction rolled back on unwind), so poisoning is
    /// ignored.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committed if `f`
    /// succeeds and rolled back otherwise.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx("begin transaction")?;
        let value = f(&tx)?;
        tx.commit().ctx("commit")?;
        Ok(value)
    }

    // -- sandboxes ----------------------------------------------------------

    /// Inserts the row, or replaces every field of the row with its id.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn upsert_sandbox(&self, row: &SandboxRow) -> Result<(), StoreError> {
        let metadata = row.metadata.as_ref().map(encode_metadata);
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO sandboxes
                     (id, container_id, sidecar_id, created_at_ms, expires_at_ms, metadata, deleted)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (id) DO UPDATE SET
                     container_id = excluded.container_id,
                     sidecar_id = excluded.sidecar_id,
                     created_at_ms = excluded.created_at_ms,
                     expires_at_ms = excluded.expires_at_ms,
                     metadata = excluded.metadata,
                     deleted = excluded.deleted",
            )
            .and_then(|mut st| {
                st.execute(params![
                    row.id,
                    row.container_id,
                    row.sidecar_id,
                    row.created_at_ms,
                    row.expires_at_ms,
                    metadata,
                    row.deleted
                ])
            })
            .ctx("upsert sandbox")?;
            Ok(())
        })
    }

    /// The row with this id, deleted or not.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`], [`StoreError::CorruptJson`].
    pub fn get_sandbox(&self, id: &str) -> Result<Option<SandboxRow>, StoreError> {
        let conn = self.conn();
        let raw = conn
            .prepare_cached(&format!(
                "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = ?1"
            ))
            .and_then(|mut st| st.query_row([id], raw_sandbox).optional())
            .ctx("get sandbox")?;
        raw.map(RawSandbox::decode).transpose()
    }

    /// Every sandbox not marked deleted, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`], [`StoreError::CorruptJson`].
    pub fn list_sandboxes(&self) -> Result<Vec<SandboxRow>, StoreError> {
        self.query_sandboxes("WHERE deleted = 0")
    }

    /// Every sandbox, including those marked deleted, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`], [`StoreError::CorruptJson`].
    pub fn list_all_sandboxes(&self) -> Result<Vec<SandboxRow>, StoreError> {
        self.query_sandboxes("")
    }

    fn query_sandboxes(&self, filter: &str) -> Result<Vec<SandboxRow>, StoreError> {
        let conn = self.conn();
        let raws = conn
            .prepare_cached(&format!(
                "SELECT {SANDBOX_COLUMNS} FROM sandboxes {filter} ORDER BY created_at_ms, id"
            ))
            .and_then(|mut st| {
                st.query_map([], raw_sandbox)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .ctx("list sandboxes")?;
        drop(conn);
        raws.into_iter().map(RawSandbox::decode).collect()
    }

    /// Sets the expiry (`None`: manual cleanup).
    ///
    /// # Errors
    /// [`StoreError::SandboxNotFound`], [`StoreError::Sqlite`].
    pub fn set_expiry(&self, id: &str, expires_at_ms: Option<i64>) -> Result<(), StoreError> {
        self.update_sandbox(
            id,
            "UPDATE sandboxes SET expires_at_ms = ?2 WHERE id = ?1",
            expires_at_ms,
        )
    }

    /// Replaces the metadata (after a PATCH).
    ///
    /// # Errors
    /// [`StoreError::SandboxNotFound`], [`StoreError::Sqlite`].
    pub fn set_metadata(
        &self,
        id: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        self.update_sandbox(
            id,
            "UPDATE sandboxes SET metadata = ?2 WHERE id = ?1",
            Some(encode_metadata(metadata)),
        )
    }

    /// Marks the sandbox deleted (it leaves [`Store::list_sandboxes`] but
    /// keeps its row and transitions until [`Store::remove_sandbox`]).
    ///
    /// # Errors
    /// [`StoreError::SandboxNotFound`], [`StoreError::Sqlite`].
    pub fn mark_deleted(&self, id: &str) -> Result<(), StoreError> {
        self.update_sandbox(id, "UPDATE sandboxes SET deleted = ?2 WHERE id = ?1", true)
    }

    fn update_sandbox(
        &self,
        id: &str,
        sql: &'static str,
        value: impl rusqlite::ToSql,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let n = tx
                .prepare_cached(sql)
                .and_then(|mut st| st.execute(params![id, value]))
                .ctx("update sandbox")?;
            if n == 0 {
                return Err(StoreError::SandboxNotFound(id.to_string()));
            }
            Ok(())
        })
    }

    /// Removes the sandbox row and its transitions. Returns whether a row
    /// existed.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn remove_sandbox(&self, id: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            tx.prepare_cached("DELETE FROM transitions WHERE sandbox_id = ?1")
                .and_then(|mut st| st.execute([id]))
                .ctx("remove transitions")?;
            let n = tx
                .prepare_cached("DELETE FROM sandboxes WHERE id = ?1")
                .and_then(|mut st| st.execute([id]))
                .ctx("remove sandbox")?;
            Ok(n > 0)
        })
    }

    // -- transitions --------------------------------------------------------

    /// Appends a transition, dropping the oldest beyond [`MAX_TRANSITIONS`].
    /// The sandbox row need not exist yet.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn add_transition(&self, sandbox_id: &str, t: &Transition) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO transitions (sandbox_id, state, reason, message, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut st| {
                st.execute(params![sandbox_id, t.state, t.reason, t.message, t.at_ms])
            })
            .ctx("add transition")?;
            tx.prepare_cached(
                "DELETE FROM transitions WHERE sandbox_id = ?1 AND seq <= (
                     SELECT seq FROM transitions WHERE sandbox_id = ?1
                     ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
            )
            .and_then(|mut st| st.execute(params![sandbox_id, MAX_TRANSITIONS as i64]))
            .ctx("trim transitions")?;
            Ok(())
        })
    }

    /// The sandbox's transitions, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn transitions(&self, sandbox_id: &str) -> Result<Vec<Transition>, StoreError> {
        let conn = self.conn();
        conn.prepare_cached(
            "SELECT state, reason, message, at_ms FROM transitions
             WHERE sandbox_id = ?1 ORDER BY seq",
        )
        .and_then(|mut st| st.query_map([sandbox_id], transition)?.collect())
        .ctx("list transitions")
    }

    /// The sandbox's newest transition.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn last_transition(&self, sandbox_id: &str) -> Result<Option<Transition>, StoreError> {
        let conn = self.conn();
        conn.prepare_cached(
            "SELECT state, reason, message, at_ms FROM transitions
             WHERE sandbox_id = ?1 ORDER BY seq DESC LIMIT 1",
        )
        .and_then(|mut st| st.query_row([sandbox_id], transition).optional())
        .ctx("last transition")
    }

    // -- snapshots ----------------------------------------------------------

    /// Inserts the snapshot, or replaces every field of the one with its id.
    ///
    /// # Errors
    /// [`StoreError::InvalidSnapshotState`], [`StoreError::Sqlite`].
    pub fn put_snapshot(&self, row: &SnapshotRow) -> Result<(), StoreError> {
        check_snapshot_state(&row.state)?;
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO snapshots (id, sandbox_id, name, state, reason, message, image,
                                        created_at_ms, last_transition_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (id) DO UPDATE SET
                     sandbox_id = excluded.sandbox_id,
                     name = excluded.name,
                     state = excluded.state,
                     reason = excluded.reason,
                     message = excluded.message,
                     image = excluded.image,
                     created_at_ms = excluded.created_at_ms,
                     last_transition_ms = excluded.last_transition_ms",
            )
            .and_then(|mut st| {
                st.execute(params![
                    row.id,
                    row.sandbox_id,
                    row.name,
                    row.state,
                    row.reason,
                    row.message,
                    row.image,
                    row.created_at_ms,
                    row.last_transition_ms
                ])
            })
            .ctx("put snapshot")?;
            Ok(())
        })
    }

    /// The snapshot with this id.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn get_snapshot(&self, id: &str) -> Result<Option<SnapshotRow>, StoreError> {
        let conn = self.conn();
        conn.prepare_cached(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE id = ?1"
        ))
        .and_then(|mut st| st.query_row([id], snapshot).optional())
        .ctx("get snapshot")
    }

    /// Snapshots, newest first, optionally of one sandbox and in the given
    /// states (an empty `states` means any state).
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn list_snapshots(
        &self,
        sandbox_id: Option<&str>,
        states: &[String],
    ) -> Result<Vec<SnapshotRow>, StoreError> {
        let mut sql = format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE 1");
        let mut args: Vec<&str> = Vec::new();
        if let Some(sandbox_id) = sandbox_id {
            sql.push_str(" AND sandbox_id = ?");
            args.push(sandbox_id);
        }
        if !states.is_empty() {
            sql.push_str(" AND state IN (");
            sql.push_str(&vec!["?"; states.len()].join(", "));
            sql.push(')');
            args.extend(states.iter().map(String::as_str));
        }
        sql.push_str(" ORDER BY created_at_ms DESC, rowid DESC");
        let conn = self.conn();
        conn.prepare(&sql)
            .and_then(|mut st| st.query_map(params_from_iter(args), snapshot)?.collect())
            .ctx("list snapshots")
    }

    /// Moves a snapshot to `state` at `at_ms`, replacing reason and message.
    /// `image: None` keeps the current image (a `Deleting` snapshot still
    /// needs it).
    ///
    /// # Errors
    /// [`StoreError::InvalidSnapshotState`], [`StoreError::SnapshotNotFound`],
    /// [`StoreError::Sqlite`].
    pub fn set_snapshot_state(
        &self,
        id: &str,
        state: &str,
        reason: Option<&str>,
        message: Option<&str>,
        image: Option<&str>,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        check_snapshot_state(state)?;
        self.write(|tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE snapshots SET state = ?2, reason = ?3, message = ?4,
                         image = COALESCE(?5, image), last_transition_ms = ?6
                     WHERE id = ?1",
                )
                .and_then(|mut st| st.execute(params![id, state, reason, message, image, at_ms]))
                .ctx("set snapshot state")?;
            if n == 0 {
                return Err(StoreError::SnapshotNotFound(id.to_string()));
            }
            Ok(())
        })
    }

    /// Removes a snapshot. Returns whether it existed.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn delete_snapshot(&self, id: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            let n = tx
                .prepare_cached("DELETE FROM snapshots WHERE id = ?1")
                .and_then(|mut st| st.execute([id]))
                .ctx("delete snapshot")?;
            Ok(n > 0)
        })
    }
}

/// Applies pending migrations, each in its own immediate transaction (so two
/// processes opening one file at once do not both migrate).
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx("begin migration")?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .ctx("read schema version")?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        let Some(sql) = usize::try_from(version)
            .ok()
            .and_then(|v| MIGRATIONS.get(v))
        else {
            return Ok(());
        };
        let next = version + 1;
        let step = |source| StoreError::Migration {
            version: next,
            source,
        };
        tx.execute_batch(sql).map_err(step)?;
        tx.pragma_update(None, "user_version", next).map_err(step)?;
        tx.commit().map_err(step)?;
    }
}

fn check_snapshot_state(state: &str) -> Result<(), StoreError> {
    if SNAPSHOT_STATES.contains(&state) {
        Ok(())
    } else {
        Err(StoreError::InvalidSnapshotState(state.to_string()))
    }
}

fn encode_metadata(metadata: &BTreeMap<String, String>) -> String {
    // A map of strings always serializes.
    serde_json::to_string(metadata).unwrap_or_else(|_| "{}".into())
}

const SANDBOX_COLUMNS: &str =
    "id, container_id, sidecar_id, created_at_ms, expires_at_ms, metadata, deleted";

/// A sandbox row before its JSON is decoded (decoding happens outside the
/// row closure so its error keeps its own type).
struct RawSandbox {
    row: SandboxRow,
    metadata: Option<String>,
}

impl RawSandbox {
    fn decode(self) -> Result<SandboxRow, StoreError> {
        let RawSandbox { mut row, metadata } = self;
        row.metadata = metadata
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|source| StoreError::CorruptJson {
                column: "sandboxes.metadata",
                id: row.id.clone(),
                source,
            })?;
        Ok(row)
    }
}

fn raw_sandbox(r: &Row<'_>) -> rusqlite::Result<RawSandbox> {
    Ok(RawSandbox {
        row: SandboxRow {
            id: r.get(0)?,
            container_id: r.get(1)?,
            sidecar_id: r.get(2)?,
            created_at_ms: r.get(3)?,
            expires_at_ms: r.get(4)?,
            metadata: None,
            deleted: r.get(6)?,
        },
        metadata: r.get(5)?,
    })
}

fn transition(r: &Row<'_>) -> rusqlite::Result<Transition> {
    Ok(Transition {
        state: r.get(0)?,
        reason: r.get(1)?,
        message: r.get(2)?,
        at_ms: r.get(3)?,
    })
}

const SNAPSHOT_COLUMNS: &str =
    "id, sandbox_id, name, state, reason, message, image, created_at_ms, last_transition_ms";

fn snapshot(r: &Row<'_>) -> rusqlite::Result<SnapshotRow> {
    Ok(SnapshotRow {
        id: r.get(0)?,
        sandbox_id: r.get(1)?,
        name: r.get(2)?,
        state: r.get(3)?,
        reason: r.get(4)?,
        message: r.get(5)?,
        image: r.get(6)?,
        created_at_ms: r.get(7)?,
        last_transition_ms: r.get(8)?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> Self {
            TempDir(
                std::env::temp_dir().join(format!("lifecycle-store-test-{}", uuid::Uuid::new_v4())),
            )
        }
        fn db(&self) -> PathBuf {
            // A nested path: open must create the directories.
            self.0.join("nested/dir/lifecycle.db")
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn sandbox(id: &str, created: i64) -> SandboxRow {
        SandboxRow {
            id: id.into(),
            container_id: format!("c-{id}"),
            sidecar_id: None,
            created_at_ms: created,
            expires_at_ms: Some(created + 60_000),
            metadata: None,
            deleted: false,
        }
    }

    fn snap(id: &str, sandbox_id: &str, state: &str, created: i64) -> SnapshotRow {
        SnapshotRow {
            id: id.into(),
            sandbox_id: sandbox_id.into(),
            name: Some(format!("name-{id}")),
            state: state.into(),
            reason: Some("snapshot_accepted".into()),
            message: None,
            image: None,
            created_at_ms: created,
            last_transition_ms: created,
        }
    }

    fn t(state: &str, at: i64) -> Transition {
        Transition {
            state: state.into(),
            reason: None,
            message: None,
            at_ms: at,
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn sandbox_round_trip() {
        let store = Store::open_in_memory().unwrap();
        assert!(store.get_sandbox("a").unwrap().is_none());
        let mut a = sandbox("a", 1000);
        a.sidecar_id = Some("side".into());
        store.upsert_sandbox(&a).unwrap();
        assert_eq!(store.get_sandbox("a").unwrap().unwrap(), a);

        store.set_expiry("a", Some(99_000)).unwrap();
        let meta: BTreeMap<String, String> = [("k".to_string(), "v \"quoted\"".to_string())].into();
        store.set_metadata("a", &meta).unwrap();
        let got = store.get_sandbox("a").unwrap().unwrap();
        assert_eq!(got.expires_at_ms, Some(99_000));
        assert_eq!(got.metadata.as_ref(), Some(&meta));
        store.set_expiry("a", None).unwrap();
        assert_eq!(store.get_sandbox("a").unwrap().unwrap().expires_at_ms, None);
        // Empty metadata after a PATCH is Some(empty), not None.
        store.set_metadata("a", &BTreeMap::new()).unwrap();
        assert_eq!(
            store.get_sandbox("a").unwrap().unwrap().metadata,
            Some(BTreeMap::new())
        );

        // Upsert replaces every field.
        let mut a2 = sandbox("a", 2000);
        a2.container_id = "other".into();
        store.upsert_sandbox(&a2).unwrap();
        assert_eq!(store.get_sandbox("a").unwrap().unwrap(), a2);

        assert!(
            matches!(store.set_expiry("zz", None), Err(StoreError::SandboxNotFound(id)) if id == "zz")
        );
        assert!(matches!(
            store.set_metadata("zz", &meta),
            Err(StoreError::SandboxNotFound(_))
        ));
        assert!(matches!(
            store.mark_deleted("zz"),
            Err(StoreError::SandboxNotFound(_))
        ));
    }

    #[test]
    fn list_remove_and_deleted() {
        let store = Store::open_in_memory().unwrap();
        store.upsert_sandbox(&sandbox("b", 2)).unwrap();
        store.upsert_sandbox(&sandbox("a", 1)).unwrap();
        store.upsert_sandbox(&sandbox("c", 3)).unwrap();
        let ids = |rows: Vec<SandboxRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(store.list_sandboxes().unwrap()), ["a", "b", "c"]);

        store.mark_deleted("b").unwrap();
        assert_eq!(ids(store.list_sandboxes().unwrap()), ["a", "c"]);
        assert_eq!(ids(store.list_all_sandboxes().unwrap()), ["a", "b", "c"]);
        assert!(store.get_sandbox("b").unwrap().unwrap().deleted);

        store.add_transition("c", &t("Running", 5)).unwrap();
        assert!(store.remove_sandbox("c").unwrap());
        assert!(!store.remove_sandbox("c").unwrap());
        assert!(store.get_sandbox("c").unwrap().is_none());
        assert!(store.transitions("c").unwrap().is_empty());
        assert_eq!(ids(store.list_all_sandboxes().unwrap()), ["a", "b"]);
    }

    #[test]
    fn transitions_order_last_and_cap() {
        let store = Store::open_in_memory().unwrap();
        assert!(store.last_transition("a").unwrap().is_none());
        let first = Transition {
            state: "Pending".into(),
            reason: Some("CREATING".into()),
            message: Some("pulling image".into()),
            at_ms: 10,
        };
        store.add_transition("a", &first).unwrap();
        store.add_transition("a", &t("Running", 10)).unwrap(); // same time: insertion order wins
        store.add_transition("b", &t("Paused", 1)).unwrap();
        assert_eq!(
            store.transitions("a").unwrap(),
            vec![first, t("Running", 10)]
        );
        assert_eq!(store.last_transition("a").unwrap(), Some(t("Running", 10)));

        for i in 0..250 {
            store
                .add_transition("a", &t(&format!("S{i}"), 100 + i))
                .unwrap();
        }
        let all = store.transitions("a").unwrap();
        assert_eq!(all.len(), MAX_TRANSITIONS);
        assert_eq!(all[0].state, "S150");
        assert_eq!(all[MAX_TRANSITIONS - 1].state, "S249");
        assert_eq!(store.last_transition("a").unwrap().unwrap().state, "S249");
        // Other sandboxes are untouched by the cap.
        assert_eq!(store.transitions("b").unwrap(), vec![t("Paused", 1)]);
    }

    #[test]
    fn snapshots_filters_order_and_states() {
        let store = Store::open_in_memory().unwrap();
        store.put_snapshot(&snap("s1", "a", "Ready", 100)).unwrap();
        store
            .put_snapshot(&snap("s2", "a", "Creating", 300))
            .unwrap();
        store.put_snapshot(&snap("s3", "b", "Failed", 200)).unwrap();
        store.put_snapshot(&snap("s4", "b", "Ready", 300)).unwrap(); // ties s2: later insert first
        let ids = |rows: Vec<SnapshotRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();

        assert_eq!(
            ids(store.list_snapshots(None, &[]).unwrap()),
            ["s4", "s2", "s3", "s1"]
        );
        assert_eq!(
            ids(store.list_snapshots(Some("a"), &[]).unwrap()),
            ["s2", "s1"]
        );
        assert_eq!(
            ids(store.list_snapshots(None, &strings(&["Ready"])).unwrap()),
            ["s4", "s1"]
        );
        assert_eq!(
            ids(store
                .list_snapshots(None, &strings(&["Ready", "Failed"]))
                .unwrap()),
            ["s4", "s3", "s1"]
        );
        assert_eq!(
            ids(store
                .list_snapshots(Some("b"), &strings(&["Ready"]))
                .unwrap()),
            ["s4"]
        );
        assert!(store.list_snapshots(Some("zz"), &[]).unwrap().is_empty());
        assert!(store
            .list_snapshots(None, &strings(&["Bogus"]))
            .unwrap()
            .is_empty());

        assert_eq!(
            store.get_snapshot("s1").unwrap().unwrap(),
            snap("s1", "a", "Ready", 100)
        );
        assert!(store.get_snapshot("nope").unwrap().is_none());

        // Ready with an image, then Deleting keeps the image.
        store
            .set_snapshot_state(
                "s2",
                "Ready",
                Some("snapshot_runtime_ready"),
                None,
                Some("opensandbox-snapshots:s2"),
                400,
            )
            .unwrap();
        store
            .set_snapshot_state("s2", "Deleting", None, Some("bye"), None, 500)
            .unwrap();
        let s2 = store.get_snapshot("s2").unwrap().unwrap();
        assert_eq!(s2.state, "Deleting");
        assert_eq!(s2.reason, None);
        assert_eq!(s2.message.as_deref(), Some("bye"));
        assert_eq!(s2.image.as_deref(), Some("opensandbox-snapshots:s2"));
        assert_eq!((s2.created_at_ms, s2.last_transition_ms), (300, 500));

        assert!(matches!(
            store.set_snapshot_state("nope", "Ready", None, None, None, 1),
            Err(StoreError::SnapshotNotFound(_))
        ));
        assert!(matches!(
            store.set_snapshot_state("s1", "ready", None, None, None, 1),
            Err(StoreError::InvalidSnapshotState(_))
        ));
        assert!(matches!(
            store.put_snapshot(&snap("s9", "a", "Done", 1)),
            Err(StoreError::InvalidSnapshotState(_))
        ));

        assert!(store.delete_snapshot("s2").unwrap());
        assert!(!store.delete_snapshot("s2").unwrap());
        assert_eq!(
            ids(store.list_snapshots(None, &[]).unwrap()),
            ["s4", "s3", "s1"]
        );
    }

    #[test]
    fn reopen_keeps_everything() {
        let dir = TempDir::new();
        let meta: BTreeMap<String, String> = [("a".to_string(), "b".to_string())].into();
        {
            let store = Store::open(&dir.db()).unwrap();
            assert_eq!(store.path(), Some(dir.db().as_path()));
            store.upsert_sandbox(&sandbox("x", 7)).unwrap();
            store.set_expiry("x", Some(123)).unwrap();
            store.set_metadata("x", &meta).unwrap();
            store.add_transition("x", &t("Running", 8)).unwrap();
            store.put_snapshot(&snap("s", "x", "Creating", 9)).unwrap();
        }
        // Opening twice applies no migration again and loses nothing.
        for _ in 0..2 {
            let store = Store::open(&dir.db()).unwrap();
            let x = store.get_sandbox("x").unwrap().unwrap();
            assert_eq!(x.expires_at_ms, Some(123));
            assert_eq!(x.metadata, Some(meta.clone()));
            assert_eq!(store.list_sandboxes().unwrap().len(), 1);
            assert_eq!(store.transitions("x").unwrap(), vec![t("Running", 8)]);
            assert_eq!(store.get_snapshot("s").unwrap().unwrap().state, "Creating");
        }
        let conn = Connection::open(dir.db()).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = TempDir::new();
        drop(Store::open(&dir.db()).unwrap());
        let conn = Connection::open(dir.db()).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = Store::open(&dir.db()).unwrap_err();
        assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");
    }

    #[test]
    fn corrupt_metadata_is_reported() {
        let dir = TempDir::new();
        let store = Store::open(&dir.db()).unwrap();
        store.upsert_sandbox(&sandbox("x", 1)).unwrap();
        let conn = Connection::open(dir.db()).unwrap();
        conn.execute(
            "UPDATE sandboxes SET metadata = '{not json' WHERE id = 'x'",
            [],
        )
        .unwrap();
        let err = store.get_sandbox("x").unwrap_err();
        assert!(
            matches!(&err, StoreError::CorruptJson { id, .. } if id == "x"),
            "{err}"
        );
        assert!(err.to_string().contains("sandboxes.metadata"));
        assert!(store.list_sandboxes().is_err());
    }

    #[test]
    fn failed_write_leaves_no_partial_state() {
        let store = Store::open_in_memory().unwrap();
        store.upsert_sandbox(&sandbox("x", 1)).unwrap();
        store.add_transition("x", &t("Running", 1)).unwrap();
        // Make the second statement of remove_sandbox fail after the first ran.
        store
            .conn()
            .execute_batch(
                "CREATE TRIGGER no_delete BEFORE DELETE ON sandboxes
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        assert!(store.remove_sandbox("x").is_err());
        assert_eq!(store.transitions("x").unwrap().len(), 1, "rolled back");
        assert!(store.get_sandbox("x").unwrap().is_some());
    }

    #[test]
    fn concurrent_use() {
        let dir = TempDir::new();
        let shared = Arc::new(Store::open(&dir.db()).unwrap());
        let mut handles = Vec::new();
        for thread in 0..4 {
            // Threads 0 and 1 share one store; 2 and 3 open their own
            // connection to the same file (lock contention across connections).
            let store = if thread < 2 {
                Arc::clone(&shared)
            } else {
                Arc::new(Store::open(&dir.db()).unwrap())
            };
            handles.push(std::thread::spawn(move || {
                for i in 0..50 {
                    let id = format!("t{thread}-{i}");
                    store.upsert_sandbox(&sandbox(&id, i)).unwrap();
                    store.add_transition(&id, &t("Running", i)).unwrap();
                    store.add_transition("shared", &t(&id, i)).unwrap();
                    store.set_expiry(&id, Some(i * 2)).unwrap();
                    assert!(store.get_sandbox(&id).unwrap().is_some());
                }
            }));
        }
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(shared.list_sandboxes().unwrap().len(), 200);
        assert_eq!(shared.transitions("shared").unwrap().len(), MAX_TRANSITIONS);
        assert_eq!(shared.transitions("t3-49").unwrap().len(), 1);
        assert_eq!(
            shared.get_sandbox("t2-7").unwrap().unwrap().expires_at_ms,
            Some(14)
        );
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Store>();
    }
}
