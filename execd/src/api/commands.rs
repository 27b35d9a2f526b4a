//! Handlers of `/command`.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use super::body::Body;
use super::error::{json_response, ApiError};
use super::{empty_ok, event_stream, query, read_json, App};
use crate::command::RunRequest;
use crate::wire::json::to_go_json;

/// Chunk size for streaming a log.
const LOG_CHUNK: usize = 64 * 1024;

/// `POST /command`.
pub(super) async fn run(
    app: &Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let body: RunRequest = read_json(
        req,
        false,
        "error parsing request, MAYBE invalid body format.",
    )
    .await?;
    let rx = app
        .commands
        .run(body)
        .await
        .map_err(|e| ApiError::from_command(e, "run"))?;
    Ok(event_stream(rx))
}

/// `DELETE /command?id=`: interrupts a command; for a session id, closes the session.
pub(super) async fn interrupt(
    app: &Arc<App>,
    req: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let id = query::param(req.uri().query(), "id")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::missing_query("id"))?;
    if app.commands.get(&id).is_err() && app.sessions.contains(&id) {
        app.sessions
            .delete(&id)
            .map_err(|e| ApiError::from_session(e, "delete"))?;
        return Ok(empty_ok());
    }
    app.commands
        .interrupt(&id)
        .await
        .map_err(|e| ApiError::from_command(e, "interrupt"))?;
    Ok(empty_ok())
}

/// `GET /command/status/{id}`.
pub(super) fn status(app: &Arc<App>, id: &str) -> Result<Response<Body>, ApiError> {
    let rec = app
        .commands
        .get(id)
        .map_err(|e| ApiError::from_command(e, "status"))?;
    Ok(json_response(StatusCode::OK, to_go_json(&rec.status())))
}

/// `GET /command/{id}/logs?cursor=`: the spooled bytes from `cursor` (a byte
/// offset) to the current end, streamed, with the end offset in
/// `EXECD-COMMANDS-TAIL-CURSOR`.
pub(super) async fn logs(
    app: &Arc<App>,
    id: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let path = app
        .commands
        .log_path(id)
        .map_err(|e| ApiError::from_command(e, "logs"))?;
    // Upstream: missing or unparsable means 0; negative is an error.
    let cursor: i64 = query::param(req.uri().query(), "cursor")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let cursor = u64::try_from(cursor).map_err(|_| {
        ApiError::bad_request(format!("invalid cursor {cursor}: must not be negative"))
    })?;
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::bad_request(format!("open {}: {e}", path.display())))?;
    let end = file
        .metadata()
        .await
        .map_err(|e| ApiError::bad_request(format!("stat {}: {e}", path.display())))?
        .len();
    let len = end.saturating_sub(cursor);
    let body = if len == 0 {
        Body::empty()
    } else {
        file.seek(std::io::SeekFrom::Start(cursor))
            .await
            .map_err(|e| ApiError::bad_request(format!("seek: {e}")))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut left = len;
            while left > 0 {
                let mut buf = vec![0u8; usize::try_from(left).unwrap_or(LOG_CHUNK).min(LOG_CHUNK)];
                match file.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        left -= n as u64;
                        if tx.send(Bytes::from(buf)).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Body::Stream(rx)
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        "EXECD-COMMANDS-TAIL-CURSOR",
        HeaderValue::from(cursor + len),
    );
    Ok(r)
}
