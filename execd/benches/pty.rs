//! PTY benchmark, run on demand with `cargo bench -p execd --bench pty`
//! (or `bench/pty.sh`).
//!
//! It starts the release binary (`EXECD_BIN`, else the static musl build)
//! and measures, side by side in one run:
//!
//! - keystroke-to-echo latency: one byte at a time (`BENCH_PTY_KEYS`,
//!   default 2000, after 200 warm-up bytes) to `stty raw -echo; exec cat`,
//!   (a) over execd's WebSocket (`0x00`+byte in, `0x01`+byte out) and
//!   (b) raw: on a PTY pair this process opens itself (`openpty`), the same
//!   `bash -c` command on the slave, the byte written to and read back from
//!   the master. The byte goes through `cat` either way (no terminal echo);
//!   (b) is the kernel's PTY plus two context switches, the floor for (a).
//! - output throughput of `head -c N /dev/zero` (`BENCH_PTY_BYTES`, default
//!   1 GiB) to a WebSocket client, through a PTY and in pipe mode (`?pty=0`),
//!   versus reading the same command's output from a local PTY master and
//!   from a plain pipe in this process. Best of `BENCH_PTY_RUNS` (default 2).
//!   execd never blocks the shell on a slow client (bytes a client has not
//!   read are kept only in the 1 MiB replay ring), so bytes lost to the ring
//!   are counted and shown; throughput counts delivered bytes only.
//! - execd's peak RSS (`VmHWM`) before and after the throughput runs.
//!
//! The table is printed and written to `target/bench-pty.md`.

#[path = "../tests/common/listen.rs"]
mod listen;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const CAT: &str = "stty raw -echo; echo READY; exec cat";

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(()); // `cargo test --benches` asks for a list
    }
    let keys = env_n("BENCH_PTY_KEYS", 2000);
    let bytes = env_n("BENCH_PTY_BYTES", 1 << 30) as u64;
    let runs = env_n("BENCH_PTY_RUNS", 2).max(1);
    let bin = std::env::var("EXECD_BIN").map_or_else(
        |_| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/x86_64-unknown-linux-musl/release/execd")
        },
        PathBuf::from,
    );
    let execd = Execd::start(&bin)?;

    // Latency, interleaved halves so that machine noise hits both sides.
    let mut ws_lat = Vec::with_capacity(keys);
    let mut raw_lat = Vec::with_capacity(keys);
    {
        let mut ws = execd.connect(&execd.create(CAT)?, "")?;
        ws_wait_for(&mut ws, b"READY")?;
        let mut raw = RawPty::spawn(CAT)?;
        raw.wait_for(b"READY")?;
        for _ in 0..200 {
            ws_echo(&mut ws)?;
            raw.echo()?;
        }
        for half in [keys / 2, keys - keys / 2] {
            for _ in 0..half {
                ws_lat.push(ws_echo(&mut ws)?);
            }
            for _ in 0..half {
                raw_lat.push(raw.echo()?);
            }
        }
    }
    let hwm_before = execd.hwm();

    // Throughput.
    let cmd = format!("head -c {bytes} /dev/zero");
    let mut best = [(f64::MAX, 0u64); 4];
    for _ in 0..runs {
        let results = [
            execd.stream(&cmd, "", bytes)?,
            execd.stream(&cmd, "?pty=0", bytes)?,
            RawPty::stream(&cmd)?,
            pipe_stream(&cmd)?,
        ];
        for (b, r) in best.iter_mut().zip(results) {
            if r.1 as f64 / r.0 > b.1 as f64 / b.0 {
                *b = r;
            }
        }
    }
    let hwm_after = execd.hwm();

    let mut out = String::new();
    writeln!(
        out,
        "PTY benchmark: {keys} keystrokes per side, `{cmd}` best of {runs}, binary {}\n",
        bin.display()
    )?;
    writeln!(
        out,
        "| measurement | execd | raw kernel | ratio | target | result |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    let (w50, w99) = (pct(&ws_lat, 0.50), pct(&ws_lat, 0.99));
    let (r50, r99) = (pct(&raw_lat, 0.50), pct(&raw_lat, 0.99));
    writeln!(
        out,
        "| keystroke → echo p50 (WebSocket vs local PTY pair, via `cat`) | {w50:.3} ms | {r50:.3} ms | {:.1}× | ≤ 0.2 ms | {} |",
        w50 / r50,
        pass(w50 <= 0.2)
    )?;
    writeln!(
        out,
        "| keystroke → echo p99 | {w99:.3} ms | {r99:.3} ms | {:.1}× | | |",
        w99 / r99
    )?;
    let tp = |(secs, n): (f64, u64)| n as f64 / secs / 1e6;
    let lost = |(_, n): (f64, u64)| {
        if n < bytes {
            format!(
                " ({:.1} % lost to the ring)",
                (bytes - n) as f64 * 100.0 / bytes as f64
            )
        } else {
            String::new()
        }
    };
    let (pty, pipe, raw_pty, raw_pipe) = (best[0], best[1], best[2], best[3]);
    writeln!(
        out,
        "| output through a PTY (WebSocket vs local PTY master) | {:.0} MB/s{} | {:.0} MB/s | {:.0} % | ≥ 80 % | {} |",
        tp(pty),
        lost(pty),
        tp(raw_pty),
        tp(pty) / tp(raw_pty) * 100.0,
        pass(tp(pty) >= 0.8 * tp(raw_pty) && pty.1 == bytes)
    )?;
    writeln!(
        out,
        "| output in pipe mode (WebSocket vs plain pipe) | {:.0} MB/s{} | {:.0} MB/s | {:.0} % | ≥ 500 MB/s | {} |",
        tp(pipe),
        lost(pipe),
        tp(raw_pipe),
        tp(pipe) / tp(raw_pipe) * 100.0,
        pass(tp(pipe) >= 500.0 && pipe.1 == bytes)
    )?;
    writeln!(
        out,
        "| execd peak RSS (VmHWM) after latency / after throughput | {:.1} / {:.1} MiB | | | | |",
        hwm_before as f64 / 1048576.0,
        hwm_after as f64 / 1048576.0
    )?;
    print!("{out}");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-pty.md");
    std::fs::write(target, &out)?;
    Ok(())
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

fn env_n(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Percentile `p` of `v`, in milliseconds.
fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize] * 1e3
}

struct Execd {
    child: Child,
    port: u16,
}

impl Execd {
    fn start(bin: &Path) -> Result<Self> {
        let mut child = Command::new(bin)
            .args(["-port=0", "-log-level=6"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("start {}: {e} (build it with bench/pty.sh)", bin.display()))?;
        let port = listen::listening_port(&mut child).ok_or("execd exited before listening")?;
        Ok(Self { child, port })
    }

    /// `POST /pty` with `command`; the session id.
    fn create(&self, command: &str) -> Result<String> {
        let body = serde_json::json!({ "command": command }).to_string();
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        write!(
            s,
            "POST /pty HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let json = resp.split("\r\n\r\n").nth(1).ok_or("no body")?;
        let v: serde_json::Value = serde_json::from_str(json.trim())?;
        Ok(v["session_id"].as_str().ok_or("no session_id")?.to_string())
    }

    /// Opens the session's WebSocket and reads up to the `connected` frame.
    fn connect(&self, id: &str, query: &str) -> Result<WebSocket<TcpStream>> {
        let s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_nodelay(true)?;
        let url = format!("ws://127.0.0.1:{}/pty/{id}/ws{query}", self.port);
        let (mut ws, _) = tungstenite::client::client(url, s).map_err(|e| e.to_string())?;
        loop {
            if let Message::Text(t) = ws.read()? {
                if t.contains("\"connected\"") {
                    return Ok(ws);
                }
            }
        }
    }

    /// Runs `cmd` in a new session (`query` picks the mode) and reads its
    /// output until the exit frame: (seconds, bytes delivered).
    fn stream(&self, cmd: &str, query: &str, want: u64) -> Result<(f64, u64)> {
        let id = self.create(cmd)?;
        let t = Instant::now();
        let mut ws = self.connect(&id, query)?;
        let mut n = 0u64;
        loop {
            match ws.read()? {
                Message::Binary(b) if matches!(b.first(), Some(0x01..=0x03)) => {
                    n += (b.len() - if b[0] == 0x03 { 9 } else { 1 }) as u64;
                }
                Message::Text(t) if t.contains("\"exit\"") => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let secs = t.elapsed().as_secs_f64();
        if n > want {
            return Err(format!("got {n} bytes, more than {want}").into());
        }
        let _ = ws.close(None);
        Ok((secs, n))
    }

    fn hwm(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }
}

impl Drop for Execd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads output frames until `needle` has been seen.
fn ws_wait_for(ws: &mut WebSocket<TcpStream>, needle: &[u8]) -> Result<()> {
    let mut seen = Vec::new();
    while !seen.windows(needle.len()).any(|w| w == needle) {
        if let Message::Binary(b) = ws.read()? {
            if matches!(b.first(), Some(0x01 | 0x03)) {
                seen.extend_from_slice(&b[if b[0] == 0x03 { 9 } else { 1 }..]);
            }
        }
    }
    Ok(())
}

/// One keystroke over the WebSocket; seconds until it is back.
fn ws_echo(ws: &mut WebSocket<TcpStream>) -> Result<f64> {
    let t = Instant::now();
    ws.send(Message::Binary(vec![0x00, b'k'].into()))?;
    loop {
        if let Message::Binary(b) = ws.read()? {
            if b.first() == Some(&0x01) && b[1..].contains(&b'k') {
                return Ok(t.elapsed().as_secs_f64());
            }
        }
    }
}

/// A command on a PTY pair opened here, without execd.
struct RawPty {
    master: std::fs::File,
    child: Child,
}

impl RawPty {
    fn spawn(cmd: &str) -> Result<Self> {
        let pty = nix::pty::openpty(None, None)?;
        let slave: OwnedFd = pty.slave;
        let mut c = Command::new("bash");
        c.args(["--norc", "--noprofile", "-c", cmd])
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        let child = c.spawn()?;
        drop(c);
        let master = std::fs::File::from(pty.master);
        Ok(Self { master, child })
    }

    fn wait_for(&mut self, needle: &[u8]) -> Result<()> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(needle.len()).any(|w| w == needle) {
            let n = self.master.read(&mut buf)?;
            seen.extend_from_slice(&buf[..n]);
        }
        Ok(())
    }

    fn echo(&mut self) -> Result<f64> {
        let t = Instant::now();
        self.master.write_all(b"k")?;
        let mut buf = [0u8; 64];
        loop {
            let n = self.master.read(&mut buf)?;
            if buf[..n].contains(&b'k') {
                return Ok(t.elapsed().as_secs_f64());
            }
        }
    }

    /// Runs `cmd` on a fresh PTY and reads the master until EOF/EIO.
    fn stream(cmd: &str) -> Result<(f64, u64)> {
        let t = Instant::now();
        let mut p = Self::spawn(cmd)?;
        let mut buf = vec![0u8; 64 << 10];
        let mut n = 0u64;
        loop {
            match p.master.read(&mut buf) {
                Ok(0) | Err(_) => break, // EIO once the slave is closed
                Ok(k) => n += k as u64,
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let _ = p.child.wait();
        Ok((secs, n))
    }
}

impl Drop for RawPty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` with stdout on a plain pipe and reads it to EOF.
fn pipe_stream(cmd: &str) -> Result<(f64, u64)> {
    let t = Instant::now();
    let mut child = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", cmd])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut buf = vec![0u8; 64 << 10];
    let mut n = 0u64;
    loop {
        match out.read(&mut buf)? {
            0 => break,
            k => n += k as u64,
        }
    }
    let secs = t.elapsed().as_secs_f64();
    child.wait()?;
    Ok((secs, n))
}
