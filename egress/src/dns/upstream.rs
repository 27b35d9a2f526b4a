//! One long-lived UDP socket per upstream resolver, shared by all queries:
//! each query goes out under a fresh unpredictable ID (the client's own ID
//! is restored on the answer), and a reader task hands every answer to the
//! query waiting for its ID. This saves a socket, a bind, a connect and a
//! close per query.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::oneshot;

/// Queries in flight per upstream, at most (the ID space is 16 bits).
const MAX_IN_FLIGHT: usize = 16_384;

/// A shared socket to one resolver.
#[derive(Debug)]
pub struct UdpUpstream {
    sock: UdpSocket,
    pending: Mutex<HashMap<u16, oneshot::Sender<Vec<u8>>>>,
    ids: RandomState,
    counter: AtomicU64,
}

impl UdpUpstream {
    /// Connects a socket to `addr` and starts its reader.
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Arc<Self>> {
        let sock = crate::nft::own::udp_for(addr)?;
        sock.connect(addr).await?;
        let up = Arc::new(Self {
            sock,
            pending: Mutex::new(HashMap::new()),
            ids: RandomState::new(),
            counter: AtomicU64::new(0),
        });
        let reader = Arc::downgrade(&up);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let Some(up) = reader.upgrade() else { return };
                let n = match up.sock.recv(&mut buf).await {
                    Ok(n) => n,
                    Err(_) => continue, // e.g. ICMP port unreachable on a connected socket
                };
                if n < 12 {
                    continue;
                }
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                let waiter = up.lock().remove(&id);
                if let Some(tx) = waiter {
                    let _ = tx.send(buf[..n].to_vec());
                }
            }
        });
        Ok(up)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u16, oneshot::Sender<Vec<u8>>>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An ID no query in flight uses, unpredictable from outside.
    fn fresh_id(&self, pending: &HashMap<u16, oneshot::Sender<Vec<u8>>>) -> u16 {
        loop {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            #[allow(clippy::cast_possible_truncation)]
            let id = self.ids.hash_one(n) as u16;
            if !pending.contains_key(&id) {
                return id;
            }
        }
    }

    /// Sends `query` and waits up to `timeout` for its answer.
    pub async fn exchange(&self, query: &[u8], timeout: Duration) -> Option<Vec<u8>> {
        if query.len() < 12 {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut pending = self.lock();
            if pending.len() >= MAX_IN_FLIGHT {
                return None;
            }
            let id = self.fresh_id(&pending);
            pending.insert(id, tx);
            id
        };
        let mut q = query.to_vec();
        q[..2].copy_from_slice(&id.to_be_bytes());
        let answer = match self.sock.send(&q).await {
            Ok(_) => tokio::time::timeout(timeout, rx)
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        };
        if answer.is_none() {
            self.lock().remove(&id);
        }
        let mut a = answer?;
        a[..2].copy_from_slice(&query[..2]);
        Some(a)
    }
}
