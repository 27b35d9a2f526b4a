//! How the ruleset tells egress's own sockets from the sandbox's: by
//! egress's cgroup v2 when it has one of its own, else by a socket mark
//! (upstream always used mark 0x1). The mark is random per start, so a
//! sandbox process that may set marks (`CAP_NET_ADMIN`, or `CAP_NET_RAW` on
//! Linux 5.17+) has to guess it; only the cgroup is airtight.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, Ordering};

/// egress's own traffic, as the ruleset matches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Own {
    /// Sockets of the cgroup v2 `id` at `level`.
    Cgroup {
        /// Level in the hierarchy.
        level: u32,
        /// The cgroup's id (inode).
        id: u64,
    },
    /// Packets carrying this mark (set on every socket egress opens).
    Mark(u32),
}

static SOCKET_MARK: AtomicU32 = AtomicU32::new(0);

/// A random non-zero mark, and from now on every socket egress opens carries it.
pub fn use_random_mark() -> Own {
    let mut mark = 0u32;
    while mark == 0 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        mark = u32::try_from(h.finish() & 0xffff_ffff).unwrap_or(1);
    }
    SOCKET_MARK.store(mark, Ordering::Relaxed);
    Own::Mark(mark)
}

/// Puts the mark on `sock` when egress identifies itself by mark (no-op otherwise).
///
/// # Errors
/// The kernel refused `SO_MARK` (egress lacks `CAP_NET_ADMIN`).
pub fn mark_socket(sock: &impl AsFd) -> std::io::Result<()> {
    let mark = SOCKET_MARK.load(Ordering::Relaxed);
    if mark == 0 {
        return Ok(());
    }
    nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::Mark, &mark)
        .map_err(std::io::Error::from)
}

/// A TCP connection to `addr` that carries the mark.
///
/// # Errors
/// Socket creation, marking or connecting failed.
pub async fn connect(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    mark_socket(&sock)?;
    sock.connect(addr).await
}
