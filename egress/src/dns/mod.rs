//! The DNS proxy: UDP and TCP on one address (127.0.0.1:15353 by default).
//! A denied name gets NXDOMAIN, as upstream answers it; an allowed query is
//! forwarded verbatim to the upstream resolvers in order and the first
//! NOERROR or NXDOMAIN answer is returned as it is; when all fail the client
//! gets SERVFAIL. Unlike upstream, a query that came over TCP is forwarded
//! over TCP, so large answers resolve (upstream forwarded everything over
//! UDP and handed TCP clients truncated answers).

mod forward;
pub mod probe;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Metadata, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::policy::Action;
use crate::state::State;

/// Largest DNS message over UDP that is read.
const MAX_UDP: usize = 65_535;
/// Time a TCP client may take to send a query.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The proxy's shared settings.
#[derive(Debug)]
pub struct Proxy {
    state: Arc<State>,
    upstreams: Vec<SocketAddr>,
    active: Arc<std::sync::RwLock<Vec<SocketAddr>>>,
    shared: std::collections::HashMap<SocketAddr, Arc<upstream::UdpUpstream>>,
    timeout: Duration,
    log_skip: Option<crate::policy::matcher::Matcher>,
    sampler: Sampler,
}

/// Lets through the first [`Sampler::PER_SECOND`] log lines of each second,
/// then every 100th (as upstream's logger samples `egress outbound`).
#[derive(Debug, Default)]
struct Sampler {
    second: std::sync::atomic::AtomicU64,
    count: std::sync::atomic::AtomicU64,
}

impl Sampler {
    const PER_SECOND: u64 = 100;

    fn allow(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.second.swap(now, Relaxed) != now {
            self.count.store(0, Relaxed);
        }
        let n = self.count.fetch_add(1, Relaxed);
        n < Self::PER_SECOND || (n - Self::PER_SECOND) % 100 == 99
    }
}

/// How a query arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

impl Proxy {
    /// A proxy deciding with `state` and forwarding to `upstreams`.
    pub async fn new(
        state: Arc<State>,
        upstreams: Vec<SocketAddr>,
        timeout: Duration,
        log_skip: Option<crate::policy::matcher::Matcher>,
    ) -> Arc<Self> {
        let mut shared = std::collections::HashMap::new();
        for up in &upstreams {
            // Without a shared socket (say the family is unavailable), that
            // upstream gets a socket per query.
            if let Ok(s) = upstream::UdpUpstream::connect(*up).await {
                shared.insert(*up, s);
            }
        }
        Arc::new(Self {
            state,
            active: Arc::new(std::sync::RwLock::new(upstreams.clone())),
            upstreams,
            shared,
            timeout,
            log_skip,
            sampler: Sampler::default(),
        })
    }

    /// Starts the upstream health probes (`name`: `.` or a name to ask for).
    pub fn probe_upstreams(&self, name: String, every: Duration) {
        probe::start(
            self.upstreams.clone(),
            self.active.clone(),
            name,
            every,
            self.timeout,
        );
    }

    /// Binds UDP and TCP on `addr` and serves until the process ends. Returns
    /// once both sockets are bound, so that nothing is redirected to a
    /// proxy that is not listening yet.
    pub async fn serve(self: &Arc<Self>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let udp = Arc::new(UdpSocket::bind(addr).await?);
        let bound = udp.local_addr()?;
        let tcp = TcpListener::bind(bound).await?;
        let me = self.clone();
        tokio::spawn(async move { me.serve_udp(udp).await });
        let me = self.clone();
        tokio::spawn(async move { me.serve_tcp(tcp).await });
        // Redirected IPv6 queries arrive at [::1] on the same port.
        if bound.ip().is_loopback() && bound.is_ipv4() {
            let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, bound.port()));
            if let (Ok(u), Ok(t)) = (UdpSocket::bind(v6).await, TcpListener::bind(v6).await) {
                let me = self.clone();
                tokio::spawn(async move { me.serve_udp(Arc::new(u)).await });
                let me = self.clone();
                tokio::spawn(async move { me.serve_tcp(t).await });
            }
        }
        Ok(bound)
    }

    async fn serve_udp(self: Arc<Self>, sock: Arc<UdpSocket>) {
        let mut buf = vec![0u8; MAX_UDP];
        loop {
            let (n, peer) = match sock.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "dns: udp receive failed");
                    continue;
                }
            };
            let query = buf[..n].to_vec();
            let me = self.clone();
            let sock = sock.clone();
            tokio::spawn(async move {
                if let Some(reply) = me.answer(&query, Transport::Udp).await {
                    let _ = sock.send_to(&reply, peer).await;
                }
            });
        }
    }

    async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move { me.serve_tcp_conn(stream).await });
        }
    }

    async fn serve_tcp_conn(self: Arc<Self>, mut stream: TcpStream) {
        loop {
            let mut len = [0u8; 2];
            if !matches!(
                tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await,
                Ok(Ok(_))
            ) {
                return;
            }
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if stream.read_exact(&mut query).await.is_err() {
                return;
            }
            let Some(reply) = self.answer(&query, Transport::Tcp).await else {
                return;
            };
            let Ok(rlen) = u16::try_from(reply.len()) else {
                return;
            };
            let mut out = Vec::with_capacity(reply.len() + 2);
            out.extend_from_slice(&rlen.to_be_bytes());
            out.extend_from_slice(&reply);
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
    }

    /// The reply to one query (None: not even a header to answer).
    pub async fn answer(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let msg = match Message::from_vec(query) {
            Ok(m) => m,
            Err(_) => return formerr(query),
        };
        if msg.metadata.message_type != MessageType::Query {
            return None;
        }
        let Some(q) = msg.queries.first() else {
            return reply(&msg, ResponseCode::FormErr);
        };
        let name = q.name().to_ascii();
        let decision = self.state.matcher().decide_name(&name);
        if decision.action == Action::Deny {
            let shown = name.strip_suffix('.').unwrap_or(&name).to_ascii_lowercase();
            self.state
                .events
                .dns_refused(&shown, decision.target.as_deref());
            self.block_in_background(&shown, query);
            return reply(&msg, ResponseCode::NXDomain);
        }
        let upstreams = self.upstream_list();
        let started = std::time::Instant::now();
        let answered = forward::exchange(&upstreams, query, transport, self.timeout).await;
        crate::metrics::METRICS.query(started.elapsed());
        match answered {
            Some(answer) => {
                // dns+nft: the answer's addresses are allowed in the kernel
                // before the client sees them, so its first connection never
                // races the rule. If that fails the client gets SERVFAIL
                // rather than an answer it cannot use.
                if self.state.firewall().learns() {
                    let addrs = answer_addrs(&answer);
                    if let Err(e) = self.state.firewall().learn(&name, &addrs) {
                        tracing::error!(domain = %name, error = %e, "cannot allow resolved addresses");
                        return reply(&msg, ResponseCode::ServFail);
                    }
                }
                let skipped = self
                    .log_skip
                    .as_ref()
                    .is_some_and(|m| m.decide_name(&name).rule.is_some());
                if !skipped && self.sampler.allow() {
                    let host = name.strip_suffix('.').unwrap_or(&name);
                    let ips: Vec<String> = answer_addrs(&answer)
                        .iter()
                        .map(|(ip, _)| ip.to_string())
                        .collect();
                    tracing::info!(event = "egress.outbound", target.host = host, target.ips = ?ips, "egress outbound");
                }
                Some(answer)
            }
            None => {
                tracing::warn!(event = "egress.outbound", domain = %name, error = "all upstreams failed", "SERVFAIL");
                reply(&msg, ResponseCode::ServFail)
            }
        }
    }
}

impl Proxy {
    /// Under a default-allow policy, a denied name's addresses are dropped
    /// too (its queries still get NXDOMAIN): resolves `query` upstream in
    /// the background and blocks what comes back.
    fn block_in_background(&self, name: &str, query: &[u8]) {
        let m = self.state.matcher();
        if !self.state.firewall().learns() || m.policy().default_action != Action::Allow {
            return;
        }
        let upstreams = self.upstream_list();
        let (state, query, timeout) = (self.state.clone(), query.to_vec(), self.timeout);
        let name = name.to_string();
        tokio::spawn(async move {
            if let Some(answer) =
                forward::exchange(&upstreams, &query, Transport::Udp, timeout).await
            {
                if let Err(e) = state.firewall().block(&name, &answer_addrs(&answer)) {
                    tracing::warn!(error = %e, "cannot block a denied name's addresses");
                }
            }
        });
    }

    fn upstream_list(&self) -> Vec<(SocketAddr, Option<Arc<upstream::UdpUpstream>>)> {
        self.active
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|up| (*up, self.shared.get(up).cloned()))
            .collect()
    }

    /// Resolves the exact names the policy denies (A and AAAA) and blocks
    /// their addresses, so that a client that never asks egress (DNS over
    /// HTTPS, a hard-coded address) cannot reach them under a default-allow
    /// policy. Wildcards cannot be enumerated; at most 256 names.
    pub async fn block_denied_names(&self) {
        let m = self.state.matcher();
        if !self.state.firewall().learns() || m.policy().default_action != Action::Allow {
            return;
        }
        let names: Vec<String> = m
            .policy()
            .egress
            .iter()
            .filter(|r| r.action == Action::Deny)
            .filter_map(|r| match &r.parsed {
                crate::policy::Target::Domain(d) => Some(d.clone()),
                _ => None,
            })
            .take(256)
            .collect();
        let upstreams = self.upstream_list();
        for name in names {
            for rtype in [
                hickory_proto::rr::RecordType::A,
                hickory_proto::rr::RecordType::AAAA,
            ] {
                let Ok(qname) = hickory_proto::rr::Name::from_ascii(format!("{name}.")) else {
                    continue;
                };
                let mut q = Message::query();
                q.metadata.recursion_desired = true;
                q.add_query(hickory_proto::op::Query::query(qname, rtype));
                let Ok(bytes) = q.to_vec() else { continue };
                if let Some(answer) =
                    forward::exchange(&upstreams, &bytes, Transport::Udp, self.timeout).await
                {
                    if let Err(e) = self.state.firewall().block(&name, &answer_addrs(&answer)) {
                        tracing::warn!(error = %e, name, "cannot block a denied name's addresses");
                    }
                }
            }
        }
    }
}

/// The A and AAAA addresses in an answer's Answer section, with their TTLs.
fn answer_addrs(answer: &[u8]) -> Vec<(std::net::IpAddr, u32)> {
    use hickory_proto::rr::RData;
    let Ok(m) = Message::from_vec(answer) else {
        return Vec::new();
    };
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((std::net::IpAddr::V4(a.0), r.ttl)),
            RData::AAAA(a) => Some((std::net::IpAddr::V6(a.0), r.ttl)),
            _ => None,
        })
        .collect()
}

/// A response to `req` with only its question and `code` (no RA, no OPT).
fn reply(req: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut m = Message::response(req.metadata.id, req.metadata.op_code);
    m.metadata = Metadata::response_from_request(&req.metadata);
    m.metadata.response_code = code;
    if let Some(q) = req.queries.first() {
        m.add_query(q.clone());
    }
    m.to_vec().ok()
}

/// FORMERR for a query that does not parse but has a header.
fn formerr(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let mut h = query[..12].to_vec();
    h[2] = 0x80 | (query[2] & 0x79); // QR, keep opcode and RD
    h[3] = 0x01; // FORMERR
    h[4..12].fill(0);
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formerr_for_garbage_with_a_header() {
        let q = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xff];
        let r = formerr(&q).unwrap();
        assert_eq!(&r[..4], &[0x12, 0x34, 0x81, 0x01]);
        assert!(formerr(&q[..5]).is_none());
    }
}
