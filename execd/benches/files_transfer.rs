//! File transfer benchmark, run on demand with
//! `cargo bench -p execd --bench files_transfer` (or `bench/files.sh`).
//!
//! It starts the release binary (`EXECD_BIN`, else the static musl build)
//! and, side by side in one run, the floors:
//!
//! - download: `python3 -m http.server` serving the same directory, and
//!   nginx (`sendfile on`) when it is installed;
//! - upload: a raw pipe, a plain TCP server in this process that copies the
//!   request body to a file with a 1 MiB buffer and fsyncs it, as execd does
//!   (no HTTP parsing beyond the head, no multipart, no rename).
//!
//! The same client code drives every side: a new connection per request,
//! the body sent from the file with `std::io::copy` and read into a 1 MiB
//! buffer. 1 MiB transfers are timed one by one (p50/p99 over
//! `BENCH_SMALL_N`, default 300, interleaved in blocks); 1 GiB transfers
//! are timed `BENCH_BIG_N` times (default 3) each, interleaved, and reported
//! as throughput (best and median). RSS is each server's peak (`VmHWM`) and
//! current RSS after the transfers. Files live in `BENCH_DIR` (default
//! `/dev/shm`, so that the disk does not decide the result; set it to a disk
//! directory to include the disk). The table is printed and written to
//! `target/bench-files.md`.

#[path = "../tests/common/listen.rs"]
mod listen;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const SMALL: u64 = 1 << 20;
const BIG: u64 = 1 << 30;
const BLOCK: usize = 25;
const BOUNDARY: &str = "benchboundary7f3a9c";

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(()); // `cargo test --benches` asks for a list
    }
    let root = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/dev/shm".into());
    let dir = PathBuf::from(root).join(format!("execd-bench-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn env_n(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(dir: &Path) -> Result<()> {
    let small_n = env_n("BENCH_SMALL_N", 300);
    let big_n = env_n("BENCH_BIG_N", 3);
    fill(&dir.join("small.bin"), SMALL)?;
    fill(&dir.join("big.bin"), BIG)?;
    let bin = std::env::var("EXECD_BIN").map_or_else(
        |_| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/x86_64-unknown-linux-musl/release/execd")
        },
        PathBuf::from,
    );
    let execd = Server::execd(&bin, dir)?;
    let python = Server::python(dir)?;
    let nginx = Server::nginx(dir).ok();
    let raw = RawSink::start(dir)?;
    let mut downloads: Vec<(&str, &Server, String)> = vec![
        ("execd", &execd, "/files/download?path=".to_string()),
        ("python3 http.server", &python, "/".to_string()),
    ];
    if let Some(n) = &nginx {
        downloads.push(("nginx (sendfile)", n, "/".to_string()));
    }
    let dl_path = |prefix: &str, name: &str| {
        if prefix.starts_with("/files") {
            format!("{prefix}{}", dir.join(name).display())
        } else {
            format!("/{name}")
        }
    };

    // 1 MiB downloads, interleaved blocks.
    let mut small_dl: Vec<Vec<f64>> = vec![Vec::new(); downloads.len()];
    for (i, (_, s, prefix)) in downloads.iter().enumerate() {
        for _ in 0..20 {
            download(s.port, &dl_path(prefix, "small.bin"), SMALL)?; // warm-up
        }
        let _ = i;
    }
    while small_dl[0].len() < small_n {
        for (i, (_, s, prefix)) in downloads.iter().enumerate() {
            for _ in 0..BLOCK {
                small_dl[i].push(download(s.port, &dl_path(prefix, "small.bin"), SMALL)?);
            }
        }
    }
    // 1 MiB uploads.
    let small_src = dir.join("small.bin");
    let up_target = dir.join("up-small.bin");
    let mut small_up = [Vec::new(), Vec::new()];
    for _ in 0..20 {
        upload_execd(execd.port, &small_src, &up_target)?;
        upload_raw(raw.port, &small_src)?;
    }
    while small_up[0].len() < small_n {
        for _ in 0..BLOCK {
            small_up[0].push(upload_execd(execd.port, &small_src, &up_target)?);
        }
        for _ in 0..BLOCK {
            small_up[1].push(upload_raw(raw.port, &small_src)?);
        }
    }
    // 1 GiB transfers.
    let mut big_dl: Vec<Vec<f64>> = vec![Vec::new(); downloads.len()];
    let mut big_up = [Vec::new(), Vec::new()];
    let big_src = dir.join("big.bin");
    let big_target = dir.join("up-big.bin");
    for _ in 0..big_n {
        for (i, (_, s, prefix)) in downloads.iter().enumerate() {
            big_dl[i].push(download(s.port, &dl_path(prefix, "big.bin"), BIG)?);
        }
        big_up[0].push(upload_execd(execd.port, &big_src, &big_target)?);
        let _ = std::fs::remove_file(&big_target);
        big_up[1].push(upload_raw(raw.port, &big_src)?);
    }

    let mut out = String::new();
    writeln!(
        out,
        "files benchmark: {} x 1 MiB and {} x 1 GiB per side, files in {}, binary {}\n",
        small_n,
        big_n,
        dir.parent().unwrap_or(dir).display(),
        bin.display()
    )?;
    writeln!(out, "| transfer | server | p50 | p99 | throughput (best / median) | vs first floor (median) | peak RSS / RSS after |")?;
    writeln!(out, "|---|---|---|---|---|---|---|")?;
    let floor_small = pct(&small_dl[1], 50.0);
    let floor_big = median_tp(&big_dl[1], BIG);
    for (i, (name, s, _)) in downloads.iter().enumerate() {
        let (hwm, rss) = s.rss();
        row(
            &mut out,
            "download 1 MiB",
            name,
            &small_dl[i],
            SMALL,
            floor_small,
            "",
        )?;
        row(
            &mut out,
            "download 1 GiB",
            name,
            &big_dl[i],
            BIG,
            floor_big,
            &format!("{:.1} / {:.1} MB", mb(hwm), mb(rss)),
        )?;
    }
    let (hwm, rss) = execd.rss();
    row(
        &mut out,
        "upload 1 MiB",
        "execd (multipart, atomic)",
        &small_up[0],
        SMALL,
        pct(&small_up[1], 50.0),
        "",
    )?;
    row(
        &mut out,
        "upload 1 MiB",
        "raw pipe to file + fsync",
        &small_up[1],
        SMALL,
        pct(&small_up[1], 50.0),
        "",
    )?;
    let raw_big = median_tp(&big_up[1], BIG);
    row(
        &mut out,
        "upload 1 GiB",
        "execd (multipart, atomic)",
        &big_up[0],
        BIG,
        raw_big,
        &format!("{:.1} / {:.1} MB", mb(hwm), mb(rss)),
    )?;
    row(
        &mut out,
        "upload 1 GiB",
        "raw pipe to file + fsync",
        &big_up[1],
        BIG,
        raw_big,
        "",
    )?;
    print!("{out}");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-files.md");
    std::fs::write(target, &out)?;
    raw.stop();
    Ok(())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Writes `len` bytes of a cheap pseudo-random pattern.
fn fill(path: &Path, len: u64) -> Result<()> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut left = len;
    while left > 0 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        let n = left.min(8) as usize;
        f.write_all(&b[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (s.len() as f64 - 1.0)).round() as usize;
    s.get(i).copied().unwrap_or(f64::NAN)
}

fn median_tp(secs: &[f64], bytes: u64) -> f64 {
    bytes as f64 / pct(secs, 50.0)
}

fn row(
    out: &mut String,
    what: &str,
    name: &str,
    secs: &[f64],
    bytes: u64,
    floor: f64,
    rss: &str,
) -> Result<()> {
    let best = secs.iter().copied().fold(f64::INFINITY, f64::min);
    let med = pct(secs, 50.0);
    let ratio = if bytes >= BIG {
        format!("{:.0} %", 100.0 * (bytes as f64 / med) / floor)
    } else {
        format!("{:.2}x time", med / floor)
    };
    writeln!(
        out,
        "| {what} | {name} | {:.2} ms | {:.2} ms | {:.0} / {:.0} MB/s | {ratio} | {rss} |",
        med * 1e3,
        pct(secs, 99.0) * 1e3,
        bytes as f64 / best / 1e6,
        bytes as f64 / med / 1e6,
    )?;
    Ok(())
}

/// A server process under test, killed on drop.
struct Server {
    child: Child,
    port: u16,
    /// The process whose RSS counts (nginx's worker, not its master).
    rss_pid: Option<u32>,
}

impl Server {
    fn execd(bin: &Path, dir: &Path) -> Result<Self> {
        let mut child = Command::new(bin)
            .args(["-port=0", "-log-level=6"])
            .env("TMPDIR", dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                format!(
                    "start {}: {e} (build it with bench/files.sh)",
                    bin.display()
                )
            })?;
        let port = listen::listening_port(&mut child).ok_or("execd exited before listening")?;
        Ok(Self {
            child,
            port,
            rss_pid: None,
        })
    }

    fn python(dir: &Path) -> Result<Self> {
        let port = free_port()?;
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        wait_port(port)?;
        Ok(Self {
            child,
            port,
            rss_pid: None,
        })
    }

    fn nginx(dir: &Path) -> Result<Self> {
        let port = free_port()?;
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/nginx.err;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{ access_log off; sendfile on; tcp_nopush on;\n\
                 server {{ listen 127.0.0.1:{port}; root {d}; }} }}\n",
                d = dir.display()
            ),
        )?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        wait_port(port)?;
        let pid = child.id();
        let worker = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|w| w.parse().ok()));
        Ok(Self {
            child,
            port,
            rss_pid: worker,
        })
    }

    /// Peak and current RSS in bytes.
    fn rss(&self) -> (u64, u64) {
        let pid = self.rss_pid.unwrap_or_else(|| self.child.id());
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        (field("VmHWM:"), field("VmRSS:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("nothing listens on port {port}").into())
}

/// Reads a response: status, then the body into a 1 MiB buffer; returns
/// the body length, or the body itself for an error status.
fn read_response(s: TcpStream) -> Result<(u16, u64)> {
    let (status, n, _) = read_response_body(s)?;
    Ok((status, n))
}

fn read_response_body(s: TcpStream) -> Result<(u16, u64, String)> {
    let mut r = BufReader::with_capacity(1 << 20, s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line.split_whitespace().nth(1).ok_or("no status")?.parse()?;
    let mut len = None;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse::<u64>().ok();
            }
        }
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    let mut first = String::new();
    let mut body = r.take(len.unwrap_or(u64::MAX));
    loop {
        match body.read(&mut buf)? {
            0 => break,
            k => {
                if n == 0 && status >= 300 {
                    first = String::from_utf8_lossy(&buf[..k.min(500)]).into_owned();
                }
                n += k as u64;
            }
        }
    }
    Ok((status, n, first))
}

fn download(port: u16, path: &str, want: u64) -> Result<f64> {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let (status, n) = read_response(s)?;
    let secs = t.elapsed().as_secs_f64();
    if status != 200 || n != want {
        return Err(format!("download {path}: status {status}, {n} of {want} bytes").into());
    }
    Ok(secs)
}

fn upload_execd(port: u16, src: &Path, target: &Path) -> Result<f64> {
    let len = std::fs::metadata(src)?.len();
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"metadata\"; filename=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{{\"path\":\"{}\",\"mode\":644}}\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\nContent-Type: application/octet-stream\r\n\r\n",
        target.display()
    );
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    let total = head.len() as u64 + len + tail.len() as u64;
    let req = format!(
        "POST /files/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {total}\r\n\r\n{head}"
    );
    post(port, &req, src, &tail, "upload to execd")
}

fn upload_raw(port: u16, src: &Path) -> Result<f64> {
    let len = std::fs::metadata(src)?.len();
    let req = format!("POST /raw HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len}\r\n\r\n");
    post(port, &req, src, "", "raw upload")
}

/// Sends `head`, the file `src` and `tail` on a new connection; the time
/// until the response has been read.
fn post(port: u16, head: &str, src: &Path, tail: &str, what: &str) -> Result<f64> {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.write_all(head.as_bytes())?;
    std::io::copy(&mut std::fs::File::open(src)?, &mut s)?;
    s.write_all(tail.as_bytes())?;
    let (status, _, body) = read_response_body(s)?;
    let secs = t.elapsed().as_secs_f64();
    if status != 200 {
        return Err(format!("{what}: status {status}: {body}").into());
    }
    Ok(secs)
}

/// The upload floor: copies each request body to a file and fsyncs it.
struct RawSink {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl RawSink {
    fn start(dir: &Path) -> Result<Self> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let target = dir.join("raw-upload.bin");
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(s) = conn else { continue };
                let _ = sink_one(s, &target);
            }
        });
        Ok(Self { port, stop })
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn sink_one(s: TcpStream, target: &Path) -> Result<()> {
    let mut w = s.try_clone()?;
    let mut r = BufReader::with_capacity(1 << 20, s);
    let mut line = String::new();
    let mut len = 0u64;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse()?;
            }
        }
    }
    let mut f = std::fs::File::create(target)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err("cut off".into());
        }
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    Ok(())
}
