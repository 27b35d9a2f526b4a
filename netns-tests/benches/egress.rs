//! The egress benchmark (run it with `bash bench/egress.sh`): in the
//! sandbox/world namespace topology, DNS throughput and latency through
//! egress (dns+nft, redirected), straight to the world's resolver, and
//! through dnsmasq as a forwarder; PATCH /policy latency for 1, 1,000 and
//! 10,000 rules; the time from an allowed answer to a TCP connect; egress's
//! binary size and idle RSS. Prints a markdown table and writes it to
//! target/bench-egress.md. Needs root; otherwise it says SKIPPED.
//!
//! Environment: `EGRESS_BIN` (the binary to measure; default the debug
//! build), `BENCH_DNS_N` (queries in a throughput run, default 50000),
//! `BENCH_WINDOW` (outstanding queries, default 16).
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netns_tests::load::{
    cgroup_cpu, cgroup_pids, http_request, percentile, proc_status_kib, sorted, try_resolve,
    udp_load, LoadReport,
};
use netns_tests::*;

/// Names the DNS load cycles through (more than the window, so that no two
/// outstanding queries are for the same name and no forwarder can merge them).
const LOAD_NAMES: usize = 64;
/// Fresh-address connects: c<i>.bench.test answers 198.51.101.<i+1>.
const CONNECT_N: usize = 200;
/// The world answers TCP on every address of this /24 (port 81).
const FRESH_NET: [u8; 3] = [198, 51, 101];
const FRESH_PORT: u16 = 81;
/// Serial (one outstanding) queries per path, over all rounds.
const SERIAL_N: usize = 2000;
/// Rounds the DNS runs are split into (each path once per round).
const ROUNDS: usize = 5;
const WARMUP_N: usize = 500;
const DNS_BUDGET: Duration = Duration::from_secs(10);
const POLICY: &str =
    r#"{"defaultAction":"deny","egress":[{"action":"allow","target":"*.bench.test"}]}"#;
const DNSMASQ_ADDR: &str = "127.0.0.2:53";

fn env_usize(k: &str, default: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn zone() -> Vec<(String, Vec<Ipv4Addr>)> {
    let mut z = vec![("allowed.bench.test".to_string(), vec![SERVERS[0]])];
    for i in 0..LOAD_NAMES {
        z.push((format!("n{i}.bench.test"), vec![SERVERS[0]]));
    }
    for i in 0..CONNECT_N {
        let last = u8::try_from(i + 1).unwrap();
        z.push((
            format!("c{i}.bench.test"),
            vec![Ipv4Addr::new(
                FRESH_NET[0],
                FRESH_NET[1],
                FRESH_NET[2],
                last,
            )],
        ));
    }
    z
}

fn load_names() -> Vec<String> {
    (0..LOAD_NAMES)
        .map(|i| format!("n{i}.bench.test."))
        .collect()
}

/// A topology whose world also answers TCP on every address of FRESH_NET.
fn topology(tag: &str) -> Topology {
    let z = zone();
    let zr: Vec<(&str, Vec<Ipv4Addr>)> = z.iter().map(|(n, a)| (n.as_str(), a.clone())).collect();
    let topo = Topology::new(tag, &zr);
    let w = topo.world.clone();
    let [a, b, c] = FRESH_NET;
    let st = Command::new("ip")
        .args([
            "-n",
            &w,
            "route",
            "add",
            "local",
            &format!("{a}.{b}.{c}.0/24"),
            "dev",
            "lo",
        ])
        .status()
        .unwrap();
    assert!(st.success(), "route add local in {w}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/var/run/netns/{w}")).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = TcpListener::bind(("0.0.0.0", FRESH_PORT)).unwrap();
        // Serves until the process ends (the namespace outlives its name).
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                drop(c);
            }
        });
    })
    .join()
    .unwrap();
    topo
}

/// A child process killed on drop.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// DNS numbers of one path, added up over the rounds.
#[derive(Default)]
struct Dns {
    serial: LoadReport,
    loaded: LoadReport,
    /// CPU time (user, system) of the forwarder over the loaded runs, when
    /// it runs in a cgroup of its own.
    cpu: Option<(Duration, Duration)>,
}

impl Dns {
    /// One round against `server`: `serial` queries one at a time, then
    /// `loaded` with `window` outstanding (`cg`: the forwarder's cgroup).
    fn round(
        &mut self,
        server: SocketAddr,
        window: usize,
        (serial, loaded): (usize, usize),
        cg: Option<&Path>,
    ) {
        let names = load_names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.serial
            .merge(udp_load(server, &names, 1, serial, DNS_BUDGET));
        let before = cg.and_then(cgroup_cpu);
        self.loaded
            .merge(udp_load(server, &names, window, loaded, DNS_BUDGET));
        if let (Some((u0, s0)), Some((u1, s1))) = (before, cg.and_then(cgroup_cpu)) {
            let (u, s) = self.cpu.unwrap_or_default();
            self.cpu = Some((u + u1.saturating_sub(u0), s + s1.saturating_sub(s0)));
        }
    }

    /// CPU time (user, system) per answered query of the loaded runs.
    fn cpu_per_query(&self) -> Option<(Duration, Duration)> {
        let n = u32::try_from(self.loaded.answered.max(1)).unwrap();
        self.cpu.map(|(u, s)| (u / n, s / n))
    }
}

/// Warms `server` up; an error when it answers nothing.
fn warm_up(server: SocketAddr, window: usize) -> Result<(), String> {
    let names = load_names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let r = udp_load(server, &names, window, WARMUP_N, DNS_BUDGET);
    if r.answered == 0 {
        return Err(format!(
            "no answer from {server}: {} failed, {} lost",
            r.failed, r.lost
        ));
    }
    Ok(())
}

/// Runs `f` on a thread in `topo`'s sandbox namespace.
fn in_ns<R: Send>(topo: &Topology, f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            topo.enter_sandbox();
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Resolve-then-connect timings.
#[derive(Default, Clone)]
struct Connect {
    /// From the answer to the connect's return.
    after_answer: Vec<Duration>,
    /// From sending the query to the connect's return.
    total: Vec<Duration>,
    failed: usize,
}

fn connect_run(fresh: bool) -> Connect {
    let mut r = Connect::default();
    let dns: SocketAddr = WORLD_DNS.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..CONNECT_N {
        if Instant::now() > deadline || r.failed > 5 {
            break;
        }
        let (name, port) = if fresh {
            (format!("c{i}.bench.test."), FRESH_PORT)
        } else {
            ("allowed.bench.test.".to_string(), 80)
        };
        let t0 = Instant::now();
        let Some(ips) = try_resolve(dns, &name, Duration::from_secs(2)).filter(|a| !a.is_empty())
        else {
            r.failed += 1;
            continue;
        };
        let t1 = Instant::now();
        match TcpStream::connect_timeout(&(ips[0], port).into(), Duration::from_secs(1)) {
            Ok(s) => {
                let t2 = Instant::now();
                drop(s);
                r.after_answer.push(t2 - t1);
                r.total.push(t2 - t0);
            }
            Err(_) => r.failed += 1,
        }
    }
    r.after_answer = sorted(r.after_answer);
    r.total = sorted(r.total);
    r
}

fn dnsmasq_bin() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("dnsmasq"))
        .find(|p| p.exists())
}

/// Starts dnsmasq in the calling thread's namespace, in `cg`, forwarding
/// every query (no cache) to the world's resolver; waits for its answers.
fn start_dnsmasq(cg: &Cgroup) -> Result<Proc, String> {
    let bin = dnsmasq_bin().ok_or("dnsmasq is not installed")?;
    // An address of its own on loopback, so that --bind-interfaces binds it.
    let st = Command::new("ip")
        .args(["addr", "add", "127.0.0.2/8", "dev", "lo"])
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        return Err("cannot add 127.0.0.2 to lo".into());
    }
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
        .arg("sh")
        .arg(&cg.path)
        .arg(bin)
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--user=root",
            "--log-facility=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--server=10.200.0.1",
            "--listen-address=127.0.0.2",
            "--bind-interfaces",
            "--port=53",
            "--cache-size=0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("dnsmasq: {e}"))?;
    let mut guard = Proc(child);
    let server: SocketAddr = DNSMASQ_ADDR.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(Some(st)) = guard.0.try_wait() {
            return Err(format!("dnsmasq exited: {st}"));
        }
        if try_resolve(server, "allowed.bench.test.", Duration::from_millis(100))
            .is_some_and(|a| !a.is_empty())
        {
            return Ok(guard);
        }
        if Instant::now() > deadline {
            return Err("dnsmasq did not answer within 5 s".into());
        }
    }
}

/// PATCH timings for one size.
struct Patch {
    label: String,
    times: Vec<Duration>,
    target: Option<Duration>,
    upstream: &'static str,
    /// Why the series stopped early, if it did.
    error: Option<String>,
}

/// Everything measured.
struct Results {
    /// Through egress (dns+nft, redirected).
    egress: Dns,
    /// Straight to the world's resolver (no egress).
    direct: Dns,
    /// Through dnsmasq (no egress), or why not.
    dnsmasq: Result<Dns, String>,
    /// Resolve-then-connect with egress: a new address each time, the same.
    eg_fresh: Connect,
    eg_same: Connect,
    /// The same without egress.
    base_fresh: Connect,
    base_same: Connect,
    patches: Vec<Patch>,
    idle_rss_kib: Option<u64>,
    dns_rss_kib: Option<u64>,
    end_rss_kib: Option<u64>,
    settled_rss_kib: Option<u64>,
    peak_rss_kib: Option<u64>,
}

/// Which rules a PATCH holds.
#[derive(Clone, Copy)]
enum Kind {
    /// Allowed domains, allowed addresses, allowed /30 blocks and denied
    /// addresses, in turn (the address rules go into nftables sets).
    Mix,
    /// Allowed domains only (nothing for the static sets).
    Domains,
}

/// `n` rules of `kind`, unique to `rep`.
fn rules(kind: Kind, n: usize, rep: usize) -> String {
    let mut out = String::from("[");
    for i in 0..n {
        let k = u32::try_from(rep * n + i).unwrap();
        if i > 0 {
            out.push(',');
        }
        let (action, target) = match (kind, i % 4) {
            (Kind::Domains, _) | (Kind::Mix, 0) => ("allow", format!("r{rep}-{i}.patch.test")),
            (Kind::Mix, 1) => ("allow", Ipv4Addr::from(0x6440_0000 + k).to_string()), // 100.64/10
            (Kind::Mix, 2) => (
                "allow",
                format!("{}/30", Ipv4Addr::from(0x0a00_0000 + k * 8)),
            ), // 10/8
            (Kind::Mix, _) => ("deny", Ipv4Addr::from(0xac10_0000 + k).to_string()),  // 172.16/12
        };
        write!(out, r#"{{"action":"{action}","target":"{target}"}}"#).unwrap();
    }
    out.push(']');
    out
}

/// One timed request; an error unless egress answers 200.
fn timed(e: &Egress, method: &str, path: &str, body: &str) -> Result<Duration, String> {
    let t = Instant::now();
    let r = http_request(
        e.http,
        e.token.as_deref(),
        method,
        path,
        body,
        Duration::from_secs(30),
    );
    let d = t.elapsed();
    match r {
        Ok((200, _)) => Ok(d),
        Ok((status, resp)) => Err(format!("{method} {path}: {status} {}", resp.trim())),
        Err(err) => Err(format!("{method} {path}: {err}")),
    }
}

/// PATCHes `n` rules new to the base policy `reps` times (the base is put
/// back, untimed, before each), within `budget`; stops at the first error.
fn patch_series(
    e: &Egress,
    kind: Kind,
    n: usize,
    reps: usize,
    budget: Duration,
) -> (Vec<Duration>, Option<String>) {
    let deadline = Instant::now() + budget;
    let mut times = Vec::with_capacity(reps);
    for rep in 0..reps {
        if Instant::now() > deadline {
            break;
        }
        let body = rules(kind, n, rep);
        let r =
            timed(e, "POST", "/policy", POLICY).and_then(|_| timed(e, "PATCH", "/policy", &body));
        match r {
            Ok(d) => times.push(d),
            Err(err) => return (sorted(times), Some(err)),
        }
    }
    (sorted(times), None)
}

fn patches(e: &mut Egress) -> Vec<Patch> {
    let mut out = Vec::new();
    for (kind, n, reps, target, upstream) in [
        (Kind::Mix, 1, 50, Some(Duration::from_millis(1)), "16 ms"),
        (Kind::Mix, 1000, 50, None, ""),
        (Kind::Mix, 10_000, 20, Some(Duration::from_millis(50)), ""),
        (Kind::Domains, 10_000, 20, None, ""),
    ] {
        let (times, mut error) = patch_series(e, kind, n, reps, Duration::from_secs(20));
        if let Some(err) = &mut error {
            if let Some(st) = e.exited() {
                write!(err, " (egress exited: {st})").unwrap();
            }
        }
        let what = match kind {
            Kind::Mix => "",
            Kind::Domains => " (domains only)",
        };
        out.push(Patch {
            label: format!("{n} rule{}{what}", if n == 1 { "" } else { "s" }),
            times,
            target,
            upstream,
            error,
        });
    }
    // One rule onto a policy that already holds 10,000 (the mix if egress
    // takes it, else domains only).
    let (base, label) = match timed(e, "POST", "/policy", POLICY)
        .and_then(|_| timed(e, "PATCH", "/policy", &rules(Kind::Mix, 10_000, 99)))
    {
        Ok(_) => (Ok(()), "1 rule onto 10,000"),
        Err(_) => (
            timed(e, "POST", "/policy", POLICY)
                .and_then(|_| timed(e, "PATCH", "/policy", &rules(Kind::Domains, 10_000, 99)))
                .map(|_| ()),
            "1 rule onto 10,000 domain rules",
        ),
    };
    let mut times = Vec::new();
    let mut error = base.err();
    if error.is_none() {
        for rep in 0..50 {
            match timed(e, "PATCH", "/policy", &rules(Kind::Mix, 1, 1000 + rep)) {
                Ok(d) => times.push(d),
                Err(err) => {
                    error = Some(err);
                    break;
                }
            }
        }
    }
    out.push(Patch {
        label: label.into(),
        times: sorted(times),
        target: None,
        upstream: "",
        error,
    });
    out
}

/// Builds both topologies (one with egress, one without, where dnsmasq
/// runs), then measures, interleaving the DNS paths round by round so that
/// drift of the machine hits them alike.
fn run(bin: &Path, window: usize, total: usize) -> Results {
    let base = topology("bench-base");
    let etopo = topology("bench-egress");
    let ecg = Cgroup::new("bench-egress").expect("cgroup v2");
    let dcg = Cgroup::new("bench-dnsmasq");
    let mut e = in_ns(&etopo, || {
        Egress::start_in(
            bin,
            &[
                ("OPENSANDBOX_EGRESS_MODE", "dns+nft"),
                ("OPENSANDBOX_EGRESS_REDIRECT", "on"),
                ("OPENSANDBOX_EGRESS_DNS_UPSTREAM", WORLD_DNS),
                ("OPENSANDBOX_EGRESS_RULES", POLICY),
                ("OPENSANDBOX_EGRESS_MAX_RULES", "0"),
            ],
            Some(&ecg.path),
        )
    });
    let pid = cgroup_pids(&ecg.path).first().copied();
    std::thread::sleep(Duration::from_millis(300));
    let idle_rss_kib = pid.and_then(|p| proc_status_kib(p, "VmRSS"));
    let dnsmasq = match &dcg {
        Some(cg) => in_ns(&base, || start_dnsmasq(cg)),
        None => Err("no cgroup v2".to_string()),
    };
    let world: SocketAddr = WORLD_DNS.parse().unwrap();
    let dm_addr: SocketAddr = DNSMASQ_ADDR.parse().unwrap();
    in_ns(&base, || warm_up(world, window)).unwrap();
    in_ns(&etopo, || warm_up(world, window)).unwrap();
    let mut dm_err = dnsmasq.as_ref().err().cloned();
    if dm_err.is_none() {
        dm_err = in_ns(&base, || warm_up(dm_addr, window)).err();
    }
    eprintln!("bench: DNS, {ROUNDS} rounds of direct / dnsmasq / egress");
    let per_round = (SERIAL_N / ROUNDS, total.div_ceil(ROUNDS));
    let (mut direct, mut dm, mut eg) = (Dns::default(), Dns::default(), Dns::default());
    for round in 0..ROUNDS {
        for k in 0..3 {
            match (round + k) % 3 {
                0 => in_ns(&base, || direct.round(world, window, per_round, None)),
                1 if dm_err.is_none() => in_ns(&base, || {
                    dm.round(
                        dm_addr,
                        window,
                        per_round,
                        dcg.as_ref().map(|c| c.path.as_path()),
                    );
                }),
                2 => in_ns(&etopo, || {
                    eg.round(world, window, per_round, Some(&ecg.path))
                }),
                _ => {}
            }
        }
    }
    drop(dnsmasq);
    let dns_rss_kib = pid.and_then(|p| proc_status_kib(p, "VmRSS"));
    eprintln!("bench: resolve, then connect");
    let (base_fresh, base_same) = in_ns(&base, || (connect_run(true), connect_run(false)));
    let (eg_fresh, eg_same) = in_ns(&etopo, || (connect_run(true), connect_run(false)));
    eprintln!("bench: PATCH /policy");
    let patches = in_ns(&etopo, || patches(&mut e));
    let end_rss_kib = pid.and_then(|p| proc_status_kib(p, "VmRSS"));
    let peak_rss_kib = pid.and_then(|p| proc_status_kib(p, "VmHWM"));
    // What stays once the allocator has given freed memory back (jemalloc's
    // background thread purges after about a second).
    std::thread::sleep(Duration::from_secs(3));
    let settled_rss_kib = pid.and_then(|p| proc_status_kib(p, "VmRSS"));
    drop(e);
    Results {
        egress: eg,
        direct,
        dnsmasq: match dm_err {
            None => Ok(dm),
            Some(err) => Err(err),
        },
        eg_fresh,
        eg_same,
        base_fresh,
        base_same,
        patches,
        idle_rss_kib,
        dns_rss_kib,
        end_rss_kib,
        settled_rss_kib,
        peak_rss_kib,
    }
}

fn us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us < 100.0 {
        format!("{us:.1} µs")
    } else {
        format!("{us:.0} µs")
    }
}

fn signed_us(a: Duration, b: Duration) -> String {
    let d = (a.as_secs_f64() - b.as_secs_f64()) * 1e6;
    format!("{d:+.0} µs")
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.1} MB", k as f64 / 1024.0))
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

fn p50_p99(r: &LoadReport) -> String {
    format!("{} / {}", us(r.pct(0.5)), us(r.pct(0.99)))
}

fn losses(r: &LoadReport) -> String {
    format!("{} failed, {} lost", r.failed, r.lost)
}

fn conn(c: &Connect, total: bool) -> String {
    let v = if total { &c.total } else { &c.after_answer };
    let mut s = format!("{} / {}", us(percentile(v, 0.5)), us(percentile(v, 0.99)));
    if c.failed > 0 {
        write!(s, " ({} failed)", c.failed).unwrap();
    }
    s
}

#[allow(clippy::too_many_lines)]
fn render(bin: &Path, window: usize, r: &Results, took: Duration) -> String {
    let mut o = String::new();
    let size = std::fs::metadata(bin).map(|m| m.len()).unwrap_or(0);
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let none = Dns::default();
    let (dm, dm_note) = match &r.dnsmasq {
        Ok(d) => (d, String::new()),
        Err(e) => (&none, format!(" (dnsmasq: {e})")),
    };
    let (e, d) = (&r.egress, &r.direct);
    writeln!(o, "## egress benchmark\n").unwrap();
    writeln!(
        o,
        "Binary `{}`; {cpus} CPUs; sandbox and world network namespaces joined by a veth pair; \
         the world's resolver is the single-threaded fake of netns-tests. Bench took {:.0} s.{dm_note}\n",
        bin.display(),
        took.as_secs_f64()
    )
    .unwrap();
    writeln!(o, "### DNS (UDP, A queries for allowed names)\n").unwrap();
    writeln!(
        o,
        "| | egress (dns+nft) | direct (no egress) | dnsmasq forwarder | target | |"
    )
    .unwrap();
    writeln!(o, "|---|---|---|---|---|---|").unwrap();
    writeln!(
        o,
        "| qps, {window} outstanding | {:.0} | {:.0} | {:.0} | ≥ dnsmasq | {} |",
        e.loaded.qps(),
        d.loaded.qps(),
        dm.loaded.qps(),
        verdict(r.dnsmasq.is_ok() && e.loaded.qps() >= dm.loaded.qps())
    )
    .unwrap();
    writeln!(
        o,
        "| p50 / p99, {window} outstanding | {} | {} | {} | | |",
        p50_p99(&e.loaded),
        p50_p99(&d.loaded),
        p50_p99(&dm.loaded)
    )
    .unwrap();
    writeln!(
        o,
        "| p50 / p99, 1 outstanding | {} | {} | {} | | |",
        p50_p99(&e.serial),
        p50_p99(&d.serial),
        p50_p99(&dm.serial)
    )
    .unwrap();
    let added = e.serial.pct(0.5).saturating_sub(d.serial.pct(0.5));
    writeln!(
        o,
        "| added p50 vs direct (1 outstanding) | {} | — | {} | egress ≤ 100 µs | {} |",
        signed_us(e.serial.pct(0.5), d.serial.pct(0.5)),
        signed_us(dm.serial.pct(0.5), d.serial.pct(0.5)),
        verdict(added <= Duration::from_micros(100))
    )
    .unwrap();
    writeln!(
        o,
        "| added p50 vs direct ({window} outstanding) | {} | — | {} | | |",
        signed_us(e.loaded.pct(0.5), d.loaded.pct(0.5)),
        signed_us(dm.loaded.pct(0.5), d.loaded.pct(0.5)),
    )
    .unwrap();
    let cpu = |d: &Dns| {
        d.cpu_per_query().map_or("—".to_string(), |(u, s)| {
            format!("{} ({} user + {} sys)", us(u + s), us(u), us(s))
        })
    };
    writeln!(
        o,
        "| CPU per answered query, {window} outstanding | {} | — | {} | | |",
        cpu(e),
        cpu(dm)
    )
    .unwrap();
    writeln!(
        o,
        "| queries (loaded run) | {} ({}) | {} ({}) | {} ({}) | | |",
        e.loaded.sent,
        losses(&e.loaded),
        d.loaded.sent,
        losses(&d.loaded),
        dm.loaded.sent,
        losses(&dm.loaded)
    )
    .unwrap();
    writeln!(
        o,
        "\n### Answer → TCP connect (p50 / p99, {CONNECT_N} iterations)\n"
    )
    .unwrap();
    writeln!(o, "| | egress (dns+nft) | direct (no egress) |").unwrap();
    writeln!(o, "|---|---|---|").unwrap();
    writeln!(
        o,
        "| answer → connect, a new address each time (first connect after its set element is added) | {} | {} |",
        conn(&r.eg_fresh, false),
        conn(&r.base_fresh, false)
    )
    .unwrap();
    writeln!(
        o,
        "| answer → connect, same name and address (198.51.100.10:80; element refreshed) | {} | {} |",
        conn(&r.eg_same, false),
        conn(&r.base_same, false)
    )
    .unwrap();
    writeln!(
        o,
        "| query sent → connect, new address each time | {} | {} |",
        conn(&r.eg_fresh, true),
        conn(&r.base_fresh, true)
    )
    .unwrap();
    writeln!(
        o,
        "\n### PATCH /policy (dns+nft; HTTP over loopback, new connection each)\n"
    )
    .unwrap();
    writeln!(
        o,
        "| rules in the PATCH | reps | p50 | p99 | target | | upstream Go |"
    )
    .unwrap();
    writeln!(o, "|---|---|---|---|---|---|---|").unwrap();
    for p in &r.patches {
        let p50 = percentile(&p.times, 0.5);
        let (target, v) = match p.target {
            Some(t) => (
                format!("≤ {}", us(t)),
                verdict(p.error.is_none() && !p.times.is_empty() && p50 <= t),
            ),
            None => (String::new(), ""),
        };
        let (p50, p99) = if p.times.is_empty() {
            ("—".to_string(), "—".to_string())
        } else {
            (us(p50), us(percentile(&p.times, 0.99)))
        };
        let mut reps = p.times.len().to_string();
        if let Some(err) = &p.error {
            write!(reps, " then **failed**: {}", err.replace('|', "/")).unwrap();
        }
        writeln!(
            o,
            "| {} | {reps} | {p50} | {p99} | {target} | {v} | {} |",
            p.label, p.upstream
        )
        .unwrap();
    }
    writeln!(o, "\n### Footprint\n").unwrap();
    writeln!(o, "| | egress | upstream Go |").unwrap();
    writeln!(o, "|---|---|---|").unwrap();
    writeln!(o, "| binary size | {:.1} MB | 23.6 MB |", size as f64 / 1e6).unwrap();
    writeln!(
        o,
        "| idle RSS (VmRSS after start) | {} | 14.5 MB |",
        mib(r.idle_rss_kib)
    )
    .unwrap();
    writeln!(
        o,
        "| RSS after the DNS runs / right after the PATCH runs / 3 s later (VmRSS) / peak (VmHWM) | {} / {} / {} / {} | |",
        mib(r.dns_rss_kib),
        mib(r.end_rss_kib),
        mib(r.settled_rss_kib),
        mib(r.peak_rss_kib)
    )
    .unwrap();
    writeln!(o, "\nNotes:\n").unwrap();
    writeln!(
        o,
        "- 1 outstanding: {SERIAL_N} queries one after another (pure latency); \
         {window} outstanding: one socket keeping {window} queries in flight, names cycling over \
         {LOAD_NAMES} so no two in flight are the same. Each path is warmed up with {WARMUP_N} queries, \
         then the paths take turns over {ROUNDS} rounds (both runs in each) so that drift of the machine \
         hits them alike. Direct and dnsmasq run in a topology of their own without egress."
    )
    .unwrap();
    writeln!(
        o,
        "- CPU per query: the forwarder's cgroup `cpu.stat` over the loaded runs, divided by the answers; \
         system time includes delivering the packets it sends (softirq) to the receiving socket."
    )
    .unwrap();
    let max = e.loaded.qps().max(d.loaded.qps()).max(dm.loaded.qps());
    let min = e.loaded.qps().min(d.loaded.qps()).min(dm.loaded.qps());
    if max > 0.0 && min / max > 0.9 {
        writeln!(
            o,
            "- The three qps are within 10% of each other: the single-threaded fake resolver \
             (or the client) is likely the limit for all of them, not egress or dnsmasq."
        )
        .unwrap();
    } else {
        writeln!(
            o,
            "- Direct qps is the ceiling set by the fake resolver and the client on this machine; \
             egress and dnsmasq add their own work (and share the same {cpus} CPUs)."
        )
        .unwrap();
    }
    writeln!(
        o,
        "- PATCH: each repetition first resets the policy (POST, untimed), then PATCHes rules new to it \
         (¼ allowed domains, ¼ allowed addresses, ¼ allowed /30 blocks, ¼ denied addresses); \
         \"domains only\" PATCHes allowed domains alone (no nftables set elements); \
         the last row PATCHes one rule onto a 10,000-rule policy. HTTP timing includes the TCP connect. \
         Upstream's 16 ms is the figure quoted for a PATCH in dns+nft mode (its size not given)."
    )
    .unwrap();
    o
}

fn main() {
    if !is_root() {
        println!(
            "SKIPPED egress bench: needs root for network namespaces, cgroups and nftables \
             (run: sudo bash bench/egress.sh)"
        );
        return;
    }
    let bin = egress_bin();
    let window = env_usize("BENCH_WINDOW", 16);
    let total = env_usize("BENCH_DNS_N", 50_000);
    let started = Instant::now();
    let results = run(&bin, window, total);
    let table = render(&bin, window, &results, started.elapsed());
    println!("{table}");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        std::path::PathBuf::from,
    );
    let out = target.join("bench-egress.md");
    match std::fs::write(&out, &table) {
        Ok(()) => eprintln!("bench: wrote {}", out.display()),
        Err(e) => eprintln!("bench: cannot write {}: {e}", out.display()),
    }
}
