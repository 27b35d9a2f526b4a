//! Forwarding one query to the upstream resolvers.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use std::sync::Arc;

use super::upstream::UdpUpstream;
use super::Transport;

/// RCODE of a DNS message (low 4 bits of byte 3).
fn rcode(msg: &[u8]) -> u8 {
    msg.get(3).map_or(0xff, |b| b & 0x0f)
}

/// Sends `query` to each upstream in order until one answers NOERROR or
/// NXDOMAIN; returns that answer.
pub(super) async fn exchange(
    upstreams: &[(SocketAddr, Option<Arc<UdpUpstream>>)],
    query: &[u8],
    transport: Transport,
    timeout: Duration,
) -> Option<Vec<u8>> {
    for (up, shared) in upstreams {
        // A truncated answer goes back to a UDP client as it is (the client
        // then asks again over TCP, which is forwarded over TCP); a TCP
        // client never gets one, because its query goes over TCP.
        let answer = match transport {
            Transport::Udp => match shared {
                Some(s) => s.exchange(query, timeout).await,
                None => udp(*up, query, timeout).await,
            },
            Transport::Tcp => tcp(*up, query, timeout).await,
        };
        match answer {
            Some(a) if matches!(rcode(&a), 0 | 3) => return Some(a),
            Some(a) => {
                tracing::debug!(upstream = %up, rcode = rcode(&a), "dns: upstream answered with an error")
            }
            None => tracing::debug!(upstream = %up, "dns: upstream did not answer"),
        }
    }
    None
}

pub(super) async fn udp(up: SocketAddr, query: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let sock = crate::nft::own::udp_for(up).ok()?;
    sock.connect(up).await.ok()?;
    sock.send(query).await.ok()?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // Room for the largest datagram, not zeroed.
        let mut buf = Vec::with_capacity(65_535);
        let n = tokio::time::timeout_at(deadline, sock.recv_buf(&mut buf))
            .await
            .ok()?
            .ok()?;
        // Only the answer to this query (same ID) counts.
        if n >= 12 && buf[..2] == query[..2] {
            buf.truncate(n);
            buf.shrink_to_fit();
            return Some(buf);
        }
    }
}

async fn tcp(up: SocketAddr, query: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let work = async {
        let mut s = crate::nft::own::connect(up).await.ok()?;
        let len = u16::try_from(query.len()).ok()?;
        let mut out = Vec::with_capacity(query.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(query);
        s.write_all(&out).await.ok()?;
        let mut l = [0u8; 2];
        s.read_exact(&mut l).await.ok()?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(l))];
        s.read_exact(&mut buf).await.ok()?;
        (buf.len() >= 12 && buf[..2] == query[..2]).then_some(buf)
    };
    tokio::time::timeout(timeout, work).await.ok().flatten()
}
