//! DNS on the wire for tests: a client (UDP and TCP) and a fake
//! authoritative resolver.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// An encoded query for `name` with recursion desired.
pub fn query(name: &str, rtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m.to_vec().unwrap()
}

/// Asks `server` over UDP and returns the answer (checking its ID).
pub fn dns_udp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let s = UdpSocket::bind(if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let q = query(name, rtype);
    s.send_to(&q, server).unwrap();
    let mut buf = vec![0u8; 65_535];
    let n = s.recv(&mut buf).unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id.to_be_bytes(), [q[0], q[1]]);
    m
}

/// Asks `server` over TCP and returns the answer.
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

/// The AAAA addresses of an answer.
pub fn addrs6(m: &Message) -> Vec<Ipv6Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// The IPv6 twin of a zone address, `2001:db8::a.b.c.d` (what the fake
/// resolver answers to AAAA queries).
pub fn six(ip: Ipv4Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        0,
        0,
        0,
        0,
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([o[2], o[3]]),
    )
}

/// The answer's response code.
pub fn rcode(m: &Message) -> ResponseCode {
    m.metadata.response_code
}

/// A fake authoritative resolver on loopback (UDP and TCP): names in the
/// zone get their A records (AAAA queries: each address's [`six`] twin);
/// others NXDOMAIN; UDP answers over 512 bytes are
/// truncated (TC) as a real server does without EDNS.
pub struct FakeResolver {
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    /// Queries received over UDP.
    pub udp_queries: Arc<AtomicUsize>,
    /// Connections received over TCP.
    pub tcp_queries: Arc<AtomicUsize>,
}

impl FakeResolver {
    /// Listens on a free loopback port.
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
                let data = if question.query_type() == RecordType::AAAA {
                    RData::AAAA(AAAA(six(*ip)))
                } else {
                    RData::A(A(*ip))
                };
                m.add_answer(Record::from_rdata(question.name().clone(), ttl, data));
            }
        }
        None => m.metadata.response_code = ResponseCode::NXDomain,
    }
    m.to_vec().unwrap()
}
