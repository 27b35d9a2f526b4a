//! The Lifecycle API over HTTP/1.1: routing (every route at the root and
//! under `/v1`), the API key, `X-Request-ID`, and the one error mapping.

pub mod error;
mod proxy;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::config::Secret;
use crate::service::{ListQuery, Service, MAX_PAGE_SIZE};
use error::ApiError;

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;
/// Header carrying the API key.
const API_KEY_HEADER: &str = "OPEN-SANDBOX-API-KEY";

/// What the HTTP layer needs.
#[derive(Debug)]
pub struct App {
    /// The sandbox service.
    pub service: Arc<Service>,
    /// The API key, when one is required.
    pub api_key: Option<Secret>,
}

type Reply = Result<Response<Full<Bytes>>, ApiError>;

/// Serves HTTP/1.1 on `listener` until the process ends.
pub async fn serve(listener: TcpListener, app: Arc<App>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: Request<Incoming>| {
                // The client's address, for the server proxy's X-Forwarded-For.
                req.extensions_mut().insert(peer);
                handle(app.clone(), req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), svc)
                // The server proxy's tunnels.
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<proxy::Body>, Infallible> {
    let request_id = req
        .headers()
        .get("X-Request-ID")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), String::from);
    let span = tracing::info_span!("request", id = %request_id, method = %req.method(), path = %req.uri().path());
    // The server proxy: no API key (as upstream), bodies streamed.
    let mut resp = if let Some(p) = proxy::ProxyPath::parse(req.uri().path()) {
        proxy::handle(&app.service, req, p).instrument(span).await
    } else {
        route(&app, req)
            .instrument(span)
            .await
            .unwrap_or_else(ApiError::into_response)
            .map(proxy::full)
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("X-Request-ID", v);
    }
    Ok(resp)
}

fn authorized(app: &App, req: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(key) = &app.api_key else {
        return Ok(());
    };
    let Some(given) = req.headers().get(API_KEY_HEADER) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "MISSING_API_KEY",
            "Authentication credentials are missing. Provide API key via OPEN-SANDBOX-API-KEY header.",
        ));
    };
    let want = key.expose().as_bytes();
    let given = given.as_bytes();
    let same = bool::from(given.ct_eq(want));
    if same {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "INVALID_API_KEY",
            "Authentication credentials are invalid. Check your API key and try again.",
        ))
    }
}

async fn route(app: &App, req: Request<Incoming>) -> Reply {
    let full = req.uri().path().to_string();
    if full == "/health" {
        return Ok(json(
            StatusCode::OK,
            &serde_json::json!({"status": "healthy"}),
        ));
    }
    authorized(app, &req)?;
    let path = full.strip_prefix("/v1").unwrap_or(&full);
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let svc = &app.service;
    let method = req.method().clone();
    match (&method, segs.as_slice()) {
        (&Method::POST, ["sandboxes"]) => {
            let body = read_json(req).await?;
            let created = svc.create(body).await?;
            Ok(json(StatusCode::ACCEPTED, &created))
        }
        (&Method::GET, ["sandboxes"]) => {
            let q = list_query(req.uri().query())?;
            Ok(json(StatusCode::OK, &svc.list(&q).await?))
        }
        (&Method::GET, ["sandboxes", id]) => Ok(json(StatusCode::OK, &svc.get(id).await?)),
        (&Method::DELETE, ["sandboxes", id]) => {
            svc.delete(id).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&Method::PATCH, ["sandboxes", id, "metadata"]) => {
            let id = id.to_string();
            let patch: BTreeMap<String, Option<String>> = read_json(req).await?;
            Ok(json(StatusCode::OK, &svc.patch_metadata(&id, patch).await?))
        }
        (&Method::POST, ["sandboxes", id, "pause"]) => {
            svc.pause(id).await?;
            Ok(empty(StatusCode::ACCEPTED))
        }
        (&Method::POST, ["sandboxes", id, "resume"]) => {
            svc.resume(id).await?;
            Ok(empty(StatusCode::ACCEPTED))
        }
        (&Method::POST, ["sandboxes", id, "renew-expiration"]) => {
            let id = id.to_string();
            let body: crate::model::Expiration = read_json(req).await?;
            Ok(json(
                StatusCode::OK,
                &svc.renew(&id, &body.expires_at).await?,
            ))
        }
        (&Method::GET, ["sandboxes", id, "endpoints", port]) => {
            let q = pairs(req.uri().query());
            let proxy = q
                .iter()
                .find(|(k, _)| k == "use_server_proxy")
                .is_some_and(|(_, v)| v.eq_ignore_ascii_case("true") || v == "1");
            if q.iter().any(|(k, _)| k == "expires") {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "SANDBOX::API_NOT_SUPPORTED",
                    "Signed endpoints (expires) are not supported when runtime.type='docker'.",
                ));
            }
            // Server proxy: the request's host, and the mount prefix it used.
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(String::from)
                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                .unwrap_or_default();
            let via = proxy.then(|| crate::service::ViaServer {
                host: &host,
                prefix: if full.starts_with("/v1/") { "/v1" } else { "" },
            });
            Ok(json(StatusCode::OK, &svc.endpoint(id, port, via).await?))
        }
        (&Method::GET, ["sandboxes", id, "diagnostics", kind @ ("logs" | "events")]) => {
            diagnostics(svc, id, kind, req.uri().query()).await
        }
        (&Method::POST, ["sandboxes", id, "snapshots"]) => {
            let id = id.to_string();
            // The body is optional.
            let body: crate::model::CreateSnapshotRequest =
                if hyper::body::Body::is_end_stream(req.body()) {
                    crate::model::CreateSnapshotRequest::default()
                } else {
                    read_json(req).await?
                };
            let snap = svc.create_snapshot(&id, body).await?;
            let mut r = json(StatusCode::ACCEPTED, &snap);
            if let Ok(v) = HeaderValue::from_str(&format!("/v1/snapshots/{}", snap.id)) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            Ok(r)
        }
        (&Method::GET, ["snapshots"]) => {
            let q = list_query(req.uri().query())?;
            let given = pairs(req.uri().query());
            let param = |name: &str| {
                given
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            let q = crate::snapshots::SnapshotQuery {
                sandbox_id: param("sandboxId"),
                name: param("name"),
                states: q.states,
                page: q.page,
                page_size: q.page_size,
            };
            Ok(json(StatusCode::OK, &svc.list_snapshots(&q)?))
        }
        (&Method::GET, ["snapshots", id]) => Ok(json(StatusCode::OK, &svc.get_snapshot(id)?)),
        (&Method::DELETE, ["snapshots", id]) => {
            svc.delete_snapshot(id).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        // The SDK's fire-and-forget create metric.
        (&Method::POST, ["metrics", "events"]) => Ok(empty(StatusCode::NO_CONTENT)),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "GENERAL::NOT_FOUND",
            format!("No route for {method} {full}."),
        )),
    }
}

async fn diagnostics(svc: &Service, id: &str, kind: &str, query: Option<&str>) -> Reply {
    let q = pairs(query);
    let scope = q
        .iter()
        .find(|(k, _)| k == "scope")
        .map_or("all", |(_, v)| v.as_str())
        .to_string();
    let (content, truncated, supported) = if kind == "logs" {
        let tail = 100;
        let text = svc.logs(id, tail + 1).await?;
        let lines: Vec<&str> = text.lines().collect();
        let truncated = lines.len() > tail;
        let keep = &lines[lines.len().saturating_sub(tail)..];
        (keep.join("\n"), truncated, ["container", "all"])
    } else {
        let events = svc.events(id).await?;
        let truncated = events.len() > 50;
        let text = events
            .iter()
            .take(50)
            .map(|t| {
                format!(
                    "{} {} {} {}",
                    crate::model::format_time(crate::model::from_millis(t.at_ms)),
                    t.state,
                    t.reason.as_deref().unwrap_or("-"),
                    t.message.as_deref().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        (text, truncated, ["runtime", "all"])
    };
    if !supported.contains(&scope.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "DIAGNOSTICS_SCOPE_UNSUPPORTED",
            format!(
                "Unsupported {kind} diagnostics scope '{scope}'. Supported scopes: {}.",
                supported.join(", ")
            ),
        ));
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "sandboxId": id,
            "kind": kind,
            "scope": scope,
            "delivery": "inline",
            "contentType": "text/plain; charset=utf-8",
            "content": content,
            "contentLength": content.len(),
            "truncated": truncated,
        }),
    ))
}

/// Decoded query pairs.
fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn list_query(query: Option<&str>) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery {
        page: 1,
        page_size: 20,
        ..ListQuery::default()
    };
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "SANDBOX::INVALID_PARAMETER", m);
    for (k, v) in pairs(query) {
        match k.as_str() {
            "state" => q.states.push(v),
            "metadata" => {
                for seg in v.split('&').filter(|s| !s.is_empty()) {
                    let Some((mk, mv)) = seg.split_once('=') else {
                        return Err(ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "INVALID_METADATA_FORMAT",
                            format!("Invalid metadata format: bad query field: {seg:?}"),
                        ));
                    };
                    let dec = |s: &str| {
                        form_urlencoded::parse(format!("x={s}").as_bytes())
                            .next()
                            .map(|(_, v)| v.into_owned())
                            .unwrap_or_default()
                    };
                    q.metadata.push((dec(mk), dec(mv)));
                }
            }
            "page" => {
                q.page = v
                    .parse()
                    .ok()
                    .filter(|p| *p >= 1)
                    .ok_or_else(|| bad(format!("page must be an integer >= 1, got {v:?}")))?;
            }
            "pageSize" => {
                q.page_size = v
                    .parse()
                    .ok()
                    .filter(|p| (1..=MAX_PAGE_SIZE).contains(p))
                    .ok_or_else(|| {
                        bad(format!(
                            "pageSize must be an integer from 1 to {MAX_PAGE_SIZE}, got {v:?}"
                        ))
                    })?;
            }
            _ => {}
        }
    }
    Ok(q)
}

async fn read_json<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "SANDBOX::INVALID_PARAMETER",
                format!("cannot read the request body (at most {MAX_BODY} bytes): {e}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "SANDBOX::INVALID_PARAMETER",
            format!("invalid request body: {e}"),
        )
    })
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}
