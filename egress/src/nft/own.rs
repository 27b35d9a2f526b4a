//! How the ruleset tells egress's own sockets from the sandbox's: by
//! egress's cgroup v2 when it has one of its own, else by a socket mark
//! (upstream always used mark 0x1) together with a socket owner uid. The mark
//! is random per start and the uid is one the sandbox should not hold, so a
//! sandbox process needs to guess the mark *and* be able to take that uid
//! (`CAP_SETUID`); the ruleset's tripwire (`ruleset::own_guard`) allows one
//! guess per lockout. Only the cgroup cannot be forged at all.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use nix::unistd::{setfsuid, Uid};

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
    /// Sockets carrying `mark` and, when the kernel let egress set it,
    /// owned by `uid` (both set on every socket egress opens).
    Mark {
        /// The socket mark.
        mark: u32,
        /// The socket owner.
        uid: Option<u32>,
    },
}

static SOCKET_MARK: AtomicU32 = AtomicU32::new(0);
static SOCKET_UID: AtomicU32 = AtomicU32::new(0);

/// A random non-zero mark and the owner `uid`: from now on every socket
/// egress opens through this module carries both. The uid is dropped (with
/// a warning) when sockets cannot be given it, e.g. in a user namespace
/// that does not map it.
pub fn use_mark(uid: u32) -> Own {
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
    SOCKET_UID.store(uid, Ordering::Relaxed);
    SOCKET_MARK.store(mark, Ordering::Relaxed);
    let owner = new_socket(false, SockType::Datagram)
        .and_then(|fd| nix::sys::stat::fstat(&fd).map_err(std::io::Error::from))
        .map(|st| st.st_uid);
    if uid != 0 && owner.as_ref().ok() == Some(&uid) {
        return Own::Mark {
            mark,
            uid: Some(uid),
        };
    }
    tracing::warn!(
        uid,
        ?owner,
        "egress's sockets cannot be owned by the socket uid; matching the mark alone"
    );
    SOCKET_UID.store(0, Ordering::Relaxed);
    Own::Mark { mark, uid: None }
}

fn mark_socket(sock: &impl AsFd) -> std::io::Result<()> {
    let mark = SOCKET_MARK.load(Ordering::Relaxed);
    if mark == 0 {
        return Ok(());
    }
    nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::Mark, &mark)
        .map_err(std::io::Error::from)
}

/// A new socket of `family`/`kind`, owned by the configured uid and marked
/// when egress identifies itself by mark (a plain socket otherwise).
fn new_socket(v6: bool, kind: SockType) -> std::io::Result<OwnedFd> {
    let family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let uid = SOCKET_UID.load(Ordering::Relaxed);
    let fd = if SOCKET_MARK.load(Ordering::Relaxed) != 0 && uid != 0 {
        // The socket's owner is the creating thread's fsuid (per thread, so
        // no other thread is affected); restored at once.
        let before = setfsuid(Uid::from_raw(uid));
        let made = socket(family, kind, flags, None);
        setfsuid(before);
        made
    } else {
        socket(family, kind, flags, None)
    }
    .map_err(std::io::Error::from)?;
    mark_socket(&fd)?;
    Ok(fd)
}

/// An unbound UDP socket of `peer`'s family (connecting it picks the
/// local address and port).
///
/// # Errors
/// Socket creation or marking failed.
pub fn udp_for(peer: std::net::SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let fd = new_socket(peer.is_ipv6(), SockType::Datagram)?;
    tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

/// A TCP connection to `addr` from a socket of egress's own.
///
/// # Errors
/// Socket creation, marking or connecting failed.
pub async fn connect(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let fd = new_socket(addr.is_ipv6(), SockType::Stream)?;
    tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd))
        .connect(addr)
        .await
}
