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
    /// Forwarded queries (the count of `egress.dns.query.duration`).
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

/// Busy and total jiffies of all CPUs, from the `cpu` line of `/proc/stat`.
fn parse_cpu(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let total: u64 = v.iter().sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Host-wide CPU utilization (0 to 1) between two `(busy, total)` samples.
fn utilization(before: (u64, u64), after: (u64, u64)) -> f64 {
    let busy = after.0.saturating_sub(before.0);
    let total = after.1.saturating_sub(before.1);
    if total == 0 {
        return 0.0;
    }
    #[allow(clippy::cast_precision_loss)]
    let u = busy as f64 / total as f64;
    u.clamp(0.0, 1.0)
}

fn cpu_sample() -> Option<(u64, u64)> {
    parse_cpu(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The OTLP/HTTP JSON document for the current values (`cpu`: host-wide
/// utilization since the last export, 0 to 1).
pub fn document(attrs: &[(String, String)], start_ns: u64, now_ns: u64, cpu: f64) -> Value {
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
                {"name": "egress.system.cpu.utilization", "unit": "1", "gauge": {"dataPoints": [{"attributes": a, "timeUnixNano": now_ns.to_string(), "asDouble": cpu}]}},
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
        let mut cpu_before = cpu_sample();
        loop {
            tick.tick().await;
            let cpu_now = cpu_sample();
            let cpu = match (cpu_before, cpu_now) {
                (Some(b), Some(a)) => utilization(b, a),
                _ => 0.0,
            };
            cpu_before = cpu_now;
            let body =
                serde_json::to_vec(&document(&attrs, start_ns, now_ns(), cpu)).unwrap_or_default();
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
        let d = document(&attrs, 1, 2, 0.25);
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
        assert!(names.contains(&"egress.system.cpu.utilization"));
    }

    #[test]
    fn cpu_utilization_from_proc_stat() {
        let before = parse_cpu("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!(before, (200, 1000));
        let after = parse_cpu("cpu  150 0 150 1000 200 0 0 0 0 0\n").unwrap();
        assert_eq!(after, (300, 1500));
        assert!((utilization(before, after) - 0.2).abs() < 1e-9);
        assert!(utilization(after, after).abs() < f64::EPSILON);
        assert_eq!(parse_cpu("intr 1 2\n"), None);
        assert_eq!(parse_cpu("cpu  x y\n"), None);
    }
}
