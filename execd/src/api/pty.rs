//! `/pty`: create, inspect and delete PTY sessions, and attach to one over
//! a WebSocket (`GET /pty/{id}/ws?pty=0|1&since=N&takeover=1`; `pty=0`
//! starts the shell on pipes instead of a terminal).

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::body::Body;
use super::error::{json_response, ApiError};
use super::{query, read_json, App};
use crate::pty::CreateRequest;
use crate::wire::json::to_go_json;

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "CONTEXT_NOT_FOUND",
        format!("pty session {id} not found"),
    )
}

/// `POST /pty`: 201 `{"session_id"}`.
pub async fn create(app: &App, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let body: CreateRequest = read_json(req, true, "error parsing request:").await?;
    let id = app
        .ptys
        .create(body)
        .map_err(|e| ApiError::runtime(format!("error creating pty session: {e}")))?;
    let json = to_go_json(&serde_json::json!({ "session_id": id }));
    Ok(json_response(StatusCode::CREATED, json))
}

/// `GET /pty/{id}`.
pub fn status(app: &App, id: &str) -> Result<Response<Body>, ApiError> {
    let s = app.ptys.get(id).ok_or_else(|| not_found(id))?;
    Ok(json_response(StatusCode::OK, to_go_json(&s.status())))
}

/// `DELETE /pty/{id}`: kills the shell's process group and tree.
pub fn delete(app: &App, id: &str) -> Result<Response<Body>, ApiError> {
    if app.ptys.delete(id) {
        Ok(Response::new(Body::empty()))
    } else {
        Err(not_found(id))
    }
}

/// The `Sec-WebSocket-Key` of a valid WebSocket upgrade request.
fn upgrade_key(method: &Method, h: &HeaderMap) -> Option<HeaderValue> {
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let ok = method == Method::GET
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
        && h.get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes() == b"13");
    ok.then(|| h.get(header::SEC_WEBSOCKET_KEY).cloned())
        .flatten()
}

/// `GET /pty/{id}/ws`: 404 for an unknown id, 409 while another client holds
/// the session (unless `takeover=1` on a real upgrade), else 101.
pub fn websocket(
    app: &App,
    id: &str,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let session = app.ptys.get(id).ok_or_else(|| not_found(id))?;
    let q = req.uri().query();
    let since = match query::param(q, "since").filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => s
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("invalid query parameter 'since': {s}")))?,
    };
    let mode = match query::param(q, "pty").as_deref() {
        Some("0" | "false" | "FALSE" | "False") => crate::pty::Mode::Pipe,
        _ => crate::pty::Mode::Pty,
    };
    let takeover = query::param(q, "takeover")
        .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "True"));
    let key = upgrade_key(req.method(), req.headers());
    let claim = session.claim(takeover && key.is_some()).map_err(|_| {
        ApiError::new(
            StatusCode::CONFLICT,
            "ALREADY_CONNECTED",
            format!("another client is already connected to pty session {id}"),
        )
    })?;
    let Some(key) = key else {
        session.release(claim.id);
        let mut r = Response::new(Body::full(
            "websocket: the client is not using the websocket protocol",
        ));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(r);
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(crate::pty::ws::config()),
                )
                .await;
                crate::pty::ws::serve(session, ws, claim, since, mode).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "pty websocket upgrade failed");
                session.release(claim.id);
            }
        }
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(r)
}
