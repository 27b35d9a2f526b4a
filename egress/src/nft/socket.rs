//! Sending a batch to the kernel over `NETLINK_NETFILTER` and reading the
//! acknowledgements: the batch is one transaction, applied whole or not at all.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr,
    SockFlag, SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

/// `NLMSG_ERROR`.
const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`.
const NLMSG_DONE: u16 = 3;
/// How long to wait for the kernel's answers.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Socket buffers large enough for a batch of 100,000 elements.
const BUFFER: usize = 32 << 20;

/// Why a batch was not applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NftError {
    /// The netlink socket failed.
    #[error("netlink: {0}")]
    Socket(#[from] Errno),
    /// The kernel refused a message (and so the whole batch).
    #[error("nftables refused {what}: {errno}")]
    Refused {
        /// The message, e.g. `set allow_v4`.
        what: String,
        /// The kernel's error.
        errno: Errno,
    },
    /// Not every message was acknowledged in time.
    #[error("nftables did not acknowledge {0} message(s)")]
    NoAnswer(usize),
}

/// A bound `NETLINK_NETFILTER` socket with a receive buffer of `rcvbuf`
/// bytes (forced past the system limit when allowed).
pub(crate) fn netfilter_socket(rcvbuf: usize) -> Result<OwnedFd, Errno> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    let _ = setsockopt(&fd, sockopt::RcvBufForce, &rcvbuf)
        .or_else(|_| setsockopt(&fd, sockopt::RcvBuf, &rcvbuf));
    Ok(fd)
}

/// A netlink socket to nf_tables.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
}

impl Socket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NftError> {
        let fd = netfilter_socket(BUFFER)?;
        let _ = setsockopt(&fd, sockopt::SndBufForce, &BUFFER)
            .or_else(|_| setsockopt(&fd, sockopt::SndBuf, &BUFFER));
        let tv = TimeVal::new(i64::try_from(ANSWER_TIMEOUT.as_secs()).unwrap_or(5), 0);
        setsockopt(&fd, sockopt::ReceiveTimeout, &tv)?;
        Ok(Self { fd })
    }

    /// Sends a batch whose acknowledged messages are `what` (sequence
    /// number, description) and waits for every answer.
    pub fn apply(&self, batch: &[u8], what: &[(u32, String)]) -> Result<(), NftError> {
        sendto(
            self.fd.as_raw_fd(),
            batch,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )?;
        let mut pending: std::collections::HashSet<u32> = what.iter().map(|(s, _)| *s).collect();
        let mut buf = vec![0u8; 1 << 16];
        let mut first_error: Option<NftError> = None;
        while !pending.is_empty() {
            let n = match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => n,
                Err(Errno::EAGAIN) => {
                    return Err(first_error.unwrap_or(NftError::NoAnswer(pending.len())))
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let mut off = 0;
            while off + 16 <= n {
                let len =
                    u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
                let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap_or_default());
                if len < 16 || off + len > n {
                    break;
                }
                if ty == NLMSG_ERROR && len >= 20 {
                    let code =
                        i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap_or_default());
                    pending.remove(&seq);
                    if code != 0 && first_error.is_none() {
                        let what = what
                            .iter()
                            .find(|(s, _)| *s == seq)
                            .map_or("a message", |(_, w)| w.as_str());
                        first_error = Some(NftError::Refused {
                            what: what.to_string(),
                            errno: Errno::from_raw(-code),
                        });
                        // After an error the kernel aborts the batch; later
                        // messages are not acknowledged.
                        return Err(first_error.unwrap_or(NftError::NoAnswer(0)));
                    }
                } else if ty == NLMSG_DONE {
                    pending.remove(&seq);
                }
                off += (len + 3) & !3;
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
