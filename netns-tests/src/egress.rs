//! The egress process under test: started on loopback ports (optionally in
//! a cgroup of the test's own), with a small HTTP client for its API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use serde_json::Value;

use crate::dns::dns_udp;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running egress, killed on drop.
pub struct Egress {
    child: Child,
    /// The API address.
    pub http: SocketAddr,
    /// The DNS proxy address.
    pub dns: SocketAddr,
    /// The auth token sent with every request, if any.
    pub token: Option<String>,
}

impl Egress {
    /// Starts egress with `envs`. The DNS redirect is off unless `envs`
    /// turn it on: tests on loopback run in the host's network namespace,
    /// which they must never change.
    pub fn start(bin: &Path, envs: &[(&str, &str)]) -> Self {
        Self::start_in(bin, envs, None)
    }

    /// Starts egress inside the cgroup v2 directory `cgroup` (so that its
    /// own traffic can be told apart from the test's).
    pub fn start_in(bin: &Path, envs: &[(&str, &str)], cgroup: Option<&Path>) -> Self {
        for _ in 0..5 {
            let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let dns: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let mut cmd = match cgroup {
                None => Command::new(bin),
                Some(dir) => {
                    let mut c = Command::new("sh");
                    c.arg("-c")
                        .arg(r#"echo $$ > "$1/cgroup.procs" && exec "$2""#)
                        .arg("sh")
                        .arg(dir)
                        .arg(bin);
                    c
                }
            };
            cmd.env("OPENSANDBOX_EGRESS_REDIRECT", "off")
                .env("OPENSANDBOX_EGRESS_HTTP_ADDR", http.to_string())
                .env("OPENSANDBOX_EGRESS_DNS_ADDR", dns.to_string())
                .env("OPENSANDBOX_EGRESS_DNS_UPSTREAM_TIMEOUT", "1")
                .env_remove("OPENSANDBOX_EGRESS_TOKEN")
                .env_remove("OPENSANDBOX_EGRESS_RULES")
                .stdin(Stdio::null())
                .stdout(if std::env::var_os("EGRESS_TEST_LOG").is_some() {
                    Stdio::inherit()
                } else {
                    Stdio::null()
                })
                .stderr(Stdio::inherit());
            for (k, v) in envs {
                cmd.env(k, v);
            }
            let token = envs
                .iter()
                .find(|(k, _)| *k == "OPENSANDBOX_EGRESS_TOKEN")
                .map(|(_, v)| (*v).to_string());
            let mut e = Egress {
                child: cmd.spawn().unwrap(),
                http,
                dns,
                token,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = e.child.try_wait() {
                    break;
                }
                if TcpStream::connect(e.http).is_ok() && e.request("GET", "/healthz", None).0 == 200
                {
                    return e;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = e.child.kill();
        }
        panic!("egress did not start");
    }

    /// Sends `signal` and waits (up to 5 s) for egress to exit.
    pub fn stop_with(
        &mut self,
        signal: nix::sys::signal::Signal,
    ) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).ok()?);
        nix::sys::signal::kill(pid, signal).ok()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Exit status, if egress has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Sends a request; returns the status and the body.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut s = TcpStream::connect(self.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        if let Some(t) = &self.token {
            req.push_str(&format!("OPENSANDBOX-EGRESS-AUTH: {t}\r\n"));
        }
        let body = body.unwrap_or("");
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        s.write_all(req.as_bytes()).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// Sends a request and parses the JSON body.
    pub fn json(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (s, b) = self.request(method, path, body);
        (
            s,
            serde_json::from_str(&b).unwrap_or_else(|e| panic!("not JSON ({e}): {b:?}")),
        )
    }

    /// Resolves `name` (A) through the proxy over UDP.
    pub fn lookup(&self, name: &str) -> Message {
        dns_udp(self.dns, name, RecordType::A)
    }

    /// Waits (up to 2 s) for an event matching `f` in `GET /events`.
    pub fn wait_event(&self, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            let (_, v) = self.json("GET", "/events", None);
            if let Some(ev) = v["events"].as_array().unwrap().iter().find(|ev| f(ev)) {
                return ev.clone();
            }
            assert!(std::time::Instant::now() < deadline, "no such event in {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts a `{"code","message"}` error.
pub fn assert_error(r: &(u16, Value), status: u16, code: &str) -> String {
    assert_eq!(r.0, status, "{}", r.1);
    assert_eq!(r.1["code"], code, "{}", r.1);
    r.1["message"].as_str().unwrap().to_string()
}
