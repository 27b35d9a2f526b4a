//! End-to-end benchmark of execd, run on demand with
//! `cargo bench -p execd --bench command_roundtrip` (or `bench/run.sh`).
//!
//! It starts the release binary (`EXECD_BIN`, else the static musl build in
//! `target/x86_64-unknown-linux-musl/release/execd`) on a free port and
//! reports, in one run:
//!
//! - the round trip of `POST /command {"command":"true"}` to the end of its
//!   event stream over one keep-alive connection (p50, p99, mean), side by
//!   side with the floor: a direct spawn-and-wait of `bash -c true`, the
//!   shell every command runs in. The two are measured in interleaved blocks
//!   so that a noisy machine penalises both alike;
//! - execd's idle RSS, its RSS after at least 1,000 commands and its peak RSS;
//! - the size of the binary under test, and whether it is static.
//!
//! execd and the floor's bash get the same small environment (`PATH`,
//! `HOME`, `LANG`, `TMPDIR`), as in a sandbox. The table is printed and
//! written to `target/bench-command-roundtrip.md`.
//! `BENCH_N` sets the number of measured round trips per side (default 2000).
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

/// Unmeasured execd commands before the measurement.
const WARMUP: usize = 200;
/// Unmeasured floor spawns before the measurement.
const WARMUP_FLOOR: usize = 50;
/// Round trips per block; execd and floor blocks alternate.
const BLOCK: usize = 100;
/// Default measured round trips per side.
const DEFAULT_N: usize = 2000;
/// Commands execd must have run before "RSS after 1,000 commands" is read.
const RSS_AFTER: usize = 1000;
/// More failed round trips than this abort the run early.
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
    fn start(bin: &Path, log: &Path, env: &[(String, String)]) -> Result<Self> {
        let port = free_port()?;
        let out =
            std::fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("dup {}: {e}", log.display()))?;
        let child = Command::new(bin)
            .arg(format!("-port={port}"))
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
    let log = target.join("bench-command-roundtrip.execd.log");

    let env = bench_env();
    let execd = Execd::start(&bin, &log, &env)?;
    let pid = execd.pid();
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss = proc_status(pid, "VmRSS")?;

    let mut client = Client {
        addr: execd.addr(),
        conn: None,
        commands: 0,
        failures: Vec::new(),
    };
    for _ in 0..WARMUP {
        client.roundtrip()?;
    }
    for _ in 0..WARMUP_FLOOR {
        floor_once(&bash, &env)?;
    }

    let mut execd_end = Samples::default();
    let mut execd_terminal = Samples::default();
    let mut floor = Samples::default();
    let cpu_before = cpu_time(pid)?;
    let mut left = n;
    while left > 0 {
        let k = left.min(BLOCK);
        for _ in 0..k {
            if let Some((end, terminal)) = client.roundtrip()? {
                execd_end.push(end);
                execd_terminal.push(terminal);
            }
        }
        for _ in 0..k {
            floor.push(floor_once(&bash, &env)?);
        }
        left -= k;
    }
    let cpu_per_command = (cpu_time(pid)? - cpu_before).as_secs_f64() / n as f64;
    while client.commands < RSS_AFTER {
        client.roundtrip()?;
    }
    let rss_after = proc_status(pid, "VmRSS")?;
    let peak_rss = proc_status(pid, "VmHWM")?;
    let total_commands = client.commands;
    let failures = std::mem::take(&mut client.failures);
    drop(client);
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

    let (e50, f50) = (execd_end.pct(0.50), floor.pct(0.50));
    let (e99, f99) = (execd_end.pct(0.99), floor.pct(0.99));
    let (emean, fmean) = (execd_end.mean(), floor.mean());
    let t50 = execd_terminal.pct(0.50);
    let t99 = execd_terminal.pct(0.99);
    let ratio = e50 / f50;
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);

    let mut out = String::new();
    let _ = writeln!(out, "## execd command round trip\n");
    let _ = writeln!(
        out,
        "Binary `{}`; bash `{}`; {cpus} CPUs; environment of execd and the floor: {}. {n} round trips per side after {WARMUP} warm-up commands, execd and floor interleaved in blocks of {BLOCK}; execd over one keep-alive connection.\n",
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
        "| round trip p50 | {} | {} | {ratio:.2}x | <= {TARGET_RATIO}x floor: {} | {UPSTREAM_P50} |",
        ms(e50),
        ms(f50),
        verdict(ratio <= TARGET_RATIO)
    );
    let _ = writeln!(
        out,
        "| round trip p99 | {} | {} | {:.2}x | | |",
        ms(e99),
        ms(f99),
        e99 / f99
    );
    let _ = writeln!(
        out,
        "| round trip p10 / p90 | {} / {} | {} / {} | {:.2}x / {:.2}x | | |",
        ms(execd_end.pct(0.10)),
        ms(execd_end.pct(0.90)),
        ms(floor.pct(0.10)),
        ms(floor.pct(0.90)),
        execd_end.pct(0.10) / floor.pct(0.10),
        execd_end.pct(0.90) / floor.pct(0.90)
    );
    let _ = writeln!(
        out,
        "| round trip mean | {} | {} | {:.2}x | | |",
        ms(emean),
        ms(fmean),
        emean / fmean
    );
    let _ = writeln!(
        out,
        "| to terminal event p50 / p99 | {} / {} | | {:.2}x | | |",
        ms(t50),
        ms(t99),
        t50 / f50
    );
    let _ = writeln!(
        out,
        "| execd CPU time per command | {} | | | | |",
        ms(cpu_per_command)
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
    let _ = writeln!(out, "| failed round trips | {} | | | 0 | |", failures.len());
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
