//! Refused connections as events: the drop rules also send the packet's
//! headers to an nflog group, and a thread reads them here (bounded: the
//! kernel drops log messages when the socket buffer is full, it never
//! blocks traffic).

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{recv, sendto, MsgFlags, NetlinkAddr};

use super::wire::{message, Attrs, NLM_F_ACK, NLM_F_REQUEST};

/// The nflog group egress's rules log to.
pub const GROUP: u16 = 0x5e9;
/// `NFNL_SUBSYS_ULOG`.
const SUBSYS_ULOG: u16 = 4;
/// Receive buffer for log messages.
const BUFFER: usize = 1 << 20;

/// One refused packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Destination address.
    pub ip: IpAddr,
    /// Destination port (TCP and UDP).
    pub port: Option<u16>,
    /// The prefix of the rule that logged it.
    pub prefix: String,
}

/// Parses the destination of an IP packet's headers.
pub fn destination(pkt: &[u8]) -> Option<(IpAddr, Option<u16>)> {
    match pkt.first()? >> 4 {
        4 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let dst: [u8; 4] = pkt.get(16..20)?.try_into().ok()?;
            let proto = *pkt.get(9)?;
            let port = matches!(proto, 6 | 17)
                .then(|| {
                    pkt.get(ihl + 2..ihl + 4)
                        .map(|p| u16::from_be_bytes([p[0], p[1]]))
                })
                .flatten();
            Some((IpAddr::from(dst), port))
        }
        6 => {
            let dst: [u8; 16] = pkt.get(24..40)?.try_into().ok()?;
            let proto = *pkt.get(6)?;
            let port = matches!(proto, 6 | 17)
                .then(|| pkt.get(42..44).map(|p| u16::from_be_bytes([p[0], p[1]])))
                .flatten();
            Some((IpAddr::from(dst), port))
        }
        _ => None,
    }
}

/// Parses one `NFULNL_MSG_PACKET` payload (after `nfgenmsg`).
fn parse_packet(mut attrs: &[u8]) -> Option<Refused> {
    let mut prefix = String::new();
    let mut payload: Option<&[u8]> = None;
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            break;
        }
        let data = &attrs[4..len];
        match ty {
            9 => payload = Some(data),
            10 => {
                prefix = String::from_utf8_lossy(data.split(|b| *b == 0).next().unwrap_or(&[]))
                    .into_owned()
            }
            _ => {}
        }
        attrs = &attrs[((len + 3) & !3).min(attrs.len())..];
    }
    let (ip, port) = destination(payload?)?;
    Some(Refused { ip, port, prefix })
}

/// Binds to the nflog group and calls `on_refused` for every logged packet,
/// on a thread of its own.
pub fn listen(on_refused: impl Fn(Refused) + Send + 'static) -> Result<(), Errno> {
    let fd: OwnedFd = super::socket::netfilter_socket(BUFFER)?;
    let mut a = Attrs::default();
    a.bytes(1, &[1]); // NFULA_CFG_CMD: BIND
    let mut mode = 64u32.to_be_bytes().to_vec(); // copy range
    mode.extend_from_slice(&[2, 0]); // NFULNL_COPY_PACKET, pad
    a.bytes(2, &mode); // NFULA_CFG_MODE
    let msg = message(
        (SUBSYS_ULOG << 8) | 1,
        NLM_F_REQUEST | NLM_F_ACK,
        0,
        GROUP,
        1,
        &a,
    );
    sendto(
        fd.as_raw_fd(),
        &msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut buf = vec![0u8; 1 << 16];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == 2 {
        let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if code != 0 {
            return Err(Errno::from_raw(-code));
        }
    }
    std::thread::Builder::new()
        .name("nflog".into())
        .spawn(move || loop {
            let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => n,
                Err(Errno::EINTR | Errno::ENOBUFS) => continue, // ENOBUFS: messages were lost, not us
                Err(e) => {
                    tracing::warn!(error = %e, "nflog listener stopped");
                    return;
                }
            };
            let mut off = 0;
            while off + 20 <= n {
                let len =
                    u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
                let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                if len < 16 || off + len > n {
                    break;
                }
                if ty == SUBSYS_ULOG << 8 {
                    if let Some(r) = parse_packet(&buf[off + 20..off + len]) {
                        on_refused(r);
                    }
                }
                off += (len + 3) & !3;
            }
        })
        .map_err(|_| Errno::EAGAIN)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        let mut v4 = vec![0u8; 24];
        v4[0] = 0x45;
        v4[9] = 6;
        v4[16..20].copy_from_slice(&[198, 51, 100, 7]);
        v4[22..24].copy_from_slice(&443u16.to_be_bytes());
        assert_eq!(
            destination(&v4),
            Some(("198.51.100.7".parse().unwrap(), Some(443)))
        );
        let mut v6 = vec![0u8; 44];
        v6[0] = 0x60;
        v6[6] = 17;
        v6[24..40].copy_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        v6[42..44].copy_from_slice(&53u16.to_be_bytes());
        assert_eq!(
            destination(&v6),
            Some(("2001:db8::1".parse().unwrap(), Some(53)))
        );
        assert_eq!(destination(&[]), None);
    }
}
