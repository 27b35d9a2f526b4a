//! The Lifecycle API's JSON, with upstream's field names. Optional fields
//! are omitted when absent, never sent as `null` (the SDK's models reject
//! `null`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// `image` of a create request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageSpec {
    /// Image reference.
    #[serde(default)]
    pub uri: String,
    /// Registry credentials, used only when the image must be pulled.
    #[serde(default)]
    pub auth: Option<ImageAuth>,
}

/// Registry credentials.
#[derive(Clone, Default, Deserialize)]
pub struct ImageAuth {
    /// User name.
    #[serde(default)]
    pub username: String,
    /// Password or token.
    #[serde(default)]
    pub password: String,
}

impl std::fmt::Debug for ImageAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageAuth")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// `platform` of a create request.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Platform {
    /// `linux` or `windows`.
    pub os: String,
    /// `amd64` or `arm64`.
    pub arch: String,
}

/// `POST /sandboxes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSandboxRequest {
    /// Image to run.
    pub image: Option<ImageSpec>,
    /// Snapshot to restore instead of an image.
    pub snapshot_id: Option<String>,
    /// Requested platform.
    pub platform: Option<Platform>,
    /// Seconds until expiry; absent or `null` means no expiry.
    pub timeout: Option<i64>,
    /// `cpu`, `memory`, `gpu`.
    pub resource_limits: Option<BTreeMap<String, String>>,
    /// Environment; `null` values are dropped.
    #[serde(default)]
    pub env: BTreeMap<String, Option<String>>,
    /// User metadata, stored as labels.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The user's command.
    pub entrypoint: Option<Vec<String>>,
    /// Egress policy; starts an egress sidecar.
    pub network_policy: Option<serde_json::Value>,
    /// Credential proxy (a later issue).
    pub credential_proxy: Option<serde_json::Value>,
    /// Kubernetes gateway only.
    #[serde(default)]
    pub secure_access: bool,
    /// Volumes (a later issue).
    pub volumes: Option<Vec<serde_json::Value>>,
    /// Extensions.
    #[serde(default)]
    pub extensions: BTreeMap<String, String>,
}

/// `status` of a sandbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatus {
    /// `Pending`, `Running`, `Paused`, `Terminated`, `Failed`, …
    pub state: String,
    /// Machine-readable reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the state last changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_at: Option<String>,
}

/// `{"uri"}` of a sandbox's image.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ImageRef {
    /// Image reference.
    pub uri: String,
}

/// A sandbox, as GET, list and PATCH return it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    /// Sandbox id.
    pub id: String,
    /// Image it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRef>,
    /// Snapshot it was restored from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Requested platform.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// State.
    pub status: SandboxStatus,
    /// User metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// The user's command.
    pub entrypoint: Vec<String>,
    /// Expiry, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Creation time.
    pub created_at: String,
}

/// `POST /sandboxes` answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSandboxResponse {
    /// Sandbox id.
    pub id: String,
    /// State (`Running` once execd answers).
    pub status: SandboxStatus,
    /// User metadata, echoed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Requested platform, echoed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Expiry, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Creation time.
    pub created_at: String,
    /// The user's command, echoed.
    pub entrypoint: Vec<String>,
}

/// Paging of a list.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Pagination {
    /// 1-based page.
    pub page: usize,
    /// Items per page.
    pub page_size: usize,
    /// Items in all pages.
    pub total_items: usize,
    /// Pages.
    pub total_pages: usize,
    /// Whether a later page exists.
    pub has_next_page: bool,
}

/// `GET /sandboxes` answer.
#[derive(Debug, Clone, Serialize)]
pub struct ListSandboxesResponse {
    /// This page's sandboxes.
    pub items: Vec<Sandbox>,
    /// Paging.
    pub pagination: Pagination,
}

/// `GET /sandboxes/{id}/endpoints/{port}` answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port[/path]`, no scheme.
    pub endpoint: String,
    /// Headers the client must send.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
}

/// `renew-expiration` request and answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Expiration {
    /// RFC 3339 time.
    pub expires_at: String,
}

/// `POST /sandboxes/{id}/snapshots` (the body is optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    /// Human-readable name (at least one character).
    pub name: Option<String>,
}

/// `status` of a snapshot: same shape as a sandbox's; `state` is
/// `Creating`, `Ready`, `Failed` or `Deleting`.
pub type SnapshotStatus = SandboxStatus;

/// A snapshot.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Snapshot id (uuid4).
    pub id: String,
    /// The sandbox it was taken from.
    pub sandbox_id: String,
    /// Human-readable name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// State.
    pub status: SnapshotStatus,
    /// Creation time.
    pub created_at: String,
}

/// `GET /snapshots` answer.
#[derive(Debug, Clone, Serialize)]
pub struct ListSnapshotsResponse {
    /// This page's snapshots.
    pub items: Vec<Snapshot>,
    /// Paging.
    pub pagination: Pagination,
}

/// Formats `t` as pydantic does: UTC, microseconds unless zero, `Z`.
pub fn format_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, mo, day) = civil(i64::try_from(secs / 86_400).unwrap_or(0));
    let rem = secs % 86_400;
    let mut s = format!(
        "{y:04}-{mo:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    let micros = d.subsec_micros();
    if micros != 0 {
        s.push_str(&format!(".{micros:06}"));
    }
    s.push('Z');
    s
}

/// Milliseconds since the epoch as a time.
pub fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// A time as milliseconds since the epoch.
pub fn to_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an RFC 3339 / ISO 8601 time (`Z`, `±hh:mm`, or no zone meaning
/// UTC; any fraction). `None` when it is not one.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos: u64 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let f = &frac[..digits.min(9)];
        nanos = f.parse::<u64>().ok()? * 10u64.pow(u32::try_from(9 - f.len()).ok()?);
        rest = &frac[digits..];
    }
    let offset = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = rest[1..]
                .split_once(':')
                .unwrap_or((rest.get(1..3)?, rest.get(3..)?));
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    let days = days_from_civil(y, u32::try_from(mo).ok()?, u32::try_from(d).ok()?);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_like_pydantic() {
        let t = UNIX_EPOCH + Duration::new(1_795_170_769, 17_944_000);
        assert_eq!(format_time(t), "2026-11-20T10:32:49.017944Z");
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(parse_time("2026-11-20T10:32:49.017944Z"), Some(t));
        assert_eq!(parse_time("2026-11-20T12:32:49.017944+02:00"), Some(t));
        assert_eq!(parse_time("2026-11-20T10:32:49.017944"), Some(t));
        assert_eq!(parse_time("2026-11-20 10:32:49.017944+00:00"), Some(t));
        assert_eq!(
            parse_time("2000-02-29T00:00:00Z")
                .map(format_time)
                .as_deref(),
            Some("2000-02-29T00:00:00Z")
        );
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("2026-13-01T00:00:00Z"), None);
    }
}
