//! Load and timing helpers for benchmarks: a UDP DNS load generator that
//! keeps a fixed number of queries outstanding from one socket, latency
//! percentiles, and a look at a process's memory.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;

use crate::dns::query;

/// How long a query may stay unanswered before it counts as lost.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// What one load run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Queries sent.
    pub sent: usize,
    /// Answers with NOERROR and at least one record.
    pub answered: usize,
    /// Answers with another code or no record.
    pub failed: usize,
    /// Queries unanswered within [`QUERY_TIMEOUT`] (or by the run's end).
    pub lost: usize,
    /// From the first query sent to the last answer (or loss).
    pub elapsed: Duration,
    /// Latencies of the answered queries, sorted.
    pub latencies: Vec<Duration>,
}

impl LoadReport {
    /// Answered queries per second.
    pub fn qps(&self) -> f64 {
        if self.elapsed.is_zero() {
            return 0.0;
        }
        self.answered as f64 / self.elapsed.as_secs_f64()
    }

    /// Adds `other` (another run of the same kind) to this one: counts and
    /// times add up, latencies join.
    pub fn merge(&mut self, other: LoadReport) {
        self.sent += other.sent;
        self.answered += other.answered;
        self.failed += other.failed;
        self.lost += other.lost;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.latencies.sort_unstable();
    }

    /// The `p` quantile (0..=1) of the latencies, zero when none.
    pub fn pct(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

/// The `p` quantile (0..=1, nearest rank) of `sorted`; zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sorts `v` and returns it (for [`percentile`]).
pub fn sorted(mut v: Vec<Duration>) -> Vec<Duration> {
    v.sort_unstable();
    v
}

/// Sends `total` A queries for `names` (in turn) to `server` over UDP from
/// one socket, keeping `window` of them outstanding, and stops sending
/// after `budget`. Each query gets its own ID; answers are matched by ID.
pub fn udp_load(
    server: SocketAddr,
    names: &[&str],
    window: usize,
    total: usize,
    budget: Duration,
) -> LoadReport {
    assert!(!names.is_empty() && window > 0);
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut queries: Vec<Vec<u8>> = names.iter().map(|n| query(n, RecordType::A)).collect();
    let mut inflight: Vec<(u16, Instant)> = Vec::with_capacity(window);
    let mut r = LoadReport {
        latencies: Vec::with_capacity(total),
        ..LoadReport::default()
    };
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    let stop_sending = start + budget;
    let mut end = start;
    loop {
        let now = Instant::now();
        while inflight.len() < window && r.sent < total && now < stop_sending {
            let id = (r.sent % 65_536) as u16;
            let q = &mut queries[r.sent % names.len()];
            q[..2].copy_from_slice(&id.to_be_bytes());
            sock.send_to(q, server).unwrap();
            inflight.push((id, Instant::now()));
            r.sent += 1;
        }
        if inflight.is_empty() {
            break;
        }
        match sock.recv(&mut buf) {
            Ok(n) if n >= 12 => {
                let at = Instant::now();
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                if let Some(i) = inflight.iter().position(|(x, _)| *x == id) {
                    let (_, sent) = inflight.swap_remove(i);
                    let rcode = buf[3] & 0x0f;
                    let ancount = u16::from_be_bytes([buf[6], buf[7]]);
                    if rcode == 0 && ancount > 0 {
                        r.answered += 1;
                        r.latencies.push(at - sent);
                    } else {
                        r.failed += 1;
                    }
                    end = at;
                }
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("receive from {server}: {e}"),
        }
        let now = Instant::now();
        let before = inflight.len();
        inflight.retain(|(_, t)| now - *t < QUERY_TIMEOUT);
        if inflight.len() < before {
            r.lost += before - inflight.len();
            end = now;
        }
    }
    r.elapsed = end - start;
    r.latencies.sort_unstable();
    r
}

/// Asks `server` for `name` (A) once over UDP, waiting at most `timeout`;
/// the answer's A addresses, or None when nothing usable came back.
pub fn try_resolve(server: SocketAddr, name: &str, timeout: Duration) -> Option<Vec<Ipv4Addr>> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    let q = query(name, RecordType::A);
    s.send_to(&q, server).ok()?;
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let n = s.recv(&mut buf).ok()?;
        if n >= 12 && buf[..2] == q[..2] {
            let m = hickory_proto::op::Message::from_vec(&buf[..n]).ok()?;
            return Some(crate::dns::addrs(&m));
        }
    }
    None
}

/// A field of `/proc/<pid>/status` given in kB (e.g. `VmRSS`), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The processes in a cgroup v2 directory.
pub fn cgroup_pids(dir: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// One HTTP/1.1 request over a new connection (`Connection: close`), with
/// the egress auth header when `token` is set; the status and body, or the
/// error (a connection closed without a response is one).
pub fn http_request(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("OPENSANDBOX-EGRESS-AUTH: {t}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed without a response",
            )
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// CPU time used so far by the processes of a cgroup v2 directory, from
/// its `cpu.stat`: (user, system).
pub fn cgroup_cpu(dir: &std::path::Path) -> Option<(Duration, Duration)> {
    let s = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    let field = |name: &str| -> Option<Duration> {
        s.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok().map(Duration::from_micros))?
        })
    };
    Some((field("user_usec")?, field("system_usec")?))
}
