//! Network namespaces and cgroups of the test's own, removed on drop, and
//! probes of what the kernel lets out.

use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A network namespace of the test's own, removed on drop.
pub struct Netns {
    /// Its name (under /var/run/netns).
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
        enter_netns(&self.name);
    }

    /// Runs `f` on a thread inside this namespace and waits for it; the
    /// namespace is removed when the thread ends, even on a panic (which
    /// is then re-raised here).
    pub fn run(self, f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(move || {
            self.enter();
            f();
            drop(self);
        })
        .join()
        .unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// Moves the calling thread into the named network namespace.
pub fn enter_netns(name: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{name}")).unwrap();
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

/// Whether a UDP datagram to `addr` (`ip:port` or `[ipv6]:port`) may leave
/// (a drop in the output hook fails the send with EPERM).
pub fn can_send(addr: &str) -> bool {
    let s = UdpSocket::bind(if addr.starts_with('[') {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    })
    .unwrap();
    match s.send_to(b"x", addr) {
        Ok(_) => true,
        Err(e) if e.raw_os_error() == Some(1) => false,
        Err(e) => panic!("send to {addr}: {e}"),
    }
}

/// Whether the test runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A cgroup v2 directory of the test's own, removed on drop.
pub struct Cgroup {
    /// The directory.
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
