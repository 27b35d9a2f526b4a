//! The HTTP API: the server loop, authentication, routing, and the handlers
//! of each route group.

pub mod body;
mod commands;
pub mod error;
mod files;
mod metrics;
mod pty;
pub mod query;
mod sessions;
mod watch;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::command::env::Env;
use crate::command::Commands;
use crate::config::Config;
use crate::session::Sessions;
use crate::wire::stream::StreamRx;
use body::Body;
use error::ApiError;

/// Largest JSON request body accepted.
pub const MAX_JSON_BODY: usize = 16 << 20;
/// Largest read buffer of a connection, which also bounds a request's
/// header block (larger heads get 431). musl's allocator maps and unmaps
/// every buffer of a few tens of KiB; with hyper's default (about 400 KiB)
/// faulting in and zeroing those fresh pages took half of a streaming
/// upload's time. 16 KiB buffers come from its slabs.
const READ_BUFFER_MAX: usize = 16 << 10;
/// Time allowed to receive a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often expired records and idle sessions are swept, at most.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// How often they are swept, at least.
const SWEEP_MIN: Duration = Duration::from_millis(100);

/// The services behind the API.
#[derive(Debug)]
pub struct App {
    cfg: Arc<Config>,
    commands: Arc<Commands>,
    sessions: Arc<Sessions>,
    /// PTY sessions (`/pty`).
    ptys: Arc<crate::pty::Ptys>,
    /// execd's own environment, against which request paths are expanded.
    env: Arc<Env>,
    /// CPU and memory figures (`/metrics`).
    metrics: crate::metrics::Monitor,
}

impl App {
    /// Builds the services from the configuration and execd's environment.
    pub fn new(cfg: Config, base_env: Env) -> Arc<Self> {
        let cfg = Arc::new(cfg);
        Arc::new(Self {
            commands: Commands::new(cfg.clone(), base_env.clone()),
            sessions: Sessions::new(cfg.clone(), base_env.clone()),
            ptys: crate::pty::Ptys::new(cfg.clone(), base_env.clone()),
            env: Arc::new(base_env),
            metrics: crate::metrics::Monitor::new(),
            cfg,
        })
    }

    /// Starts the warm shells in the background.
    pub fn warm_up(&self) {
        self.commands.warm_up();
    }

    /// Starts the periodic sweep of finished records and idle sessions.
    pub fn start_maintenance(self: &Arc<Self>) {
        let app = self.clone();
        // Sweep often enough that nothing outlives its retention by more than a quarter.
        let every = SWEEP_EVERY
            .min(self.cfg.command_retention / 4)
            .min(self.cfg.session_idle_timeout / 4)
            .min(self.cfg.pty_idle_timeout / 4)
            .max(SWEEP_MIN);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                app.commands.sweep();
                app.sessions.sweep();
                app.ptys.sweep();
            }
        });
    }
}

/// Serves HTTP/1.1 on `listener` until the process ends.
pub async fn serve(listener: TcpListener, app: Arc<App>) {
    if let Ok(local) = listener.local_addr() {
        crate::proxy::register_own_port(local.port());
    }
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, say: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: Request<Incoming>| {
                // The proxy reports the client's address to backends.
                req.extensions_mut().insert(peer);
                handle(app.clone(), req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(READ_BUFFER_MAX)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let span = tracing::debug_span!("request", method = %req.method(), path = %req.uri().path());
    let closing = req
        .headers()
        .get(header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let mut resp = route(app, req)
        .instrument(span)
        .await
        .unwrap_or_else(ApiError::into_response);
    if closing {
        // Do not announce keep-alive on a connection the client closes.
        resp.headers_mut().remove(header::CONNECTION);
    }
    Ok(resp)
}

fn authorized(cfg: &Config, req: &Request<Incoming>) -> bool {
    let Some(token) = &cfg.access_token else {
        return true;
    };
    let given = req
        .headers()
        .get("X-EXECD-ACCESS-TOKEN")
        .map_or(&b""[..], HeaderValue::as_bytes);
    let want = token.expose().as_bytes();
    bool::from(given.ct_eq(want))
}

async fn route(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    if !authorized(&app.cfg, &req) {
        let body =
            br#"{"error":"Unauthorized: invalid or missing header X-EXECD-ACCESS-TOKEN"}"#.to_vec();
        return Ok(error::json_response(StatusCode::UNAUTHORIZED, body));
    }
    let path = req.uri().path().to_string();
    if path == "/proxy" || path.starts_with("/proxy/") {
        return Ok(crate::proxy::forward(req).await);
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    match (&method, segs.as_slice()) {
        (&Method::GET, ["ping"]) => Ok(empty_ok()),
        (&Method::GET, ["metrics"]) => metrics::get(&app).await,
        (&Method::GET, ["metrics", "watch"]) => metrics::watch(&app),
        (&Method::POST, ["command"]) => commands::run(&app, req).await,
        (&Method::DELETE, ["command"]) => commands::interrupt(&app, &req).await,
        (&Method::GET, ["command", "status", id]) if !id.is_empty() => commands::status(&app, id),
        (&Method::GET, ["command", id, "logs"]) if !id.is_empty() => {
            commands::logs(&app, id, &req).await
        }
        (&Method::POST, ["session"]) => sessions::create(&app, req).await,
        (&Method::POST, ["session", id, "run"]) if !id.is_empty() => {
            sessions::run(&app, id, req).await
        }
        (&Method::DELETE, ["session", id]) if !id.is_empty() => sessions::delete(&app, id),
        (&Method::POST, ["pty"]) => pty::create(&app, req).await,
        (&Method::GET, ["pty", id]) if !id.is_empty() => pty::status(&app, id),
        (&Method::DELETE, ["pty", id]) if !id.is_empty() => pty::delete(&app, id),
        (&Method::GET, ["pty", id, "ws"]) if !id.is_empty() => pty::websocket(&app, id, req),
        (&Method::GET, ["files", "watch"]) => watch::stream(&app, &req),
        (&Method::GET, ["files", "info"]) => files::info(&app, &req).await,
        (&Method::DELETE, ["files"]) => files::delete_files(&app, &req).await,
        (&Method::POST, ["files", "mv"]) => files::mv(&app, req).await,
        (&Method::POST, ["files", "permissions"]) => files::chmod(&app, req).await,
        (&Method::GET, ["files", "search"]) => files::search(&app, &req).await,
        (&Method::POST, ["files", "replace"]) => files::replace(&app, req).await,
        (&Method::POST, ["files", "upload"]) => files::upload(&app, req).await,
        (&Method::GET, ["files", "download"]) => files::download(&app, &req).await,
        (&Method::GET, ["directories", "list"]) => files::list(&app, &req).await,
        (&Method::POST, ["directories"]) => files::mkdir(&app, req).await,
        (&Method::DELETE, ["directories"]) => files::delete_dirs(&app, &req).await,
        _ => Ok(not_found()),
    }
}

/// 200 with an empty body.
fn empty_ok() -> Response<Body> {
    Response::new(Body::empty())
}

/// Gin's 404 for unknown routes.
fn not_found() -> Response<Body> {
    let mut r = Response::new(Body::full(Bytes::from_static(b"404 page not found")));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// A 200 event stream with upstream's headers.
fn event_stream(rx: StreamRx) -> Response<Body> {
    let mut r = Response::new(Body::Stream(rx));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    h.insert("X-Accel-Buffering", HeaderValue::from_static("no"));
    r
}

/// Reads a JSON body of at most [`MAX_JSON_BODY`] bytes. An empty body is
/// `T::default()` when `allow_empty`, else the error Go reports (`EOF`).
/// `prefix` starts the error message, as upstream's handlers do.
async fn read_json<T: DeserializeOwned + Default>(
    req: Request<Incoming>,
    allow_empty: bool,
    prefix: &str,
) -> Result<T, ApiError> {
    let bytes = Limited::new(req.into_body(), MAX_JSON_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "INVALID_REQUEST_BODY",
                    format!("{prefix} request body exceeds {MAX_JSON_BODY} bytes"),
                )
            } else {
                ApiError::bad_request(format!("{prefix} {e}"))
            }
        })?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return if allow_empty {
            Ok(T::default())
        } else {
            Err(ApiError::bad_request(format!("{prefix} EOF")))
        };
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("{prefix} {e}")))
}
