//! Header rewriting: hop-by-hop headers are dropped in both directions
//! (RFC 9110 §7.6.1), the forwarding headers are set, and execd's own
//! access token stays with execd.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Extensions;

/// execd's access-token header, never passed on to sandbox services.
const ACCESS_TOKEN: &str = "x-execd-access-token";
const KEEP_ALIVE: &str = "keep-alive";
const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_REAL_IP: &str = "x-real-ip";

/// Whether any `name` header holds `token` in its comma-separated list.
fn has_token(h: &HeaderMap, name: HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The protocol a message asks to switch to: its `Upgrade` header, when
/// `Connection` lists `upgrade` (upstream also takes a bare
/// `Upgrade: websocket`).
pub(super) fn upgrade_type(h: &HeaderMap) -> Option<HeaderValue> {
    let up = h.get(header::UPGRADE)?;
    if up.is_empty() {
        return None;
    }
    (has_token(h, header::CONNECTION, "upgrade")
        || up.as_bytes().eq_ignore_ascii_case(b"websocket"))
    .then(|| up.clone())
}

/// Removes the hop-by-hop headers: `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-*`, `TE`, `Transfer-Encoding` and `Upgrade`.
/// `Trailer` is end-to-end (RFC 9110 §6.6.2) and is kept: hyper only passes
/// trailer fields on when they are announced.
pub(super) fn strip_hop_by_hop(h: &mut HeaderMap) {
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
        HeaderName::from_static(KEEP_ALIVE),
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

/// An IP address, alone or with a port.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// The client's IP as upstream takes it: the first `X-Forwarded-For`
/// element, else `X-Real-IP`, else the peer address (a [`SocketAddr`] in the
/// request's extensions, when the server records it). Values that are not IP
/// addresses are skipped.
pub(super) fn client_ip(h: &HeaderMap, ext: &Extensions) -> Option<IpAddr> {
    let first = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(parse_ip)
    };
    first(X_FORWARDED_FOR)
        .or_else(|| first(X_REAL_IP))
        .or_else(|| ext.get::<SocketAddr>().map(SocketAddr::ip))
}

/// The headers sent to the backend on `port`, from the client's.
/// `upgrade` is the protocol the client asks to switch to; `keep_token`
/// keeps execd's access token (when the backend is execd itself).
pub(super) fn request_headers(
    mut h: HeaderMap,
    ext: &Extensions,
    port: u16,
    upgrade: Option<&HeaderValue>,
    keep_token: bool,
) -> HeaderMap {
    let ip = client_ip(&h, ext);
    let te_trailers = has_token(&h, header::TE, "trailers");
    strip_hop_by_hop(&mut h);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(up) = upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, up.clone());
    }
    // hyper answered any `Expect: 100-continue` already, to the client.
    h.remove(header::EXPECT);
    if !keep_token {
        h.remove(ACCESS_TOKEN);
    }
    h.remove(X_FORWARDED_HOST);
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    match ip.and_then(|ip| HeaderValue::from_str(&ip.to_string()).ok()) {
        Some(v) => {
            h.insert(X_FORWARDED_FOR, v);
        }
        None => {
            h.remove(X_FORWARDED_FOR);
        }
    }
    if let Ok(host) = HeaderValue::from_str(&format!("127.0.0.1:{port}")) {
        h.insert(header::HOST, host);
    }
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut v: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Foo"),
            ("connection", "x-bar"),
            ("x-foo", "1"),
            ("x-bar", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "x"),
            ("proxy-connection", "x"),
            ("te", "gzip"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-keep", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["trailer", "x-keep"]);
    }

    #[test]
    fn forwarding_headers() {
        let ext = Extensions::new();
        let h = request_headers(
            map(&[
                ("x-forwarded-for", "10.0.0.1, 10.0.0.2"),
                ("x-forwarded-host", "evil"),
                ("x-execd-access-token", "s3cret"),
                ("host", "example.com"),
                ("te", "trailers, deflate"),
                ("expect", "100-continue"),
            ]),
            &ext,
            8080,
            None,
            false,
        );
        assert_eq!(
            names(&h),
            ["host", "te", "x-forwarded-for", "x-forwarded-proto"]
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["host"], "127.0.0.1:8080");
        assert_eq!(h["te"], "trailers");

        let h = request_headers(
            map(&[("x-execd-access-token", "s3cret")]),
            &ext,
            1,
            None,
            true,
        );
        assert_eq!(h["x-execd-access-token"], "s3cret");
    }

    #[test]
    fn client_ip_order() {
        let mut ext = Extensions::new();
        let h = |p: &[(&str, &str)]| map(p);
        assert_eq!(client_ip(&h(&[]), &ext), None);
        ext.insert(SocketAddr::from(([192, 168, 1, 9], 4000)));
        let peer = Some(IpAddr::from([192, 168, 1, 9]));
        assert_eq!(client_ip(&h(&[]), &ext), peer);
        assert_eq!(
            client_ip(&h(&[("x-real-ip", "1.2.3.4")]), &ext),
            Some(IpAddr::from([1, 2, 3, 4]))
        );
        assert_eq!(
            client_ip(
                &h(&[
                    ("x-real-ip", "1.2.3.4"),
                    ("x-forwarded-for", " ::1 , 5.6.7.8")
                ]),
                &ext
            ),
            "::1".parse().ok()
        );
        assert_eq!(client_ip(&h(&[("x-forwarded-for", "junk")]), &ext), peer);
    }

    #[test]
    fn upgrades() {
        let up = |p: &[(&str, &str)]| upgrade_type(&map(p));
        assert_eq!(
            up(&[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "websocket")
            ])
            .unwrap(),
            "websocket"
        );
        assert_eq!(up(&[("upgrade", "WebSocket")]).unwrap(), "WebSocket");
        assert_eq!(up(&[("upgrade", "h2c")]), None);
        assert_eq!(
            up(&[("connection", "upgrade"), ("upgrade", "h2c")]).unwrap(),
            "h2c"
        );
        assert_eq!(up(&[("connection", "upgrade")]), None);
    }
}
