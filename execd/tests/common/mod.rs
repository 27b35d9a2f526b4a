//! Test harness: starts the real execd binary on a loopback port and talks
//! HTTP/1.1 to it like a client. `EXECD_TEST_BIN` names another binary to
//! test instead (the same tests then check a different implementation).
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

mod listen;
pub use listen::listening_port;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running execd, killed (with its spool directory removed) on drop.
pub struct Execd {
    child: Child,
    pub port: u16,
    pub tmp: PathBuf,
    pub token: Option<String>,
}

/// A unique scratch directory.
pub fn scratch(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("execd-test-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Execd {
    pub fn start() -> Self {
        Self::start_with(&[], &[])
    }

    pub fn start_with(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let tmp = scratch("tmpdir");
        match std::env::var("EXECD_TEST_BIN") {
            // Another implementation: pick a free port and poll it.
            Ok(bin) => Self::start_on_free_port(&bin, tmp, args, envs),
            Err(_) if args.iter().any(|a| a.contains("log-level")) => {
                Self::start_on_free_port(env!("CARGO_BIN_EXE_execd"), tmp, args, envs)
            }
            Err(_) => Self::start_on_port_zero(tmp, args, envs, None),
        }
    }

    /// Starts our binary as `uid` (its spool directory handed to that user).
    pub fn start_as(uid: u32, gid: u32) -> Self {
        let tmp = scratch("tmpdir");
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).unwrap();
        Self::start_on_port_zero(tmp, &[], &[], Some((uid, gid)))
    }

    /// The command line shared by every way of starting execd.
    fn command(bin: &str, port: u16, tmp: &Path, args: &[&str], envs: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg(format!("-port={port}"))
            .args(args)
            .env("TMPDIR", tmp)
            .env_remove("EXECD_ACCESS_TOKEN")
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// The access token the request headers must carry, if any.
    fn token_of(args: &[&str], envs: &[(&str, &str)]) -> Option<String> {
        envs.iter()
            .find(|(k, _)| *k == "EXECD_ACCESS_TOKEN")
            .map(|(_, v)| (*v).to_string())
            .or_else(|| {
                args.iter()
                    .find_map(|a| a.strip_prefix("-access-token=").map(String::from))
            })
    }

    fn start_on_free_port(bin: &str, tmp: PathBuf, args: &[&str], envs: &[(&str, &str)]) -> Self {
        for _ in 0..5 {
            let port = free_port();
            let child = Self::command(bin, port, &tmp, args, envs)
                .stdout(Stdio::null())
                .spawn()
                .expect("start execd");
            let mut e = Execd {
                child,
                port,
                tmp: tmp.clone(),
                token: Self::token_of(args, envs),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = e.child.try_wait() {
                    break; // port taken, say: try another
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return e;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = e.child.kill();
        }
        panic!("execd did not start");
    }

    /// Starts our binary on port 0 and reads the port it got from its log:
    /// no window in which another process can take the port.
    fn start_on_port_zero(
        tmp: PathBuf,
        args: &[&str],
        envs: &[(&str, &str)],
        user: Option<(u32, u32)>,
    ) -> Self {
        let mut bin = PathBuf::from(env!("CARGO_BIN_EXE_execd"));
        if user.is_some() {
            // The build tree may sit in a directory the other user cannot
            // enter (a checkout under a 0700 temporary directory): run a
            // copy from the spool directory, which that user owns.
            let copy = tmp.join("execd");
            std::fs::copy(&bin, &copy).unwrap();
            bin = copy;
        }
        let mut cmd = Self::command(bin.to_str().unwrap(), 0, &tmp, args, envs);
        if let Some((uid, gid)) = user {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid).current_dir(&tmp);
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("start execd");
        let Some(port) = listening_port(&mut child) else {
            let _ = child.kill();
            panic!("execd exited before listening");
        };
        Execd {
            child,
            port,
            tmp,
            token: Self::token_of(args, envs),
        }
    }

    /// Waits up to `timeout` for execd to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// VmRSS and VmHWM of execd, in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s
    }

    /// Sends a request and returns the response head and a body reader.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        let mut s = self.connect();
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        if let (Some(t), false) = (
            &self.token,
            headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("X-EXECD-ACCESS-TOKEN")),
        ) {
            req.push_str(&format!("X-EXECD-ACCESS-TOKEN: {t}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        if let Some(b) = body {
            s.write_all(b).unwrap();
        }
        Response::read(s)
    }

    /// Sends a request with exactly these headers (plus Host, Connection,
    /// the token and Content-Length) and body.
    pub fn send_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut s = self.connect();
        s.write_all(
            self.head(method, path, headers, Some(body.len()))
                .as_bytes(),
        )
        .unwrap();
        s.write_all(body).unwrap();
        Response::read(s)
    }

    /// The request head, with Content-Length when `len` is given.
    pub fn head(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        len: Option<usize>,
    ) -> String {
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        if let Some(t) = &self.token {
            req.push_str(&format!("X-EXECD-ACCESS-TOKEN: {t}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(n) = len {
            req.push_str(&format!("Content-Length: {n}\r\n"));
        }
        req.push_str("\r\n");
        req
    }

    pub fn get(&self, path: &str) -> Full {
        self.send("GET", path, &[], None).full()
    }

    pub fn delete(&self, path: &str) -> Full {
        self.send("DELETE", path, &[], None).full()
    }

    pub fn post(&self, path: &str, body: &Value) -> Full {
        self.send("POST", path, &[], Some(body.to_string().as_bytes()))
            .full()
    }

    pub fn post_raw(&self, path: &str, body: &[u8]) -> Full {
        self.send("POST", path, &[], Some(body)).full()
    }

    /// Opens an event stream (`POST path` with `body`).
    pub fn stream(&self, path: &str, body: &Value) -> Events {
        let r = self.send("POST", path, &[], Some(body.to_string().as_bytes()));
        if r.status != 200 {
            let status = r.status;
            panic!("stream refused: {status} {:?}", r.full().text());
        }
        Events {
            body: r.body,
            buf: Vec::new(),
        }
    }

    /// Runs a command to its end and returns all events.
    pub fn run(&self, body: Value) -> Vec<Value> {
        self.stream("/command", &body).collect_all()
    }
}

impl Drop for Execd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// A response head with its body still to read.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Box<dyn Read + Send>,
}

/// A complete response.
#[derive(Debug)]
pub struct Full {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Full {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    /// Asserts a flat `{"code","message"}` error with this status and code.
    pub fn assert_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "body: {}", self.text());
        let v = self.json();
        assert_eq!(v["code"], code, "body: {}", self.text());
        let obj = v.as_object().unwrap();
        assert!(
            obj.keys().all(|k| k == "code" || k == "message"),
            "extra fields: {v}"
        );
        v["message"].as_str().unwrap_or("").to_string()
    }
}

impl Response {
    /// Reads a response head from `s`.
    pub fn read(s: TcpStream) -> Self {
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .expect("status line")
            .parse()
            .unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let body: Box<dyn Read + Send> =
            if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
                Box::new(Chunked {
                    r,
                    left: 0,
                    done: false,
                })
            } else if let Some(len) = get("content-length") {
                Box::new(r.take(len.parse().unwrap()))
            } else {
                Box::new(r)
            };
        Self {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn full(mut self) -> Full {
        let mut body = Vec::new();
        self.body.read_to_end(&mut body).unwrap();
        Full {
            status: self.status,
            headers: self.headers,
            body,
        }
    }
}

/// A chunked transfer-coding decoder.
struct Chunked {
    r: BufReader<TcpStream>,
    left: usize,
    done: bool,
}

impl Read for Chunked {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.r.read_line(&mut line)?;
            if line.trim().is_empty() {
                // CRLF after the previous chunk.
                line.clear();
                self.r.read_line(&mut line)?;
            }
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|e| std::io::Error::other(format!("bad chunk size {line:?}: {e}")))?;
            if size == 0 {
                self.done = true;
                let mut trailer = String::new();
                self.r.read_line(&mut trailer)?;
                return Ok(0);
            }
            self.left = size;
        }
        let n = self.r.by_ref().take(self.left as u64).read(buf)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "chunk cut off",
            ));
        }
        self.left -= n;
        Ok(n)
    }
}

/// An event stream: JSON objects separated by blank lines.
pub struct Events {
    body: Box<dyn Read + Send>,
    buf: Vec<u8>,
}

impl Events {
    /// The next event, or None at the end of the stream.
    pub fn next_event(&mut self) -> Option<Value> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let json = &frame[..pos];
                assert!(
                    !json.contains(&b'\n'),
                    "event split across lines: {:?}",
                    String::from_utf8_lossy(json)
                );
                return Some(serde_json::from_slice(json).unwrap_or_else(|e| {
                    panic!("bad event ({e}): {:?}", String::from_utf8_lossy(json))
                }));
            }
            let mut chunk = vec![0u8; 256 * 1024];
            let n = self.body.read(&mut chunk).unwrap();
            if n == 0 {
                assert!(
                    self.buf.is_empty(),
                    "stream ended inside an event: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The rest of the events, to the end of the stream.
    pub fn collect_all(mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(e) = self.next_event() {
            out.push(e);
        }
        out
    }
}

/// Event types, in order.
pub fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// Texts of the events of one type.
pub fn texts<'a>(events: &'a [Value], kind: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| e["type"] == kind)
        .map(|e| e["text"].as_str().unwrap_or(""))
        .collect()
}

/// The id carried by `init`.
pub fn init_id(events: &[Value]) -> String {
    assert_eq!(events[0]["type"], "init", "first event: {}", events[0]);
    events[0]["text"].as_str().unwrap().to_string()
}

/// Checks the shape every command stream has: `init` first, exactly one
/// terminal event, last.
pub fn assert_well_formed(events: &[Value]) {
    assert!(events.len() >= 2, "too few events: {events:?}");
    assert_eq!(events[0]["type"], "init");
    let terminals = events
        .iter()
        .filter(|e| e["type"] == "execution_complete" || e["type"] == "error")
        .count();
    assert_eq!(terminals, 1, "events: {events:?}");
    let last = events.last().unwrap();
    assert!(
        last["type"] == "execution_complete" || last["type"] == "error",
        "last: {last}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for e in events {
        let ts = e["timestamp"].as_i64().expect("timestamp");
        assert!((now - ts).abs() < 600_000, "timestamp out of range: {e}");
    }
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next())
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Polls `f` until it is true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// POSTs `body` to `path` on its own connection (usable from any thread)
/// and returns the whole raw response.
pub fn raw_post(port: u16, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Pids from output lines of the form `PID <n>`.
pub fn pids_from(events: &[Value]) -> Vec<i32> {
    texts(events, "stdout")
        .iter()
        .filter_map(|t| t.strip_prefix("PID ")?.parse().ok())
        .collect()
}
