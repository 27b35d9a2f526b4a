//! The server proxy: `ANY [/v1]/sandboxes/{id}/proxy/{port}[/{path...}]`
//! forwarded to the sandbox, for clients that cannot reach its published
//! ports (the SDK's `use_server_proxy`). No API key is asked for (as
//! upstream); paths holding `..` are refused.
//!
//! The backend is the sandbox's published execd port with
//! `/proxy/{port}/{path}` (execd forwards inside the sandbox's network
//! namespace), or the published 8080 port itself (see
//! [`Service::proxy_target`]). Bodies stream both ways, chunk by chunk;
//! WebSocket (any HTTP/1.1 upgrade) is tunnelled: once the backend answers
//! 101, both connections are upgraded and joined byte for byte.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::Instrument;

use super::error::ApiError;
use crate::service::{ProxyTarget, Service};

/// Body of every answer: a whole one, or a backend's, streamed.
pub(super) type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// Time allowed to connect to a backend. There is no overall timeout: event
/// streams and tunnels live as long as both ends want.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle pooled backend connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per backend, at most.
const MAX_IDLE_PER_BACKEND: usize = 16;

/// Headers never passed on to a sandbox: the caller's credentials.
const CREDENTIALS: [&str; 3] = ["authorization", "cookie", "open-sandbox-api-key"];

/// A whole body.
pub(super) fn full(body: Full<Bytes>) -> Body {
    body.map_err(|never| match never {}).boxed_unsync()
}

/// A proxy request path, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ProxyPath {
    /// The sandbox id.
    pub id: String,
    /// The port segment as sent (digits only).
    pub port: String,
    /// The rest of the path, still encoded: empty or starting with `/`.
    pub rest: String,
}

impl ProxyPath {
    /// Matches `^(/v1)?/sandboxes/[^/]+/proxy/\d+(/|$)` (upstream's
    /// auth-exempt pattern); `None` for any other path.
    pub fn parse(path: &str) -> Option<Self> {
        let p = path.strip_prefix("/v1").unwrap_or(path);
        let p = p.strip_prefix("/sandboxes/")?;
        let (id, p) = p.split_once('/')?;
        let p = p.strip_prefix("proxy/")?;
        let (port, rest) = match p.find('/') {
            Some(i) => p.split_at(i),
            None => (p, ""),
        };
        (!id.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())).then(
            || Self {
                id: id.to_string(),
                port: port.to_string(),
                rest: rest.to_string(),
            },
        )
    }
}

/// Whether `path`, percent-decoded, holds `..` anywhere (as upstream checks).
fn has_dot_dot(path: &str) -> bool {
    let b = path.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                decoded.push(u8::try_from(h * 16 + l).unwrap_or(0));
                i += 3;
                continue;
            }
        }
        decoded.push(b[i]);
        i += 1;
    }
    decoded.windows(2).any(|w| w == b"..")
}

/// Answers a request whose path matched [`ProxyPath::parse`].
pub(super) async fn handle(
    svc: &Service,
    req: Request<Incoming>,
    path: ProxyPath,
) -> Response<Body> {
    match resolve(svc, req.uri(), &path).await {
        Ok(backend) => {
            let span = tracing::info_span!("proxy", sandbox = %path.id, port = %path.port);
            forward(req, backend, &path.id).instrument(span).await
        }
        Err(e) => e.into_response().map(full),
    }
}

async fn resolve(svc: &Service, uri: &Uri, path: &ProxyPath) -> Result<Backend, ApiError> {
    if has_dot_dot(uri.path()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "SANDBOX::INVALID_PARAMETER",
            "Proxy paths must not contain '..'.",
        ));
    }
    let port: u16 = path.port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "DOCKER::INVALID_PORT",
            format!("invalid port {:?}: 1 to 65535", path.port),
        )
    })?;
    let target = svc.proxy_target(&path.id, port).await?;
    Ok(Backend::new(&target, &path.rest, uri.query()))
}

/// Where one request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Backend {
    /// `host:port` to connect to (also the `Host` sent).
    pub authority: String,
    /// `http://{authority}{path}?{query}`.
    pub uri: String,
}

impl Backend {
    /// The backend for `rest` (encoded, empty or starting with `/`) and
    /// `query` on `target`.
    pub fn new(target: &ProxyTarget, rest: &str, query: Option<&str>) -> Self {
        let mut path = format!("{}{rest}", target.path_prefix);
        if path.is_empty() {
            path.push('/');
        }
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            path.push('?');
            path.push_str(q);
        }
        Self {
            authority: target.authority.clone(),
            uri: format!("http://{}{path}", target.authority),
        }
    }
}

/// The process-wide pooled backend client.
fn client() -> &'static Client<HttpConnector, Incoming> {
    static CLIENT: OnceLock<Client<HttpConnector, Incoming>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE_PER_BACKEND)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // Host is set here, to the backend.
            .set_host(false)
            .build(connector)
    })
}

/// Forwards `req` to `backend` and answers with the backend's response
/// (streamed), a tunnel, or a 502. `id` names the sandbox in errors.
pub(super) async fn forward(
    mut req: Request<Incoming>,
    backend: Backend,
    id: &str,
) -> Response<Body> {
    let upgrade = upgrade_type(req.headers());
    // The client's half of a tunnel, taken before the request is taken apart.
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let peer = parts.extensions.get::<SocketAddr>().map(SocketAddr::ip);
    let uri = match backend.uri.parse::<Uri>() {
        Ok(u) => u,
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "SANDBOX::INVALID_PARAMETER",
                format!("invalid proxy path: {e}"),
            )
            .into_response()
            .map(full)
        }
    };
    let mut out = Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = request_headers(parts.headers, peer, &backend.authority, upgrade.as_ref());

    tracing::debug!(uri = %backend.uri, upgrade = ?upgrade, "forwarding");
    let mut resp = match client().request(out).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(backend = %backend.authority, error = %ErrorChain(&e), "backend request failed");
            return bad_gateway(id, &backend, &ErrorChain(&e).to_string());
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let got = upgrade_type(resp.headers());
        let (Some(want), Some(client_upgrade)) = (upgrade, client_upgrade) else {
            return bad_gateway(id, &backend, "the backend switched protocols unasked");
        };
        let Some(got) = got.filter(|g| g.as_bytes().eq_ignore_ascii_case(want.as_bytes())) else {
            return bad_gateway(id, &backend, "the backend switched to another protocol");
        };
        let backend_upgrade = hyper::upgrade::on(&mut resp);
        tunnel(client_upgrade, backend_upgrade);
        let (mut parts, _) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        parts.headers.insert(header::UPGRADE, got);
        return Response::from_parts(parts, full(Full::new(Bytes::new())));
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, body.boxed_unsync())
}

/// Joins both sides of an upgraded connection once both upgrades complete
/// (the client's after it has been sent the 101), copying bytes both ways
/// until both directions have ended.
fn tunnel(client: OnUpgrade, backend: OnUpgrade) {
    tokio::spawn(
        async move {
            let (client, backend) = match tokio::try_join!(client, backend) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut backend = TokioIo::new(backend);
            match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                Ok((up, down)) => tracing::debug!(up, down, "tunnel closed"),
                Err(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
            }
        }
        .in_current_span(),
    );
}

fn bad_gateway(id: &str, backend: &Backend, why: &str) -> Response<Body> {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "GENERAL::UNKNOWN_ERROR",
        format!(
            "Could not connect to the backend sandbox {id} ({}): {why}",
            backend.authority
        ),
    )
    .into_response()
    .map(full)
}

/// Whether any `name` header holds `token` in its comma-separated list.
fn has_token(h: &HeaderMap, name: HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The protocol a message asks to switch to: its `Upgrade` header, when
/// `Connection` lists `upgrade` (a bare `Upgrade: websocket` counts too).
fn upgrade_type(h: &HeaderMap) -> Option<HeaderValue> {
    let up = h.get(header::UPGRADE).filter(|v| !v.is_empty())?;
    (has_token(h, header::CONNECTION, "upgrade")
        || up.as_bytes().eq_ignore_ascii_case(b"websocket"))
    .then(|| up.clone())
}

/// Removes the hop-by-hop headers: `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-*`, `TE`, `Transfer-Encoding` and `Upgrade`.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect();
    for name in named {
        h.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
    ] {
        h.remove(name);
    }
    let proxy: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        h.remove(name);
    }
}

/// The headers sent to the backend at `authority`: the client's without
/// hop-by-hop headers and credentials, with `X-Forwarded-For/Proto/Host`
/// set when absent, `Host` the backend's, and the upgrade asked for.
fn request_headers(
    mut h: HeaderMap,
    peer: Option<IpAddr>,
    authority: &str,
    upgrade: Option<&HeaderValue>,
) -> HeaderMap {
    let host = h.get(header::HOST).cloned();
    strip_hop_by_hop(&mut h);
    for name in CREDENTIALS {
        h.remove(name);
    }
    // hyper answered any `Expect: 100-continue` already, to the client.
    h.remove(header::EXPECT);
    if let Some(up) = upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, up.clone());
    }
    if !h.contains_key("x-forwarded-for") {
        if let Some(v) = peer.and_then(|ip| HeaderValue::from_str(&ip.to_string()).ok()) {
            h.insert("x-forwarded-for", v);
        }
    }
    if !h.contains_key("x-forwarded-proto") {
        h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if !h.contains_key("x-forwarded-host") {
        if let Some(v) = host {
            h.insert("x-forwarded-host", v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(authority) {
        h.insert(header::HOST, v);
    }
    h
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::Message;

    fn path(id: &str, port: &str, rest: &str) -> Option<ProxyPath> {
        Some(ProxyPath {
            id: id.into(),
            port: port.into(),
            rest: rest.into(),
        })
    }

    #[test]
    fn proxy_paths() {
        let p = ProxyPath::parse;
        assert_eq!(p("/v1/sandboxes/abc/proxy/8080"), path("abc", "8080", ""));
        assert_eq!(p("/sandboxes/abc/proxy/8080/"), path("abc", "8080", "/"));
        assert_eq!(
            p("/v1/sandboxes/a-b/proxy/44772/x/y%2Fz"),
            path("a-b", "44772", "/x/y%2Fz")
        );
        assert_eq!(p("/v1/sandboxes/a/proxy/99999/x"), path("a", "99999", "/x"));
        for other in [
            "/v1/sandboxes/a/proxy",
            "/v1/sandboxes/a/proxy/",
            "/v1/sandboxes/a/proxy/x1",
            "/v1/sandboxes/a/proxy/80x/y",
            "/v1/sandboxes//proxy/80",
            "/v1/sandboxes/a/b/proxy/80",
            "/v2/sandboxes/a/proxy/80",
            "/v1/sandboxes/a/proxyx/80",
            "/v1/sandboxes/a/endpoints/80",
        ] {
            assert_eq!(p(other), None, "{other}");
        }
    }

    #[test]
    fn dot_dot() {
        assert!(has_dot_dot("/v1/sandboxes/a/proxy/1/../x"));
        assert!(has_dot_dot("/v1/sandboxes/a/proxy/1/%2e%2E/x"));
        assert!(has_dot_dot("/v1/sandboxes/a/proxy/1/.%2e"));
        assert!(has_dot_dot("/v1/sandboxes/a/proxy/1/file..txt"));
        assert!(!has_dot_dot("/v1/sandboxes/a/proxy/1/./x.y%2"));
        assert!(!has_dot_dot("/v1/sandboxes/a/proxy/1/%2"));
    }

    #[test]
    fn backend_uris() {
        let via_execd = ProxyTarget {
            authority: "127.0.0.1:3000".into(),
            path_prefix: "/proxy/9000".into(),
        };
        let direct = ProxyTarget {
            authority: "127.0.0.1:3001".into(),
            path_prefix: String::new(),
        };
        let uri = |t: &ProxyTarget, rest: &str, q: Option<&str>| Backend::new(t, rest, q).uri;
        assert_eq!(
            uri(&via_execd, "/a/b", Some("x=1&y")),
            "http://127.0.0.1:3000/proxy/9000/a/b?x=1&y"
        );
        assert_eq!(
            uri(&via_execd, "", None),
            "http://127.0.0.1:3000/proxy/9000"
        );
        assert_eq!(uri(&direct, "", Some("")), "http://127.0.0.1:3001/");
        assert_eq!(
            uri(&direct, "/p%20q", Some("a")),
            "http://127.0.0.1:3001/p%20q?a"
        );
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("host", "front:8090"),
            ("authorization", "Bearer x"),
            ("cookie", "a=b"),
            ("open-sandbox-api-key", "k"),
            ("opensandbox-egress-auth", "tok"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "p"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("expect", "100-continue"),
            ("x-keep", "1"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = request_headers(h, "10.1.2.3".parse().ok(), "127.0.0.1:5000", None);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "host",
                "opensandbox-egress-auth",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto",
                "x-keep"
            ]
        );
        assert_eq!(out["host"], "127.0.0.1:5000");
        assert_eq!(out["x-forwarded-for"], "10.1.2.3");
        assert_eq!(out["x-forwarded-host"], "front:8090");
        assert_eq!(out["x-forwarded-proto"], "http");

        // Present ones are kept; an upgrade is asked for again.
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_static("outer"));
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        let up = upgrade_type(&h);
        assert_eq!(up.as_ref().unwrap(), "websocket");
        let out = request_headers(h, "10.1.2.3".parse().ok(), "b:1", up.as_ref());
        assert_eq!(out["x-forwarded-for"], "1.1.1.1");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["x-forwarded-host"], "outer");
        assert_eq!(out["connection"], "Upgrade");
        assert_eq!(out["upgrade"], "websocket");
    }

    /// A front server that forwards everything to `backend`; its address.
    async fn front(backend: String) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = listener.accept().await.unwrap();
                let backend = backend.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |mut req: Request<Incoming>| {
                        req.extensions_mut().insert(peer);
                        let target = ProxyTarget {
                            authority: backend.clone(),
                            path_prefix: "/pre".into(),
                        };
                        let b = Backend::new(&target, req.uri().path(), req.uri().query());
                        async move { Ok::<_, std::convert::Infallible>(forward(req, b, "sb").await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        addr
    }

    /// A backend answering with the request line and headers it got, or, for
    /// `/pre/stream`, a body in two chunks half a second apart.
    async fn echo_backend() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = service_fn(|req: Request<Incoming>| async move {
                        if req.uri().path() == "/pre/stream" {
                            let (tx, rx) = tokio::sync::mpsc::channel::<
                                Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
                            >(2);
                            tokio::spawn(async move {
                                let _ = tx.send(Ok(hyper::body::Frame::data("one".into()))).await;
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                let _ = tx.send(Ok(hyper::body::Frame::data("two".into()))).await;
                            });
                            let body = http_body_util::StreamBody::new(tokio_stream_of(rx));
                            return Ok::<_, std::convert::Infallible>(Response::new(
                                body.boxed_unsync(),
                            ));
                        }
                        let mut text = format!("{} {}\n", req.method(), req.uri());
                        for (k, v) in req.headers() {
                            text.push_str(&format!("{k}: {}\n", v.to_str().unwrap()));
                        }
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        text.push_str(&format!("body: {}\n", String::from_utf8_lossy(&body)));
                        let mut r = Response::new(
                            Full::new(Bytes::from(text))
                                .map_err(|never| match never {})
                                .boxed_unsync(),
                        );
                        r.headers_mut()
                            .insert("connection", HeaderValue::from_static("x-secret"));
                        r.headers_mut()
                            .insert("x-secret", HeaderValue::from_static("1"));
                        Ok(r)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr.to_string()
    }

    fn tokio_stream_of<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<Incoming> {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    }

    #[tokio::test]
    async fn forwards_and_streams() {
        let addr = front(echo_backend().await).await;
        let req = Request::post("/a%20b/c?x=1")
            .header("host", "front.test")
            .header("authorization", "Bearer s3cret")
            .header("cookie", "c=1")
            .header("open-sandbox-api-key", "key")
            .header("x-custom", "kept")
            .body(Full::new(Bytes::from("payload")))
            .unwrap();
        let r = send(addr, req).await;
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("x-secret").is_none(), "hop-by-hop kept");
        let text =
            String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(text.starts_with("POST /pre/a%20b/c?x=1\n"), "{text}");
        assert!(text.contains("x-custom: kept\n"), "{text}");
        assert!(text.contains("x-forwarded-host: front.test\n"), "{text}");
        assert!(text.contains("x-forwarded-for: 127.0.0.1\n"), "{text}");
        assert!(text.contains("x-forwarded-proto: http\n"), "{text}");
        assert!(text.contains("body: payload\n"), "{text}");
        for gone in ["authorization", "cookie", "open-sandbox-api-key"] {
            assert!(
                !text.contains(&format!("{gone}:")),
                "{gone} forwarded: {text}"
            );
        }

        // Chunks arrive as the backend sends them.
        let r = send(
            addr,
            Request::get("/stream")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        let mut body = r.into_body();
        let start = std::time::Instant::now();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "one");
        assert!(
            start.elapsed() < Duration::from_millis(400),
            "first chunk held back"
        );
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(second, "two");
    }

    #[tokio::test]
    async fn unreachable_backend_is_a_502() {
        let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = unused.local_addr().unwrap().to_string();
        drop(unused);
        let addr = front(gone).await;
        let r = send(
            addr,
            Request::get("/x").body(Full::new(Bytes::new())).unwrap(),
        )
        .await;
        assert_eq!(r.status(), 502);
        let v: serde_json::Value =
            serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["code"], "GENERAL::UNKNOWN_ERROR");
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.starts_with("Could not connect to the backend sandbox sb"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn tunnels_websockets() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap().to_string();
        let (path_tx, mut path_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            #[allow(clippy::result_large_err)] // tungstenite's callback type
            let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                path_tx.send(req.uri().to_string()).unwrap();
                Ok(resp)
            };
            let mut ws = tokio_tungstenite::accept_hdr_async(stream, cb)
                .await
                .unwrap();
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_text() || msg.is_binary() {
                    ws.send(msg).await.unwrap();
                }
            }
        });
        let addr = front(backend).await;
        let url = format!("ws://{addr}/ws?x=1");
        let (mut ws, resp) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        assert_eq!(resp.status(), 101);
        assert_eq!(path_rx.recv().await.unwrap(), "/pre/ws?x=1");
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
        let big = vec![7u8; 1 << 20];
        ws.send(Message::binary(big.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
        ws.close(None).await.unwrap();
        let mut closed = false;
        while let Some(msg) = ws.next().await {
            if let Ok(Message::Close(_)) = msg {
                closed = true;
            }
        }
        assert!(closed, "no close frame came back");

        // A raw upgrade to a backend that refuses it passes the answer on.
        let addr = front(echo_backend().await).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"GET /x HTTP/1.1\r\nHost: f\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
}
