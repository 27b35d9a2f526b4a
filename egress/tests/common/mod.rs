//! Test harness: the real egress binary on loopback ports, a fake upstream
//! resolver, and small HTTP and DNS clients.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running egress, killed on drop.
pub struct Egress {
    child: Child,
    pub http: SocketAddr,
    pub dns: SocketAddr,
    pub token: Option<String>,
}

impl Egress {
    /// Starts egress with `envs`. The DNS redirect is off unless `envs`
    /// turn it on: tests on loopback run in the host's network namespace,
    /// which they must never change.
    pub fn start(envs: &[(&str, &str)]) -> Self {
        Self::start_in(envs, None)
    }

    /// Starts egress inside the cgroup v2 directory `cgroup` (so that its
    /// own traffic can be told apart from the test's).
    pub fn start_in(envs: &[(&str, &str)], cgroup: Option<&std::path::Path>) -> Self {
        for _ in 0..5 {
            let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let dns: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let mut cmd = match cgroup {
                None => Command::new(env!("CARGO_BIN_EXE_egress")),
                Some(dir) => {
                    let mut c = Command::new("sh");
                    c.arg("-c")
                        .arg(r#"echo $$ > "$1/cgroup.procs" && exec "$2""#)
                        .arg("sh")
                        .arg(dir)
                        .arg(env!("CARGO_BIN_EXE_egress"));
                    c
                }
            };
            cmd.env("OPENSANDBOX_EGRESS_REDIRECT", "off")
                .env("OPENSANDBOX_EGRESS_HTTP_ADDR", http.to_string())
                .env("OPENSANDBOX_EGRESS_DNS_ADDR", dns.to_string())
                .env("OPENSANDBOX_EGRESS_DNS_UPSTREAM_TIMEOUT", "1")
                .env_remove("OPENSANDBOX_EGRESS_TOKEN")
                .env_remove("OPENSANDBOX_EGRESS_RULES")
                .stdin(Stdio::null())
                .stdout(if std::env::var_os("EGRESS_TEST_LOG").is_some() {
                    Stdio::inherit()
                } else {
                    Stdio::null()
                })
                .stderr(Stdio::inherit());
            for (k, v) in envs {
                cmd.env(k, v);
            }
            let token = envs
                .iter()
                .find(|(k, _)| *k == "OPENSANDBOX_EGRESS_TOKEN")
                .map(|(_, v)| (*v).to_string());
            let mut e = Egress {
                child: cmd.spawn().unwrap(),
                http,
                dns,
                token,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = e.child.try_wait() {
                    break;
                }
                if TcpStream::connect(e.http).is_ok() && e.request("GET", "/healthz", None).0 == 200
                {
                    return e;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = e.child.kill();
        }
        panic!("egress did not start");
    }

    /// Exit status, if egress has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut s = TcpStream::connect(self.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        if let Some(t) = &self.token {
            req.push_str(&format!("OPENSANDBOX-EGRESS-AUTH: {t}\r\n"));
        }
        let body = body.unwrap_or("");
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        s.write_all(req.as_bytes()).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    pub fn json(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (s, b) = self.request(method, path, body);
        (
            s,
            serde_json::from_str(&b).unwrap_or_else(|e| panic!("not JSON ({e}): {b:?}")),
        )
    }

    /// Resolves `name` (A) through the proxy over UDP.
    pub fn lookup(&self, name: &str) -> Message {
        dns_udp(self.dns, name, RecordType::A)
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts a `{"code","message"}` error.
pub fn assert_error(r: &(u16, Value), status: u16, code: &str) -> String {
    assert_eq!(r.0, status, "{}", r.1);
    assert_eq!(r.1["code"], code, "{}", r.1);
    r.1["message"].as_str().unwrap().to_string()
}

pub fn query(name: &str, rtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m.to_vec().unwrap()
}

pub fn dns_udp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let q = query(name, rtype);
    s.send_to(&q, server).unwrap();
    let mut buf = vec![0u8; 65_535];
    let n = s.recv(&mut buf).unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id.to_be_bytes(), [q[0], q[1]]);
    m
}

pub fn dns_tcp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let mut s = TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let q = query(name, rtype);
    s.write_all(&u16::try_from(q.len()).unwrap().to_be_bytes())
        .unwrap();
    s.write_all(&q).unwrap();
    let mut l = [0u8; 2];
    s.read_exact(&mut l).unwrap();
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(l))];
    s.read_exact(&mut buf).unwrap();
    Message::from_vec(&buf).unwrap()
}

/// The A addresses of an answer.
pub fn addrs(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

pub fn rcode(m: &Message) -> ResponseCode {
    m.metadata.response_code
}

/// A fake authoritative resolver on loopback (UDP and TCP): names in the
/// zone get their A records; others NXDOMAIN; UDP answers over 512 bytes are
/// truncated (TC) as a real server does without EDNS.
pub struct FakeResolver {
    pub addr: SocketAddr,
    pub udp_queries: Arc<AtomicUsize>,
    pub tcp_queries: Arc<AtomicUsize>,
}

impl FakeResolver {
    pub fn start(zone: &[(&str, Vec<Ipv4Addr>)]) -> Self {
        Self::start_on(zone, None)
    }

    /// Listens on `addr` (both UDP and TCP), or a free loopback port.
    pub fn start_on(zone: &[(&str, Vec<Ipv4Addr>)], addr: Option<SocketAddr>) -> Self {
        let zone: Arc<HashMap<String, Vec<Ipv4Addr>>> = Arc::new(
            zone.iter()
                .map(|(n, a)| (n.to_ascii_lowercase(), a.clone()))
                .collect(),
        );
        // The same port for UDP and TCP: retry until both are free.
        let want = addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let (udp, tcp) = (0..50)
            .find_map(|_| {
                let udp = UdpSocket::bind(want).ok()?;
                let tcp = TcpListener::bind(udp.local_addr().ok()?).ok()?;
                Some((udp, tcp))
            })
            .unwrap();
        let addr = udp.local_addr().unwrap();
        let udp_queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        {
            let zone = zone.clone();
            let count = udp_queries.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_535];
                while let Ok((n, peer)) = udp.recv_from(&mut buf) {
                    count.fetch_add(1, Ordering::SeqCst);
                    let mut r = respond(&zone, &buf[..n]);
                    if r.len() > 512 {
                        let mut m = Message::from_vec(&r).unwrap();
                        m.answers.clear();
                        m.metadata.truncation = true;
                        r = m.to_vec().unwrap();
                    }
                    let _ = udp.send_to(&r, peer);
                }
            });
        }
        {
            let count = tcp_queries.clone();
            std::thread::spawn(move || {
                for mut s in tcp.incoming().flatten() {
                    count.fetch_add(1, Ordering::SeqCst);
                    let mut l = [0u8; 2];
                    if s.read_exact(&mut l).is_err() {
                        continue;
                    }
                    let mut q = vec![0u8; usize::from(u16::from_be_bytes(l))];
                    if s.read_exact(&mut q).is_err() {
                        continue;
                    }
                    let r = respond(&zone, &q);
                    let _ = s.write_all(&u16::try_from(r.len()).unwrap().to_be_bytes());
                    let _ = s.write_all(&r);
                }
            });
        }
        Self {
            addr,
            udp_queries,
            tcp_queries,
        }
    }
}

fn respond(zone: &HashMap<String, Vec<Ipv4Addr>>, q: &[u8]) -> Vec<u8> {
    let req = Message::from_vec(q).unwrap();
    let mut m = Message::response(req.metadata.id, req.metadata.op_code);
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    let question = req.queries[0].clone();
    let name = question.name().to_ascii().to_ascii_lowercase();
    let name = name.trim_end_matches('.').to_string();
    m.add_query(question.clone());
    // Names starting with "short" have a 1 s TTL (for expiry tests).
    let ttl = if name.starts_with("short") { 1 } else { 60 };
    match zone.get(&name) {
        Some(ips) => {
            for ip in ips {
                m.add_answer(Record::from_rdata(
                    question.name().clone(),
                    ttl,
                    RData::A(A(*ip)),
                ));
            }
        }
        None => m.metadata.response_code = ResponseCode::NXDomain,
    }
    m.to_vec().unwrap()
}

/// A network namespace of the test's own, removed on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates it with loopback up and a veth whose default route leads
    /// nowhere (a fixed neighbour), so datagrams to any address leave
    /// unless nftables drops them.
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "egt-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let ns = Netns { name };
        ns.sh(&format!("ip netns add {}", ns.name));
        ns.sh(&format!(
            "ip -n {n} link set lo up && ip -n {n} link add v0 type veth peer name v1 && ip -n {n} link set v0 up \
             && ip -n {n} link set v1 up && ip -n {n} addr add 192.0.2.1/24 dev v0 \
             && ip -n {n} route add default via 192.0.2.2 dev v0 \
             && ip -n {n} neigh add 192.0.2.2 lladdr 02:00:00:00:00:02 dev v0 nud permanent",
            n = ns.name
        ));
        ns
    }

    fn sh(&self, cmd: &str) {
        let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
        assert!(st.success(), "{cmd}");
    }

    /// Moves the calling thread into the namespace (its children and the
    /// sockets it opens then live there).
    pub fn enter(&self) {
        let f = std::fs::File::open(format!("/var/run/netns/{}", self.name)).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// Whether a UDP datagram to `addr` may leave (a drop in the output hook
/// fails the send with EPERM).
pub fn can_send(addr: &str) -> bool {
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    match s.send_to(b"x", addr) {
        Ok(_) => true,
        Err(e) if e.raw_os_error() == Some(1) => false,
        Err(e) => panic!("send to {addr}: {e}"),
    }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A cgroup v2 directory of the test's own, removed on drop.
pub struct Cgroup {
    pub path: std::path::PathBuf,
}

impl Cgroup {
    /// Creates one under the cgroup v2 mount, or None without cgroup v2.
    pub fn new(tag: &str) -> Option<Self> {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mount = mi.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(String::from))?
        })?;
        let path = std::path::PathBuf::from(mount)
            .join(format!("egress-test-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&path).ok()?;
        Some(Self { path })
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Processes must be gone first; retry briefly.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
