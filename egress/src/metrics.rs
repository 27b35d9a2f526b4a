//! Metrics as upstream exports them (OTel meter `opensandbox/egress`,
//! service `opensandbox-egress-<version>`), pushed as OTLP/HTTP JSON to the
//! endpoint upstream would use: `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, else
//! `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/metrics`, else `HOST_IP` or the first
//! address in `/etc/hostinfo` on port 4318. No endpoint, no export.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Counters, shared by the parts that count.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Refused names (`egress.policy.denied_total`).
    pub denied: AtomicU64,
    /// Forwarded queries and their total duration in nanoseconds (`egress.dns.query.duration`).
    pub queries: AtomicU64,
    /// Sum of forwarded query durations, nanoseconds.
    pub query_nanos: AtomicU64,
    /// Successful nftables updates (`egress.nftables.updates.count`).
    pub nft_updates: AtomicU64,
    /// Rules in the last applied policy (`egress.nftables.rules.count`).
    pub rules: AtomicU64,
}

/// The process-wide counters.
pub static METRICS: Metrics = Metrics {
    denied: AtomicU64::new(0),
    queries: AtomicU64::new(0),
    query_nanos: AtomicU64::new(0),
    nft_updates: AtomicU64::new(0),
    rules: AtomicU64::new(0),
};

impl Metrics {
    /// Records one forwarded query.
    pub fn query(&self, took: Duration) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.query_nanos.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// Where metrics go, from the environment (as upstream resolves it).
pub fn endpoint(env: impl Fn(&str) -> Option<String>, hostinfo: Option<String>) -> Option<String> {
    let get = |k: &str| {
        env(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if let Some(e) = get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
        return Some(e);
    }
    if let Some(e) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
        return Some(format!("{}/v1/metrics", e.trim_end_matches('/')));
    }
    let host = get("HOST_IP").or_else(|| {
        hostinfo?
            .lines()
            .map(str::trim)
            .find(|l| l.parse::<std::net::IpAddr>().is_ok())
            .map(String::from)
    })?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Some(format!("http://{host}:4318/v1/metrics"))
}

/// `k=v,k2=v2` attributes (`OPENSANDBOX_EGRESS_METRICS_EXTRA_ATTRS`).
pub fn parse_attrs(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

fn kv(attrs: &[(String, String)]) -> Vec<Value> {
    attrs
        .iter()
        .map(|(k, v)| json!({"key": k, "value": {"stringValue": v}}))
        .collect()
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .map_or(0, |kib| kib * 1024)
}

/// The OTLP/HTTP JSON document for the current values.
pub fn document(attrs: &[(String, String)], start_ns: u64, now_ns: u64) -> Value {
    let m = &METRICS;
    let a = kv(attrs);
    let sum = |name: &str, unit: &str, v: u64| {
        json!({"name": name, "unit": unit, "sum": {"aggregationTemporality": 2, "isMonotonic": true,
            "dataPoints": [{"attributes": a, "startTimeUnixNano": start_ns.to_string(), "timeUnixNano": now_ns.to_string(), "asInt": v.to_string()}]}})
    };
    let gauge = |name: &str, unit: &str, v: u64| json!({"name": name, "unit": unit, "gauge": {"dataPoints": [{"attributes": a, "timeUnixNano": now_ns.to_string(), "asInt": v.to_string()}]}});
    let queries = m.queries.load(Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss)]
    let seconds = m.query_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    let mut resource = vec![
        json!({"key": "service.name", "value": {"stringValue": format!("opensandbox-egress-{}", env!("CARGO_PKG_VERSION"))}}),
    ];
    resource.extend(kv(attrs));
    json!({"resourceMetrics": [{
        "resource": {"attributes": resource},
        "scopeMetrics": [{
            "scope": {"name": "opensandbox/egress"},
            "metrics": [
                sum("egress.policy.denied_total", "1", m.denied.load(Ordering::Relaxed)),
                sum("egress.nftables.updates.count", "1", m.nft_updates.load(Ordering::Relaxed)),
                gauge("egress.nftables.rules.count", "{element}", m.rules.load(Ordering::Relaxed)),
                gauge("egress.system.memory.usage_bytes", "By", rss_bytes()),
                {"name": "egress.dns.query.duration", "unit": "s", "histogram": {"aggregationTemporality": 2,
                    "dataPoints": [{"attributes": a, "startTimeUnixNano": start_ns.to_string(), "timeUnixNano": now_ns.to_string(),
                        "count": queries.to_string(), "sum": seconds}]}},
            ]
        }]
    }]})
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Pushes the metrics to `url` every `every` (`OTEL_METRIC_EXPORT_INTERVAL`).
pub fn start(
    url: &str,
    attrs: Vec<(String, String)>,
    every: Duration,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(), String> {
    let target = crate::webhook::parse_url(url)?;
    let start_ns = now_ns();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let body =
                serde_json::to_vec(&document(&attrs, start_ns, now_ns())).unwrap_or_default();
            match tokio::time::timeout(
                Duration::from_secs(10),
                crate::webhook::post(&target, &body, &tls),
            )
            .await
            {
                Ok(Ok(s)) if (200..300).contains(&s) => {}
                Ok(Ok(s)) => tracing::warn!(status = s, "metrics export refused"),
                Ok(Err(e)) => tracing::warn!(error = %e, "metrics export failed"),
                Err(_) => tracing::warn!("metrics export timed out"),
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ep(pairs: &[(&str, &str)], hostinfo: Option<&str>) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        endpoint(|k| m.get(k).cloned(), hostinfo.map(String::from))
    }

    #[test]
    fn endpoint_precedence() {
        assert_eq!(
            ep(
                &[
                    ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://a/m"),
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://b")
                ],
                None
            )
            .as_deref(),
            Some("http://a/m")
        );
        assert_eq!(
            ep(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://b:4318/")], None).as_deref(),
            Some("http://b:4318/v1/metrics")
        );
        assert_eq!(
            ep(&[("HOST_IP", "10.0.0.9")], Some("10.0.0.1\n")).as_deref(),
            Some("http://10.0.0.9:4318/v1/metrics")
        );
        assert_eq!(
            ep(&[], Some("# host\n10.0.0.1\n")).as_deref(),
            Some("http://10.0.0.1:4318/v1/metrics")
        );
        assert_eq!(ep(&[], None), None);
    }

    #[test]
    fn attrs_and_document() {
        let attrs = parse_attrs("team=a, env = prod,bad");
        assert_eq!(
            attrs,
            vec![("team".into(), "a".into()), ("env".into(), "prod".into())]
        );
        let d = document(&attrs, 1, 2);
        let names: Vec<&str> = d["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"egress.policy.denied_total")
                && names.contains(&"egress.dns.query.duration")
        );
        assert_eq!(
            d["resourceMetrics"][0]["scopeMetrics"][0]["scope"]["name"],
            "opensandbox/egress"
        );
    }
}
