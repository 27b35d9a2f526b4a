//! Refusals, kept in a bounded in-memory log (oldest dropped first, counted)
//! and written as structured log lines.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// One refused name or connection.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Event {
    /// Unix milliseconds.
    pub timestamp: u64,
    /// `dns` (a refused lookup) or `connect` (a dropped connection).
    pub kind: &'static str,
    /// The name looked up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The destination address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The destination port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The deciding rule's target, or `defaultAction`.
    pub rule: String,
}

/// The bounded log.
#[derive(Debug)]
pub struct Events {
    webhook: std::sync::OnceLock<tokio::sync::mpsc::Sender<String>>,
    max: usize,
    inner: Mutex<(VecDeque<Event>, u64)>,
}

/// The JSON of `GET /events`.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// Events, oldest first.
    pub events: Vec<Event>,
    /// Events dropped because the log was full.
    pub dropped: u64,
}

impl Events {
    /// A log keeping at most `max` events.
    pub fn new(max: usize) -> Self {
        Self {
            webhook: std::sync::OnceLock::new(),
            max: max.max(1),
            inner: Mutex::new((VecDeque::new(), 0)),
        }
    }

    /// Also sends every refused name to the deny webhook's queue.
    pub fn set_webhook(&self, queue: tokio::sync::mpsc::Sender<String>) {
        let _ = self.webhook.set(queue);
    }

    /// Records a refused DNS lookup.
    pub fn dns_refused(&self, domain: &str, rule: Option<&str>) {
        crate::metrics::METRICS
            .denied
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rule = rule.unwrap_or("defaultAction").to_string();
        tracing::info!(event = "egress.denied", kind = "dns", domain, rule = %rule, "name refused");
        if let Some(q) = self.webhook.get() {
            if q.try_send(domain.to_string()).is_err() {
                tracing::warn!(domain, "deny webhook queue full; dropping the event");
            }
        }
        self.push(Event {
            timestamp: now_ms(),
            kind: "dns",
            domain: Some(domain.to_string()),
            ip: None,
            port: None,
            rule,
        });
    }

    /// Records a dropped connection attempt to `ip`, which egress last saw
    /// as an address of `domain` when it knows one.
    pub fn connect_refused(
        &self,
        ip: std::net::IpAddr,
        port: Option<u16>,
        domain: Option<String>,
        rule: String,
    ) {
        tracing::info!(event = "egress.denied", kind = "connect", %ip, port, domain, rule = %rule, "connection refused");
        self.push(Event {
            timestamp: now_ms(),
            kind: "connect",
            domain,
            ip: Some(ip.to_string()),
            port,
            rule,
        });
    }

    fn push(&self, e: Event) {
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.0.len() >= self.max {
            g.0.pop_front();
            g.1 += 1;
        }
        g.0.push_back(e);
    }

    /// A copy of the log.
    pub fn snapshot(&self) -> Snapshot {
        let g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Snapshot {
            events: g.0.iter().cloned().collect(),
            dropped: g.1,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_with_drop_count() {
        let e = Events::new(2);
        for d in ["a", "b", "c"] {
            e.dns_refused(d, None);
        }
        let s = e.snapshot();
        assert_eq!(s.dropped, 1);
        let names: Vec<_> = s.events.iter().map(|e| e.domain.clone().unwrap()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(s.events[0].rule, "defaultAction");
    }
}
