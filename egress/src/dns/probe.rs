//! Upstream health probes (always on, as upstream): every upstream is asked
//! `. NS` (or `<name> A`) at start and every interval; the ones that answer
//! at all (even SERVFAIL) are used first, in their configured order; when
//! none answers, all are tried.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};

/// Longest wait for a probe answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The probe query for `name` (`.` means `. NS`).
pub fn probe_query(name: &str) -> Option<Vec<u8>> {
    let (qname, qtype) = if name == "." {
        (Name::root(), RecordType::NS)
    } else {
        (Name::from_ascii(name).ok()?, RecordType::A)
    };
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(qname, qtype));
    m.to_vec().ok()
}

/// Probes `all` and returns the healthy ones in order (or all if none is).
pub async fn healthy(all: &[SocketAddr], query: &[u8], timeout: Duration) -> Vec<SocketAddr> {
    let timeout = timeout.min(PROBE_TIMEOUT);
    let checks = all.iter().map(|up| {
        let up = *up;
        let q = query.to_vec();
        tokio::spawn(async move { super::forward::udp(up, &q, timeout).await.is_some() })
    });
    let mut ok = Vec::new();
    for (up, check) in all.iter().zip(checks.collect::<Vec<_>>()) {
        if check.await.unwrap_or(false) {
            ok.push(*up);
        } else {
            tracing::error!(upstream = %up, "[dns] upstream probe failed");
        }
    }
    if ok.is_empty() {
        all.to_vec()
    } else {
        ok
    }
}

/// Keeps `active` up to date every `every`.
pub fn start(
    all: Vec<SocketAddr>,
    active: Arc<RwLock<Vec<SocketAddr>>>,
    name: String,
    every: Duration,
    timeout: Duration,
) {
    let Some(query) = probe_query(&name) else {
        tracing::warn!(name, "invalid probe name; upstreams are not probed");
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let now = healthy(&all, &query, timeout).await;
            *active
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = now;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_queries() {
        let m = Message::from_vec(&probe_query(".").unwrap()).unwrap();
        assert_eq!(m.queries[0].query_type(), RecordType::NS);
        assert!(m.queries[0].name().is_root());
        let m = Message::from_vec(&probe_query("example.com").unwrap()).unwrap();
        assert_eq!(m.queries[0].query_type(), RecordType::A);
    }
}
