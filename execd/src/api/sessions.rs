//! Handlers of `/session`.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use super::body::Body;
use super::error::{json_response, ApiError};
use super::{empty_ok, event_stream, read_json, App};
use crate::session::{CreateRequest, RunRequest};
use crate::wire::json::to_go_json;

#[derive(Serialize)]
struct Created {
    session_id: String,
}

/// `POST /session` (the body is optional).
pub(super) async fn create(
    app: &Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let body: CreateRequest = read_json(req, true, "error parsing request.").await?;
    let id = app
        .sessions
        .create(body)
        .await
        .map_err(|e| ApiError::from_session(e, "create"))?;
    Ok(json_response(
        StatusCode::OK,
        to_go_json(&Created { session_id: id }),
    ))
}

/// `POST /session/{id}/run`.
pub(super) async fn run(
    app: &Arc<App>,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let body: RunRequest = read_json(req, false, "error parsing request.").await?;
    let rx = app
        .sessions
        .run(id, body)
        .map_err(|e| ApiError::from_session(e, "run"))?;
    Ok(event_stream(rx))
}

/// `DELETE /session/{id}`.
pub(super) fn delete(app: &Arc<App>, id: &str) -> Result<Response<Body>, ApiError> {
    app.sessions
        .delete(id)
        .map_err(|e| ApiError::from_session(e, "delete"))?;
    Ok(empty_ok())
}
