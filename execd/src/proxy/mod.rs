//! `/proxy/{port}/{rest}`: the reverse proxy to services listening on
//! `127.0.0.1:{port}` inside the sandbox.
//!
//! - [`target`]: the port and the backend path taken from the request path;
//! - [`headers`]: what is added to, and removed from, the forwarded headers;
//! - [`client`]: the pooled backend client;
//! - [`tunnel`]: protocol upgrades (WebSocket), joined byte for byte.
//!
//! Bodies stream in both directions: each chunk is passed on as it arrives,
//! and dropping the client's response drops the backend's body with it,
//! which closes the backend connection.

mod client;
mod headers;
mod target;
mod tunnel;

pub use client::register_own_port;

use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::api::body::Body;
use crate::api::error::ApiError;
use target::{Target, TargetError};

/// Forwards `req` (whose path is `/proxy` or starts with `/proxy/`) to the
/// local port it names, and returns the backend's response.
///
/// Errors: a missing port is `400 "port is required"` (upstream's text), an
/// invalid one `400 INVALID_REQUEST_BODY`, an unreachable or failing backend
/// `502 "Bad Gateway"`.
pub async fn forward(req: Request<Incoming>) -> Response<Body> {
    let target = match Target::parse(req.uri()) {
        Ok(t) => t,
        Err(TargetError::NotFound) => return not_found(),
        Err(TargetError::MissingPort) => {
            return plain_error(StatusCode::BAD_REQUEST, "port is required")
        }
        Err(TargetError::InvalidPort(raw)) => {
            return ApiError::bad_request(format!("invalid port '{raw}'")).into_response()
        }
        Err(TargetError::BadPath(e)) => {
            return ApiError::bad_request(format!("invalid proxy path: {e}")).into_response()
        }
    };
    let span = tracing::debug_span!("proxy", port = target.port, method = %req.method());
    proxy(req, target).instrument(span).await
}

async fn proxy(mut req: Request<Incoming>, target: Target) -> Response<Body> {
    let upgrade = headers::upgrade_type(req.headers());
    // Taken before the request is taken apart: the client's half of a tunnel.
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let keep_token = client::is_own_port(target.port);

    let (parts, body) = req.into_parts();
    let mut out = Request::new(body);
    *out.method_mut() = parts.method.clone();
    *out.uri_mut() = target.uri.clone();
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = headers::request_headers(
        parts.headers,
        &parts.extensions,
        target.port,
        upgrade.as_ref(),
        keep_token,
    );

    tracing::debug!(uri = %target.uri, upgrade = ?upgrade, "forwarding");
    let mut resp = match client::get().request(out).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(port = target.port, error = %ErrorChain(&e), "backend request failed");
            return bad_gateway();
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let backend_type = headers::upgrade_type(resp.headers());
        let (Some(want), Some(client_upgrade)) = (upgrade, client_upgrade) else {
            tracing::warn!("backend switched protocols without being asked");
            return bad_gateway();
        };
        let Some(got) = backend_type.filter(|g| g.as_bytes().eq_ignore_ascii_case(want.as_bytes()))
        else {
            tracing::warn!(requested = ?want, "backend switched to another protocol");
            return bad_gateway();
        };
        let backend_upgrade = hyper::upgrade::on(&mut resp);
        tunnel::spawn(client_upgrade, backend_upgrade, target.port);
        let (mut parts, _) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        parts.headers.insert(header::UPGRADE, got);
        return Response::from_parts(parts, Body::empty());
    }

    tracing::debug!(status = resp.status().as_u16(), "backend responded");
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, Body::boxed(body))
}

/// A text/plain error as Go's `http.Error` writes it (the text, a newline).
fn plain_error(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Body::full(format!("{text}\n")));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn bad_gateway() -> Response<Body> {
    plain_error(StatusCode::BAD_GATEWAY, "Bad Gateway")
}

/// Upstream's proxy only takes `/proxy/…`: a bare `/proxy` is an unknown route.
fn not_found() -> Response<Body> {
    let mut r = Response::new(Body::full("404 page not found"));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// Displays an error with its sources (`a: b: c`), hyper's errors being terse.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(e) = src {
            write!(f, ": {e}")?;
            src = e.source();
        }
        Ok(())
    }
}
