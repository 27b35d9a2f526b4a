//! A sandbox and a world: two network namespaces joined by a veth pair.
//!
//! ```text
//!  sandbox  10.200.0.2 ── veth ── 10.200.0.1  world
//!           fd00:200::2           fd00:200::1
//!  (egress + client; default routes)         DNS on 10.200.0.1:53
//!                                            TCP "hello" servers on
//!                                            198.51.100.10, .11, .12 :80
//!                                            and their six() twins
//!                                            2001:db8::c633:640a... :80
//! ```

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::dns::FakeResolver;

/// The world's resolver.
pub const WORLD_DNS: &str = "10.200.0.1:53";
/// Addresses in the world with a TCP server on port 80.
pub const SERVERS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 51, 100, 10),
    Ipv4Addr::new(198, 51, 100, 11),
    Ipv4Addr::new(198, 51, 100, 12),
];

/// Both namespaces, removed on drop.
pub struct Topology {
    /// The sandbox namespace's name.
    pub sandbox: String,
    /// The world namespace's name.
    pub world: String,
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

impl Topology {
    /// Builds both namespaces and starts the world's services (a resolver
    /// answering `zone`, and the TCP servers).
    pub fn new(tag: &str, zone: &[(&str, Vec<Ipv4Addr>)]) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let t = Topology {
            sandbox: format!("sbx-{}-{tag}-{n}", std::process::id()),
            world: format!("wld-{}-{tag}-{n}", std::process::id()),
        };
        let (s, w) = (&t.sandbox, &t.world);
        sh(&format!("ip netns add {s} && ip netns add {w}"));
        sh(&format!(
            "ip link add s0 netns {s} type veth peer name w0 netns {w} \
             && ip -n {s} link set lo up && ip -n {w} link set lo up \
             && ip -n {s} link set s0 up && ip -n {w} link set w0 up \
             && ip -n {s} addr add 10.200.0.2/24 dev s0 && ip -n {w} addr add 10.200.0.1/24 dev w0 \
             && ip -n {s} route add default via 10.200.0.1 \
             && ip -n {s} addr add fd00:200::2/64 dev s0 nodad \
             && ip -n {w} addr add fd00:200::1/64 dev w0 nodad \
             && ip -n {s} -6 route add default via fd00:200::1"
        ));
        for ip in SERVERS {
            sh(&format!(
                "ip -n {w} addr add {ip}/32 dev lo && ip -n {w} addr add {}/128 dev lo nodad",
                crate::dns::six(ip)
            ));
        }
        let zone: Vec<(String, Vec<Ipv4Addr>)> = zone
            .iter()
            .map(|(n, a)| ((*n).to_string(), a.clone()))
            .collect();
        let world = t.world.clone();
        std::thread::spawn(move || {
            crate::netns::enter_netns(&world);
            let z: Vec<(&str, Vec<Ipv4Addr>)> =
                zone.iter().map(|(n, a)| (n.as_str(), a.clone())).collect();
            // Runs until the namespace goes (its threads keep serving).
            std::mem::forget(FakeResolver::start_on(&z, Some(WORLD_DNS.parse().unwrap())));
            for ip in SERVERS {
                for (addr, shown) in [
                    (SocketAddr::from((ip, 80)), ip.to_string()),
                    (
                        SocketAddr::from((crate::dns::six(ip), 80)),
                        crate::dns::six(ip).to_string(),
                    ),
                ] {
                    let l = TcpListener::bind(addr).unwrap();
                    std::thread::spawn(move || {
                        for mut c in l.incoming().flatten() {
                            let _ = c.write_all(format!("hello from {shown}\n").as_bytes());
                        }
                    });
                }
            }
        })
        .join()
        .unwrap();
        t
    }

    /// Moves the calling thread into the sandbox namespace.
    pub fn enter_sandbox(&self) {
        crate::netns::enter_netns(&self.sandbox);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.sandbox])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.world])
            .status();
    }
}

/// Connects over TCP (1 s timeout) and returns the server's greeting, or
/// None when the connection is refused, dropped or times out.
pub fn fetch(ip: impl Into<std::net::IpAddr>) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&SocketAddr::from((ip.into(), 80)), Duration::from_secs(1))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The egress binary: `EGRESS_BIN`, else the workspace's debug build.
pub fn egress_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("EGRESS_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let bin = target.join("debug/egress");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p egress) or set EGRESS_BIN",
        bin.display()
    );
    bin
}
