//! Snapshots: create (`docker commit` in the background), get, list,
//! delete (`docker rmi`), the lookup behind restoring a sandbox from a
//! snapshot, and recovery of unfinished snapshots after a restart.
//!
//! The store's snapshot rows are the source of truth; the image of snapshot
//! `id` is `<repository>:<id>` (see [`crate::docker::snapshot::repository`]).
//! States: `Creating` → `Ready` | `Failed`; `Ready` | `Failed` → `Deleting`
//! → gone. A delete refused because a sandbox still uses the image puts the
//! row back in its previous state.

use std::sync::Arc;
use std::time::SystemTime;

use crate::docker::{snapshot, DockerError, View};
use crate::model::{
    format_time, from_millis, to_millis, CreateSnapshotRequest, ListSnapshotsResponse, Pagination,
    Snapshot, SnapshotStatus,
};
use crate::service::{LifecycleError, Service};
use crate::store::{SnapshotRow, SNAPSHOT_STATES};

/// `GET /snapshots` query.
#[derive(Debug, Clone, Default)]
pub struct SnapshotQuery {
    /// Only snapshots of this sandbox.
    pub sandbox_id: Option<String>,
    /// Only snapshots with exactly this name (upstream 1.1.1, the SDK).
    pub name: Option<String>,
    /// States to keep (any of them, case-insensitive).
    pub states: Vec<String>,
    /// 1-based page.
    pub page: usize,
    /// Page size.
    pub page_size: usize,
}

const CREATING: &str = "Creating";
const READY: &str = "Ready";
const FAILED: &str = "Failed";
const DELETING: &str = "Deleting";

fn not_found(id: &str) -> LifecycleError {
    LifecycleError::NotFound {
        code: "SNAPSHOT::NOT_FOUND",
        message: format!("Snapshot {id} not found."),
    }
}

fn now_ms() -> i64 {
    to_millis(SystemTime::now())
}

/// The API shape of a row.
fn snapshot_of(row: SnapshotRow) -> Snapshot {
    Snapshot {
        id: row.id,
        sandbox_id: row.sandbox_id,
        name: row.name,
        status: SnapshotStatus {
            state: row.state,
            reason: row.reason,
            message: row.message,
            last_transition_at: Some(format_time(from_millis(row.last_transition_ms))),
        },
        created_at: format_time(from_millis(row.created_at_ms)),
    }
}

impl Service {
    /// The repository snapshot images go to.
    fn snapshot_repository(&self) -> String {
        snapshot::repository(&self.settings.label_prefix)
    }

    /// The image of snapshot `id`: the recorded one, else the conventional
    /// name.
    fn snapshot_image_of(&self, row: &SnapshotRow) -> String {
        row.image
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.snapshot_repository(), row.id))
    }

    /// `POST /sandboxes/{id}/snapshots`: records the snapshot as `Creating`
    /// and commits the container in the background.
    pub async fn create_snapshot(
        self: &Arc<Self>,
        sandbox_id: &str,
        req: CreateSnapshotRequest,
    ) -> Result<Snapshot, LifecycleError> {
        if req.name.as_deref() == Some("") {
            return Err(LifecycleError::Invalid {
                code: "SANDBOX::INVALID_PARAMETER",
                message: "name must not be empty.".into(),
            });
        }
        let v = self
            .driver
            .inspect(sandbox_id)
            .await?
            .ok_or_else(|| LifecycleError::NotFound {
                code: "DOCKER::SANDBOX_NOT_FOUND",
                message: format!("Sandbox {sandbox_id} not found."),
            })?;
        if !v.running {
            return Err(LifecycleError::Conflict {
                code: "SNAPSHOT::INVALID_SOURCE_STATE",
                message: format!(
                    "Sandbox {sandbox_id} is {}; only a Running sandbox can be snapshotted.",
                    v.status.state
                ),
            });
        }
        let now = now_ms();
        let row = SnapshotRow {
            id: uuid::Uuid::new_v4().to_string(),
            sandbox_id: sandbox_id.to_string(),
            name: req.name,
            state: CREATING.into(),
            reason: Some("snapshot_accepted".into()),
            message: Some("Snapshot creation accepted.".into()),
            image: None,
            created_at_ms: now,
            last_transition_ms: now,
        };
        self.store.put_snapshot(&row)?;
        tracing::info!(snapshot = %row.id, sandbox = sandbox_id, "snapshot accepted");
        let svc = Arc::clone(self);
        let id = row.id.clone();
        tokio::spawn(async move { svc.commit_snapshot(&id, &v).await });
        Ok(snapshot_of(row))
    }

    /// The background half of a create: commit, then `Ready` or `Failed`
    /// (unless the row moved on meanwhile).
    async fn commit_snapshot(&self, id: &str, v: &View) {
        let result = self.driver.commit(v, &self.snapshot_repository(), id).await;
        let row = match self.store.get_snapshot(id) {
            Ok(row) => row,
            Err(e) => {
                tracing::warn!(snapshot = id, error = %e, "snapshot state not recorded");
                return;
            }
        };
        match (row, &result) {
            (Some(row), _) if row.state == CREATING => {}
            (None, Ok(image)) => {
                // The row went away meanwhile: do not leave its image behind.
                if let Err(e) = self.driver.remove_image(image).await {
                    tracing::warn!(snapshot = id, error = %e, "orphan snapshot image not removed");
                }
                return;
            }
            _ => return,
        }
        let recorded = match result {
            Ok(image) => {
                tracing::info!(snapshot = id, image = %image, "snapshot ready");
                self.store.set_snapshot_state(
                    id,
                    READY,
                    Some("snapshot_runtime_ready"),
                    Some("Docker snapshot image created successfully."),
                    Some(&image),
                    now_ms(),
                )
            }
            Err(e) => {
                tracing::warn!(snapshot = id, error = %e, "snapshot failed");
                self.store.set_snapshot_state(
                    id,
                    FAILED,
                    Some("snapshot_runtime_failed"),
                    Some(&e.to_string()),
                    None,
                    now_ms(),
                )
            }
        };
        if let Err(e) = recorded {
            tracing::warn!(snapshot = id, error = %e, "snapshot state not recorded");
        }
    }

    /// `GET /snapshots/{id}`.
    pub fn get_snapshot(&self, id: &str) -> Result<Snapshot, LifecycleError> {
        let row = self.store.get_snapshot(id)?.ok_or_else(|| not_found(id))?;
        Ok(snapshot_of(row))
    }

    /// `GET /snapshots`: filtered, newest first, one page.
    pub fn list_snapshots(
        &self,
        q: &SnapshotQuery,
    ) -> Result<ListSnapshotsResponse, LifecycleError> {
        // The store matches states exactly: use the canonical spelling.
        let states: Vec<String> = q
            .states
            .iter()
            .map(|s| {
                SNAPSHOT_STATES
                    .iter()
                    .find(|c| c.eq_ignore_ascii_case(s))
                    .map_or_else(|| s.clone(), |c| (*c).to_string())
            })
            .collect();
        let mut rows = self
            .store
            .list_snapshots(q.sandbox_id.as_deref(), &states)?;
        if let Some(name) = &q.name {
            rows.retain(|r| r.name.as_ref() == Some(name));
        }
        let page_size = q.page_size.max(1);
        let page = q.page.max(1);
        let total = rows.len();
        let total_pages = total.div_ceil(page_size);
        let items = rows
            .into_iter()
            .skip((page - 1).saturating_mul(page_size))
            .take(page_size)
            .map(snapshot_of)
            .collect();
        Ok(ListSnapshotsResponse {
            items,
            pagination: Pagination {
                page,
                page_size,
                total_items: total,
                total_pages,
                has_next_page: page < total_pages,
            },
        })
    }

    /// `DELETE /snapshots/{id}`: gone (row and image) when this returns.
    pub async fn delete_snapshot(&self, id: &str) -> Result<(), LifecycleError> {
        let row = self.store.get_snapshot(id)?.ok_or_else(|| not_found(id))?;
        if row.state == CREATING {
            return Err(LifecycleError::Conflict {
                code: "SNAPSHOT::INVALID_STATE",
                message: format!(
                    "Snapshot {id} is still being created; delete it once it is Ready or Failed."
                ),
            });
        }
        self.store.set_snapshot_state(
            id,
            DELETING,
            Some("snapshot_delete_requested"),
            Some("Snapshot deletion requested."),
            None,
            now_ms(),
        )?;
        match self.remove_snapshot_image(&row).await {
            Ok(()) => Ok(()),
            Err(LifecycleError::Docker(DockerError::Conflict(m))) => {
                // Still usable: back to where it was.
                self.store.set_snapshot_state(
                    id,
                    &row.state,
                    row.reason.as_deref(),
                    row.message.as_deref(),
                    None,
                    now_ms(),
                )?;
                Err(LifecycleError::Conflict {
                    code: "SNAPSHOT::DELETE_CONFLICT",
                    message: format!(
                        "snapshot image cannot be deleted due to a conflict (delete the sandboxes restored from it first): {m}"
                    ),
                })
            }
            // Left `Deleting`: a later DELETE or the next start retries.
            Err(LifecycleError::Docker(e)) => Err(LifecycleError::Start {
                code: "DOCKER::SNAPSHOT_IMAGE_REMOVE_FAILED",
                message: format!(
                    "Failed to delete snapshot image {}: {e}",
                    self.snapshot_image_of(&row)
                ),
            }),
            Err(e) => Err(e),
        }
    }

    /// Removes the image (already gone is fine), then the row.
    async fn remove_snapshot_image(&self, row: &SnapshotRow) -> Result<(), LifecycleError> {
        let image = self.snapshot_image_of(row);
        if !self.driver.remove_image(&image).await? {
            tracing::info!(snapshot = %row.id, image = %image, "snapshot image already absent");
        }
        self.store.delete_snapshot(&row.id)?;
        tracing::info!(snapshot = %row.id, "snapshot deleted");
        Ok(())
    }

    /// The image to restore snapshot `id` from: 404 if unknown, 409 unless
    /// `Ready`.
    pub(crate) fn restorable_image(&self, id: &str) -> Result<String, LifecycleError> {
        let row = self.store.get_snapshot(id)?.ok_or_else(|| not_found(id))?;
        if row.state != READY {
            return Err(LifecycleError::Conflict {
                code: "SNAPSHOT::NOT_READY",
                message: format!("Snapshot {id} is {}, not Ready.", row.state),
            });
        }
        Ok(self.snapshot_image_of(&row))
    }

    /// After a start: a `Creating` row (its commit died with the previous
    /// process) becomes `Ready` if its image exists, else `Failed`; a
    /// `Deleting` row's delete is retried. Failures are logged, not fatal.
    pub(crate) async fn recover_snapshots(&self) -> Result<(), LifecycleError> {
        let rows = self
            .store
            .list_snapshots(None, &[CREATING.to_string(), DELETING.to_string()])?;
        for row in rows {
            if row.state == DELETING {
                match self.remove_snapshot_image(&row).await {
                    Ok(()) => {}
                    Err(LifecycleError::Docker(DockerError::Conflict(m))) => {
                        tracing::warn!(snapshot = %row.id, error = %m, "snapshot image in use; snapshot kept");
                        self.store.set_snapshot_state(
                            &row.id,
                            READY,
                            Some("snapshot_recovery_ready"),
                            Some("Snapshot image is still in use; deletion abandoned."),
                            None,
                            now_ms(),
                        )?;
                    }
                    Err(e) => {
                        tracing::warn!(snapshot = %row.id, error = %e, "snapshot delete not retried");
                    }
                }
                continue;
            }
            let image = self.snapshot_image_of(&row);
            let (state, reason, message, image) = match self.driver.image_exists(&image).await {
                Ok(true) => (
                    READY,
                    "snapshot_recovery_ready",
                    "Recovered snapshot image after server restart.".to_string(),
                    Some(image),
                ),
                Ok(false) => (
                    FAILED,
                    "snapshot_recovery_missing_image",
                    "Snapshot creation was interrupted and no snapshot image was found."
                        .to_string(),
                    None,
                ),
                Err(e) => (
                    FAILED,
                    "snapshot_recovery_inspect_failed",
                    format!("Failed to inspect snapshot image {image}: {e}"),
                    None,
                ),
            };
            tracing::info!(snapshot = %row.id, state, reason, "snapshot recovered");
            self.store.set_snapshot_state(
                &row.id,
                state,
                Some(reason),
                Some(&message),
                image.as_deref(),
                now_ms(),
            )?;
        }
        Ok(())
    }
}
