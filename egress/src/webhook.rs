//! The denied-hostname webhook (`OPENSANDBOX_EGRESS_DENY_WEBHOOK`, http or
//! https with rustls), as
//! upstream: one POST per refused name, JSON
//! `{"hostname","timestamp","source":"opensandbox-egress","sandboxId"}`,
//! 5 s per attempt, retried after 1, 2 and 4 s on 5xx or network errors;
//! a bounded queue (256) that drops (with a warning) rather than blocks DNS.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::mpsc;

/// Refusals waiting to be posted, at most.
pub const QUEUE: usize = 256;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF: [u64; 3] = [1, 2, 4];

/// An `http(s)://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    host: String,
    port: u16,
    path: String,
    tls: bool,
}

/// Parses the webhook URL (`http://` or `https://`).
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (rest, tls) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (r, false),
        (_, Some(r)) => (r, true),
        _ => {
            return Err(format!(
                "{url:?}: the webhook URL must start with http:// or https://"
            ))
        }
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
            h.trim_matches(['[', ']']).to_string(),
            p.parse().map_err(|_| format!("{url:?}: bad port"))?,
        ),
        _ => (
            authority.trim_matches(['[', ']']).to_string(),
            if tls { 443 } else { 80 },
        ),
    };
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    Ok(Target {
        host,
        port,
        path,
        tls,
    })
}

/// The TLS client configuration for an https webhook: the Mozilla roots
/// (webpki-roots), plus the PEM certificates in `extra_ca` if given
/// (`OPENSANDBOX_EGRESS_DENY_WEBHOOK_CA`).
pub fn tls_config(extra_ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca {
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        for c in certs {
            roots
                .add(c.map_err(|e| format!("{}: {e}", path.display()))?)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Serialize)]
struct Body<'a> {
    hostname: &'a str,
    timestamp: String,
    source: &'a str,
    #[serde(rename = "sandboxId")]
    sandbox_id: &'a str,
}

/// RFC 3339 UTC with seconds: `2026-06-25T02:06:04Z`.
fn rfc3339_seconds(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Starts the worker; returns the queue to send refused hostnames to.
pub fn start(
    target: Target,
    sandbox_id: String,
    tls: Arc<rustls::ClientConfig>,
) -> mpsc::Sender<String> {
    let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
    tokio::spawn(async move {
        while let Some(hostname) = rx.recv().await {
            let body = serde_json::to_vec(&Body {
                hostname: &hostname,
                timestamp: rfc3339_seconds(SystemTime::now()),
                source: "opensandbox-egress",
                sandbox_id: &sandbox_id,
            })
            .unwrap_or_default();
            for attempt in 0..=BACKOFF.len() {
                match tokio::time::timeout(ATTEMPT_TIMEOUT, post(&target, &body, &tls)).await {
                    Ok(Ok(status)) if (200..300).contains(&status) => break,
                    Ok(Ok(status)) if status < 500 => {
                        tracing::warn!(status, %hostname, "deny webhook refused the event");
                        break;
                    }
                    outcome => {
                        let why = match outcome {
                            Ok(Ok(status)) => format!("status {status}"),
                            Ok(Err(e)) => e,
                            Err(_) => "timeout".into(),
                        };
                        match BACKOFF.get(attempt) {
                            Some(s) => tokio::time::sleep(Duration::from_secs(*s)).await,
                            None => {
                                tracing::warn!(error = %why, %hostname, "deny webhook failed; event dropped")
                            }
                        }
                    }
                }
            }
        }
    });
    tx
}

/// POSTs a JSON `body` to `t` (over TLS for https) and returns the status.
pub(crate) async fn post(
    t: &Target,
    body: &[u8],
    tls: &Arc<rustls::ClientConfig>,
) -> Result<u16, String> {
    let mut last = format!("{}: no address", t.host);
    let mut connected = None;
    for addr in tokio::net::lookup_host((t.host.as_str(), t.port))
        .await
        .map_err(|e| e.to_string())?
    {
        match crate::nft::own::connect(addr).await {
            Ok(s) => {
                connected = Some(s);
                break;
            }
            Err(e) => last = e.to_string(),
        }
    }
    let stream = connected.ok_or(last)?;
    if !t.tls {
        return send_over(TokioIo::new(stream), t, body).await;
    }
    let name =
        rustls::pki_types::ServerName::try_from(t.host.clone()).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, stream)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    send_over(TokioIo::new(stream), t, body).await
}

async fn send_over<I>(io: I, t: &Target, body: &[u8]) -> Result<u16, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::post(&t.path)
        .header(http::header::HOST, &t.host)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: u16, path: &str, tls: bool) -> Target {
        Target {
            host: host.into(),
            port,
            path: path.into(),
            tls,
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://hooks.example:8080/a/b").unwrap(),
            t("hooks.example", 8080, "/a/b", false)
        );
        assert_eq!(
            parse_url("http://10.0.0.1").unwrap(),
            t("10.0.0.1", 80, "/", false)
        );
        assert_eq!(parse_url("https://x/h").unwrap(), t("x", 443, "/h", true));
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://:80/").is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(1_782_353_164)),
            "2026-06-25T02:06:04Z"
        );
    }
}
