//! End-to-end benchmark of execd, run on demand with
//! `cargo bench -p execd --bench command_roundtrip` (or `bench/run.sh`).
//!
//! It starts the release binary (`EXECD_BIN`, else the static musl build in
//! `target/x86_64-unknown-linux-musl/release/execd`) twice on free ports: once
//! with the default configuration and once with `-warm-shells=0`. It reports,
//! in one run, the round trip of `POST /command {"command":"true"}` to the end
//! of its event stream (p50, p99, ...) in three scenarios, each over its own
//! keep-alive connection and each side by side with the floor, a direct
//! spawn-and-wait of `bash -c true` (the shell every command runs in):
//!
//! - closed loop (the headline): the next request is sent as soon as the
//!   previous response has ended, default configuration. The warm-shell pool
//!   often cannot refill in time, so results are bimodal;
//! - think time: the same, with a pause of [`THINK`] before every request,
//!   as an agent would leave, default configuration. The pause is not
//!   counted, and the floor of this row pauses the same way before every
//!   spawn;
//! - cold path: closed loop against the `-warm-shells=0` instance, where every
//!   command forks bash, to show what warm shells buy.
//!
//! All scenarios and both floors are measured in interleaved blocks, their
//! order rotating from one round of blocks to the next, so that a noisy
//! machine penalises all alike. The report also gives execd's CPU time per
//! command, the default instance's idle RSS, its RSS after at least 1,000
//! commands and its peak RSS, and the size of the binary under test and
//! whether it is static.
//!
//! execd and the floor's bash get the same small environment (`PATH`,
//! `HOME`, `LANG`, `TMPDIR`), as in a sandbox. The table is printed and
//! written to `target/bench-command-roundtrip.md`.
//! `BENCH_N` sets the number of measured round trips per scenario and per
//! floor (default 2000).
//!
//! Built with `harness = false`: under `cargo test --benches` (no `--bench`
//! argument) it skips itself instead of running the whole benchmark.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Unmeasured execd commands per scenario before the measurement.
const WARMUP: usize = 200;
/// Unmeasured floor spawns before the measurement.
const WARMUP_FLOOR: usize = 50;
/// Round trips per block; the blocks of the scenarios and floors alternate.
const BLOCK: usize = 100;
/// Default measured round trips per scenario and per floor.
const DEFAULT_N: usize = 2000;
/// Commands execd must have run before "RSS after 1,000 commands" is read.
const RSS_AFTER: usize = 1000;
/// The pause before every request of the think-time scenario (and before
/// every spawn of its floor), not counted in the latency.
const THINK: Duration = Duration::from_millis(5);
/// More failed round trips of one scenario than this abort the run early.
const MAX_FAILURES: usize = 10;
/// The request body.
const BODY: &str = r#"{"command":"true"}"#;
/// What the terminal event of a successful command contains.
const COMPLETE: &str = r#""type":"execution_complete""#;
/// What the terminal event of a failed command contains.
const ERROR: &str = r#""type":"error""#;

/// Targets from the issue.
const TARGET_RATIO: f64 = 1.3;
const TARGET_IDLE_RSS: u64 = 4_000_000;
const TARGET_BINARY: u64 = 4_000_000;

/// Upstream's Go execd, measured on this machine the same way (from the issue).
const UPSTREAM_P50: &str = "3.1 ms (2.35x)";
const UPSTREAM_IDLE_RSS: &str = "18.8 MB";
const UPSTREAM_RSS_1000: &str = "58 MB";
const UPSTREAM_BINARY: &str = "33.6 MB";

type Result<T> = std::result::Result<T, String>;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not.
    if !std::env::args().any(|a| a == "--bench") {
        println!("command_roundtrip: skipped (run it with `cargo bench -p execd --bench command_roundtrip`)");
        return;
    }
    if let Err(e) = run() {
        eprintln!("command_roundtrip: {e}");
        std::process::exit(1);
    }
}

/// The running execd; killed and reaped when dropped, also on panic.
struct Execd {
    child: Child,
    port: u16,
}

impl Execd {
    fn start(bin: &Path, args: &[&str], log: &Path, env: &[(String, String)]) -> Result<Self> {
        let port = free_port()?;
        let out =
            std::fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("dup {}: {e}", log.display()))?;
        let child = Command::new(bin)
            .arg(format!("-port={port}"))
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        let mut execd = Self { child, port };
        execd.wait_ready()?;
        Ok(execd)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Polls `GET /ping` until it answers 200.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("execd exited during startup: {status}"));
            }
            if let Ok(mut conn) = Conn::connect(self.addr()) {
                if let Ok(resp) = conn.request("GET", "/ping", "") {
                    if resp.status == 200 {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!("execd did not answer /ping on {}", self.addr()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Execd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

/// One HTTP/1.1 response.
struct Response {
    status: u16,
    body: Vec<u8>,
    /// When the terminal event had arrived, if it did.
    terminal_at: Option<Instant>,
    /// The server will close the connection.
    close: bool,
}

/// A keep-alive HTTP/1.1 client connection, just enough for execd.
struct Conn {
    rd: BufReader<TcpStream>,
    host: String,
}

impl Conn {
    fn connect(addr: SocketAddr) -> Result<Self> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| format!("read timeout: {e}"))?;
        Ok(Self {
            rd: BufReader::with_capacity(16 * 1024, s),
            host: addr.to_string(),
        })
    }

    /// Sends one request (a single write) and reads its whole response.
    fn request(&mut self, method: &str, path: &str, body: &str) -> Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        if !body.is_empty() {
            let _ = write!(
                req,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.rd
            .get_mut()
            .write_all(req.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        self.read_response(method == "HEAD")
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = self
            .rd
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed by execd".into());
        }
        if !line.ends_with("\r\n") {
            return Err(format!("malformed line {line:?}"));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    fn read_response(&mut self, head: bool) -> Result<Response> {
        let status_line = self.line()?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("malformed status line {status_line:?}"))?;
        let mut close = version == "HTTP/1.0";
        let mut length: Option<usize> = None;
        let mut chunked = false;
        loop {
            let h = self.line()?;
            if h.is_empty() {
                break;
            }
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| format!("malformed header {h:?}"))?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse().map_err(|_| format!("bad {h:?}"))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        let mut resp = Response {
            status,
            body: Vec::new(),
            terminal_at: None,
            close,
        };
        if head || status == 204 || status == 304 || (100..200).contains(&status) {
            return Ok(resp);
        }
        if chunked {
            self.read_chunked(&mut resp)?;
        } else if let Some(n) = length {
            resp.body.resize(n, 0);
            self.rd
                .read_exact(&mut resp.body)
                .map_err(|e| format!("read body: {e}"))?;
            note_terminal(&mut resp);
        } else {
            // Delimited by the end of the connection.
            self.rd
                .read_to_end(&mut resp.body)
                .map_err(|e| format!("read body: {e}"))?;
            note_terminal(&mut resp);
            resp.close = true;
        }
        Ok(resp)
    }

    fn read_chunked(&mut self, resp: &mut Response) -> Result<()> {
        loop {
            let size_line = self.line()?;
            let hex = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(hex, 16)
                .map_err(|_| format!("malformed chunk size {size_line:?}"))?;
            if size == 0 {
                // Trailers, then the empty line.
                while !self.line()?.is_empty() {}
                return Ok(());
            }
            let start = resp.body.len();
            resp.body.resize(start + size, 0);
            self.rd
                .read_exact(&mut resp.body[start..])
                .map_err(|e| format!("read chunk: {e}"))?;
            let mut crlf = [0u8; 2];
            self.rd
                .read_exact(&mut crlf)
                .map_err(|e| format!("read chunk end: {e}"))?;
            if &crlf != b"\r\n" {
                return Err("chunk not followed by CRLF".into());
            }
            note_terminal(resp);
        }
    }
}

/// Records when the body first holds a terminal event.
fn note_terminal(resp: &mut Response) {
    if resp.terminal_at.is_none() {
        let body = String::from_utf8_lossy(&resp.body);
        if body.contains(COMPLETE) || body.contains(ERROR) {
            resp.terminal_at = Some(Instant::now());
        }
    }
}

/// Latencies of one side, in seconds.
#[derive(Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64());
    }

    /// Nearest-rank percentile, `q` in (0, 1].
    fn pct(&self, q: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }

    fn mean(&self) -> f64 {
        let n = self.0.len() as f64;
        self.0.iter().sum::<f64>() / n
    }
}

/// The execd side of the measurement: one keep-alive connection.
struct Client {
    addr: SocketAddr,
    conn: Option<Conn>,
    commands: usize,
    failures: Vec<String>,
}

impl Client {
    /// One `POST /command`: (time to the end of the stream, time to the
    /// terminal event), or `None` if it failed.
    fn roundtrip(&mut self) -> Result<Option<(Duration, Duration)>> {
        if self.conn.is_none() {
            self.conn = Some(Conn::connect(self.addr)?);
        }
        let conn = self.conn.as_mut().ok_or("no connection")?;
        self.commands += 1;
        let t0 = Instant::now();
        let outcome = conn.request("POST", "/command", BODY);
        let end = t0.elapsed();
        let problem = match outcome {
            Ok(resp) => {
                if resp.close {
                    self.conn = None;
                }
                let text = String::from_utf8_lossy(&resp.body);
                if resp.status != 200 {
                    Some(format!("status {}: {text}", resp.status))
                } else if !text.contains(COMPLETE) {
                    Some(format!("no execution_complete event: {text}"))
                } else {
                    let terminal = resp.terminal_at.map_or(end, |t| t - t0);
                    return Ok(Some((end, terminal)));
                }
            }
            Err(e) => {
                self.conn = None;
                Some(e)
            }
        };
        if let Some(p) = problem {
            self.failures.push(p);
        }
        if self.failures.len() > MAX_FAILURES {
            return Err(format!(
                "too many failed round trips; first: {}",
                self.failures[0]
            ));
        }
        Ok(None)
    }
}

/// One execd scenario: a client of one instance, with or without a pause
/// before every request.
struct Scenario {
    client: Client,
    /// The instance, for its CPU time.
    pid: u32,
    /// Slept before every request, outside the measured time.
    think: Duration,
    /// Time to the end of the event stream.
    end: Samples,
    /// Time to the terminal event.
    terminal: Samples,
    /// Round trips measured, successful or not.
    measured: usize,
    /// execd's CPU time during the measured blocks.
    cpu: Duration,
}

impl Scenario {
    fn new(execd: &Execd, think: Duration) -> Self {
        Self {
            client: Client {
                addr: execd.addr(),
                conn: None,
                commands: 0,
                failures: Vec::new(),
            },
            pid: execd.pid(),
            think,
            end: Samples::default(),
            terminal: Samples::default(),
            measured: 0,
            cpu: Duration::ZERO,
        }
    }

    /// One round trip after the pause, measured or not.
    fn once(&mut self) -> Result<Option<(Duration, Duration)>> {
        if !self.think.is_zero() {
            std::thread::sleep(self.think);
        }
        self.client.roundtrip()
    }

    fn warm_up(&mut self) -> Result<()> {
        for _ in 0..WARMUP {
            self.once()?;
        }
        Ok(())
    }

    /// `k` measured round trips.
    fn block(&mut self, k: usize) -> Result<()> {
        let cpu_before = cpu_time(self.pid)?;
        for _ in 0..k {
            if let Some((end, terminal)) = self.once()? {
                self.end.push(end);
                self.terminal.push(terminal);
            }
        }
        self.cpu += cpu_time(self.pid)?.saturating_sub(cpu_before);
        self.measured += k;
        Ok(())
    }

    fn cpu_per_command(&self) -> f64 {
        self.cpu.as_secs_f64() / self.measured.max(1) as f64
    }
}

/// The floor, with or without a pause before every spawn.
struct Floor {
    think: Duration,
    samples: Samples,
}

impl Floor {
    /// `k` measured spawns.
    fn block(&mut self, k: usize, bash: &Path, env: &[(String, String)]) -> Result<()> {
        for _ in 0..k {
            if !self.think.is_zero() {
                std::thread::sleep(self.think);
            }
            self.samples.push(floor_once(bash, env)?);
        }
        Ok(())
    }
}

/// What one block measures.
#[derive(Clone, Copy)]
enum Side {
    ClosedLoop,
    Floor,
    ThinkTime,
    FloorThinkTime,
    ColdPath,
}

/// The order of the blocks in the first round; later rounds rotate it.
const SIDES: [Side; 5] = [
    Side::ClosedLoop,
    Side::Floor,
    Side::ThinkTime,
    Side::FloorThinkTime,
    Side::ColdPath,
];

/// "a / b / ..." of the values, each formatted by `f`.
fn joined(values: &[f64], f: impl Fn(f64) -> String) -> String {
    values.iter().map(|&v| f(v)).collect::<Vec<_>>().join(" / ")
}

/// "1.23x / 0.98x / ..." of the execd values over the floor values.
fn ratios(execd: &[f64], floor: &[f64]) -> String {
    let r: Vec<f64> = execd.iter().zip(floor).map(|(e, f)| e / f).collect();
    joined(&r, |v| format!("{v:.2}x"))
}

/// The direct spawn-and-wait of `bash -c true`.
fn floor_once(bash: &Path, env: &[(String, String)]) -> Result<Duration> {
    let t0 = Instant::now();
    let status = Command::new(bash)
        .args(["-c", "true"])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .status()
        .map_err(|e| format!("spawn {}: {e}", bash.display()))?;
    let d = t0.elapsed();
    if !status.success() {
        return Err(format!("bash -c true: {status}"));
    }
    Ok(d)
}

/// The environment of execd and of the floor's bash alike: a small one, as
/// in a sandbox, rather than everything `cargo bench` exports (a bigger
/// environment slows every bash start, and `EXECD_*` variables would
/// configure execd).
fn bench_env() -> Vec<(String, String)> {
    ["PATH", "HOME", "LANG", "TMPDIR"]
        .iter()
        .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
        .collect()
}

/// `bash` as execd finds it: the first executable in `PATH`.
fn find_bash() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("bash"))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| PathBuf::from("/bin/bash"))
}

/// A `Vm*` field of `/proc/<pid>/status`, in bytes.
fn proc_status(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("no {field} in {path}"))
}

/// CPU time of all of `pid`'s threads so far, from their `schedstat`.
fn cpu_time(pid: u32) -> Result<Duration> {
    let dir = format!("/proc/{pid}/task");
    let mut ns = 0u64;
    for t in std::fs::read_dir(&dir).map_err(|e| format!("read {dir}: {e}"))? {
        let t = t.map_err(|e| format!("read {dir}: {e}"))?;
        // Threads may exit in between: skip what vanished.
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(Duration::from_nanos(ns))
}

fn ms(s: f64) -> String {
    format!("{:.3} ms", s * 1e3)
}

fn mb(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

fn run() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?
        .to_path_buf();
    let target = root.join("target");
    let bin = match std::env::var_os("EXECD_BIN") {
        Some(b) => PathBuf::from(b),
        None => target.join("x86_64-unknown-linux-musl/release/execd"),
    };
    if !bin.is_file() {
        return Err(format!(
            "no execd binary at {}: build it with\n    cargo build --release --target x86_64-unknown-linux-musl -p execd\nor point EXECD_BIN at one",
            bin.display()
        ));
    }
    let n: usize = match std::env::var("BENCH_N") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("BENCH_N={v:?} is not a positive number"))?,
        Err(_) => DEFAULT_N,
    };
    let bash = find_bash();
    std::fs::create_dir_all(&target).map_err(|e| format!("create {}: {e}", target.display()))?;

    let env = bench_env();
    // Both instances are killed when dropped, on every way out of here.
    let execd = Execd::start(
        &bin,
        &[],
        &target.join("bench-command-roundtrip.execd.log"),
        &env,
    )?;
    let cold = Execd::start(
        &bin,
        &["-warm-shells=0"],
        &target.join("bench-command-roundtrip.cold.execd.log"),
        &env,
    )?;
    let pid = execd.pid();
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss = proc_status(pid, "VmRSS")?;

    let mut closed = Scenario::new(&execd, Duration::ZERO);
    let mut think = Scenario::new(&execd, THINK);
    let mut cold_path = Scenario::new(&cold, Duration::ZERO);
    let mut floor = Floor {
        think: Duration::ZERO,
        samples: Samples::default(),
    };
    let mut floor_think = Floor {
        think: THINK,
        samples: Samples::default(),
    };
    closed.warm_up()?;
    think.warm_up()?;
    cold_path.warm_up()?;
    for _ in 0..WARMUP_FLOOR {
        floor_once(&bash, &env)?;
    }

    let mut left = n;
    let mut round = 0;
    while left > 0 {
        let k = left.min(BLOCK);
        for i in 0..SIDES.len() {
            match SIDES[(round + i) % SIDES.len()] {
                Side::ClosedLoop => closed.block(k)?,
                Side::Floor => floor.block(k, &bash, &env)?,
                Side::ThinkTime => think.block(k)?,
                Side::FloorThinkTime => floor_think.block(k, &bash, &env)?,
                Side::ColdPath => cold_path.block(k)?,
            }
        }
        left -= k;
        round += 1;
    }
    drop(cold);
    while closed.client.commands + think.client.commands < RSS_AFTER {
        closed.client.roundtrip()?;
    }
    let rss_after = proc_status(pid, "VmRSS")?;
    let peak_rss = proc_status(pid, "VmHWM")?;
    let total_commands = closed.client.commands + think.client.commands;
    drop(execd);

    let size = std::fs::metadata(&bin)
        .map_err(|e| format!("stat {}: {e}", bin.display()))?
        .len();
    let file_says = Command::new("file")
        .arg("-b")
        .arg(&bin)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let linkage = match &file_says {
        Some(s) if s.contains("static-pie linked") => "static-pie",
        Some(s) if s.contains("statically linked") => "static",
        Some(s) if s.contains("dynamically linked") => "dynamic",
        Some(_) => "unknown linkage",
        None => "`file` unavailable",
    };
    let is_static = linkage.starts_with("static");

    let p50_p99 = |s: &Samples| [s.pct(0.50), s.pct(0.99)];
    let floor_p = p50_p99(&floor.samples);
    let closed_p = p50_p99(&closed.end);
    let ratio = closed_p[0] / floor_p[0];
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let think_ms = THINK.as_millis();

    let mut out = String::new();
    let _ = writeln!(out, "## execd command round trip\n");
    let _ = writeln!(
        out,
        "Binary `{}`; bash `{}`; {cpus} CPUs; environment of execd and the floor: {}. {n} round trips per scenario and per floor after {WARMUP} warm-up commands per scenario, all interleaved in blocks of {BLOCK} (order rotating each round); each scenario over its own keep-alive connection. Closed loop: next request as soon as the previous response ends. Think time: {think_ms} ms pause before each request (not counted), and before each spawn of its floor. Cold path: closed loop against a second instance with `-warm-shells=0`. Other rows: the default instance.\n",
        bin.display(),
        bash.display(),
        env.iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "| metric | execd | floor (`bash -c true`) | ratio | target | upstream Go execd (from the issue) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let _ = writeln!(
        out,
        "| closed loop p50 / p99 | {} | {} | {} | p50 <= {TARGET_RATIO}x floor: {} | p50 {UPSTREAM_P50} |",
        joined(&closed_p, ms),
        joined(&floor_p, ms),
        ratios(&closed_p, &floor_p),
        verdict(ratio <= TARGET_RATIO)
    );
    let spread = |s: &Samples| [s.pct(0.10), s.pct(0.90), s.mean()];
    let (closed_s, floor_s) = (spread(&closed.end), spread(&floor.samples));
    let _ = writeln!(
        out,
        "| closed loop p10 / p90 / mean | {} | {} | {} | | |",
        joined(&closed_s, ms),
        joined(&floor_s, ms),
        ratios(&closed_s, &floor_s)
    );
    let terminal_p = p50_p99(&closed.terminal);
    let _ = writeln!(
        out,
        "| closed loop to terminal event p50 / p99 | {} | | {} | | |",
        joined(&terminal_p, ms),
        ratios(&terminal_p, &floor_p)
    );
    let (think_p, floor_think_p) = (p50_p99(&think.end), p50_p99(&floor_think.samples));
    let _ = writeln!(
        out,
        "| {think_ms} ms think time p50 / p99 | {} | {} (same pause) | {} | | |",
        joined(&think_p, ms),
        joined(&floor_think_p, ms),
        ratios(&think_p, &floor_think_p)
    );
    let cold_p = p50_p99(&cold_path.end);
    let _ = writeln!(
        out,
        "| cold path (`-warm-shells=0`) p50 / p99 | {} | {} | {} | | |",
        joined(&cold_p, ms),
        joined(&floor_p, ms),
        ratios(&cold_p, &floor_p)
    );
    let _ = writeln!(
        out,
        "| execd CPU time per command: closed loop / think time / cold path | {} | | | | |",
        joined(
            &[
                closed.cpu_per_command(),
                think.cpu_per_command(),
                cold_path.cpu_per_command()
            ],
            ms
        )
    );
    let _ = writeln!(
        out,
        "| idle RSS | {} | | | < 4 MB: {} | {UPSTREAM_IDLE_RSS} |",
        mb(idle_rss),
        verdict(idle_rss < TARGET_IDLE_RSS)
    );
    let _ = writeln!(
        out,
        "| RSS after {total_commands} commands | {} | | | | {UPSTREAM_RSS_1000} (after 1,000) |",
        mb(rss_after)
    );
    let _ = writeln!(out, "| peak RSS (VmHWM) | {} | | | | |", mb(peak_rss));
    let _ = writeln!(
        out,
        "| binary size | {} ({size} B, {linkage}) | | | static < 4 MB: {} | {UPSTREAM_BINARY} |",
        mb(size),
        verdict(is_static && size < TARGET_BINARY)
    );
    let failures: Vec<&String> = [&closed, &think, &cold_path]
        .iter()
        .flat_map(|s| &s.client.failures)
        .collect();
    let _ = writeln!(
        out,
        "| failed round trips: closed loop / think time / cold path | {} / {} / {} | | | 0 | |",
        closed.client.failures.len(),
        think.client.failures.len(),
        cold_path.client.failures.len()
    );
    for f in failures.iter().take(3) {
        let _ = writeln!(out, "\nfailure: {f}");
    }

    print!("{out}");
    let report = target.join("bench-command-roundtrip.md");
    std::fs::write(&report, &out).map_err(|e| format!("write {}: {e}", report.display()))?;
    println!("\n(written to {})", report.display());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} round trips failed", failures.len()))
    }
}
