//! Test harness: starts the real server binary against the machine's Docker
//! engine, with its own store and its own label prefix (so tests never see
//! or touch other sandboxes), and removes every container it created on
//! drop, even when the test fails.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

pub const EXECD_IMAGE: &str = "opensandbox/execd:local";
pub const EGRESS_IMAGE: &str = "opensandbox/egress:local";
pub const BASE_IMAGE: &str = "opensandbox-test/debian:bookworm";

static N: AtomicU32 = AtomicU32::new(0);

fn docker_ok() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn image_present(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the Docker tests can run; prints why not. With
/// `LIFECYCLE_TESTS_REQUIRED=1` (CI) a missing engine or image fails instead.
pub fn can_run(images: &[&str]) -> bool {
    let required = std::env::var("LIFECYCLE_TESTS_REQUIRED").is_ok_and(|v| v == "1");
    if !docker_ok() {
        assert!(
            !required,
            "no Docker engine, and LIFECYCLE_TESTS_REQUIRED=1"
        );
        eprintln!("SKIP: no Docker engine reachable");
        return false;
    }
    for image in images {
        if !image_present(image) {
            assert!(!required, "image {image} missing (run scripts/images.sh)");
            eprintln!("SKIP: image {image} missing; build it with scripts/images.sh");
            return false;
        }
    }
    true
}

/// A running server.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    pub prefix: String,
    pub api_key: Option<String>,
    /// Extra environment of the server process.
    pub env: Vec<(String, String)>,
}

impl Server {
    /// A server with a fresh store and label prefix.
    pub fn start(tag: &str) -> Self {
        Self::start_with(tag, None, "")
    }

    /// With an API key and extra TOML (appended to the file).
    pub fn start_with(tag: &str, api_key: Option<&str>, extra: &str) -> Self {
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("lifecycle-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let prefix = format!("t{}-{n}.test.opensandbox.io/", std::process::id());
        let mut s = Self {
            child: None,
            port: 0,
            dir,
            prefix,
            api_key: api_key.map(String::from),
            env: Vec::new(),
        };
        s.write_config(extra);
        s.spawn();
        s
    }

    fn write_config(&self, extra: &str) {
        let cfg = format!(
            "[server]\nport = 0\n{}\n[docker]\nlabel_prefix = \"{}\"\n[store]\npath = \"{}\"\n{extra}\n",
            self.api_key
                .as_ref()
                .map(|k| format!("api_key = \"{k}\""))
                .unwrap_or_default(),
            self.prefix,
            self.dir.join("store.db").display()
        );
        std::fs::write(self.dir.join("config.toml"), cfg).unwrap();
    }

    /// Restarts the server with `key=value` added to its environment.
    pub fn restart_with_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
        self.restart();
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_opensandbox-lifecycle"));
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.arg("--config")
            .arg(self.dir.join("config.toml"))
            .env_remove("OPENSANDBOX_SERVER_API_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if self.api_key.is_none() {
            cmd.env("OPENSANDBOX_INSECURE_SERVER", "YES");
        }
        let mut child = cmd.spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                panic!("server exited before listening");
            }
            if let Some(p) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("local="))
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
            {
                self.port = p;
                break;
            }
        }
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::stderr()));
        self.child = Some(child);
    }

    /// Stops the server (sandboxes keep running).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same store and prefix.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Containers carrying our labels.
    pub fn containers(&self) -> Vec<String> {
        let mut all = Vec::new();
        for key in ["id", "egress-sidecar-for"] {
            let out = Command::new("docker")
                .args(["ps", "-aq", "--filter"])
                .arg(format!("label={}{key}", self.prefix))
                .output()
                .unwrap();
            all.extend(
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(String::from),
            );
        }
        all
    }

    /// `docker inspect` of a sandbox's container.
    pub fn inspect(&self, id: &str) -> Value {
        let out = Command::new("docker")
            .args(["inspect", &format!("sandbox-{id}")])
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()[0].clone()
    }

    /// `GET /v1/sandboxes/{id}` as JSON.
    pub async fn sandbox(&self, id: &str) -> Value {
        self.call("GET", &format!("/v1/sandboxes/{id}"), None)
            .await
            .json()
    }

    /// The status of `POST /v1/sandboxes/{id}/{action}`.
    pub async fn act(&self, id: &str, action: &str) -> u16 {
        self.call("POST", &format!("/v1/sandboxes/{id}/{action}"), None)
            .await
            .status
    }

    /// Renews `id` to `secs` seconds from now.
    pub async fn renew_in(&self, id: &str, secs: u64) -> Resp {
        let at =
            lifecycle::model::format_time(std::time::SystemTime::now() + Duration::from_secs(secs));
        self.call(
            "POST",
            &format!("/v1/sandboxes/{id}/renew-expiration"),
            Some(serde_json::json!({ "expiresAt": at })),
        )
        .await
    }

    /// Deletes sandbox `id`: 204, and no container of the server's is left.
    pub async fn delete_leaving_nothing(&self, id: &str) {
        let r = self
            .call("DELETE", &format!("/v1/sandboxes/{id}"), None)
            .await;
        assert_eq!(r.status, 204, "{}", r.text());
        assert!(
            self.containers().is_empty(),
            "left behind: {:?}",
            self.containers()
        );
    }

    /// Creates a sandbox from `body` (expecting 202); returns its id.
    pub async fn create_sandbox(&self, body: Value) -> String {
        let r = self.call("POST", "/v1/sandboxes", Some(body)).await;
        assert_eq!(r.status, 202, "{}", r.text());
        r.json()["id"].as_str().unwrap().to_string()
    }

    /// The endpoint of `port` of sandbox `id` (no server proxy).
    pub async fn endpoint(&self, id: &str, port: u16) -> String {
        let r = self
            .call(
                "GET",
                &format!("/v1/sandboxes/{id}/endpoints/{port}?use_server_proxy=false"),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["endpoint"].as_str().unwrap().to_string()
    }

    /// A request to the server.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let mut headers = vec![];
        if let Some(k) = &self.api_key {
            headers.push(("OPEN-SANDBOX-API-KEY".to_string(), k.clone()));
        }
        request(
            &format!("127.0.0.1:{}", self.port),
            method,
            path,
            &headers,
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let ids = self.containers();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts a flat `{"code","message"}` error.
    pub fn assert_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        let v = self.json();
        assert_eq!(v["code"], code, "{v}");
        assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
        v["message"].as_str().unwrap().to_string()
    }
}

/// One HTTP/1.1 request on a new connection.
pub async fn request(
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Option<Vec<u8>>,
) -> Resp {
    let stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("Host", authority);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if body.is_some() {
        req = req.header("Content-Type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(120), sender.send_request(req))
        .await
        .expect("response within 120 s")
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

/// `GET /policy` of a sandbox's egress through the endpoint JSON `ep` (from
/// `/endpoints/18080`): refused (401) without the endpoint's token header,
/// answered with it; returns the answer.
pub async fn egress_policy(ep: &Value) -> Value {
    let token = ep["headers"]["OPENSANDBOX-EGRESS-AUTH"]
        .as_str()
        .unwrap()
        .to_string();
    let (authority, prefix) = ep["endpoint"].as_str().unwrap().split_once('/').unwrap();
    let path = format!("/{prefix}/policy");
    let denied = request(authority, "GET", &path, &[], None).await;
    assert_eq!(denied.status, 401, "{}", denied.text());
    let pol = request(
        authority,
        "GET",
        &path,
        &[("OPENSANDBOX-EGRESS-AUTH".into(), token)],
        None,
    )
    .await;
    assert_eq!(pol.status, 200, "{}", pol.text());
    pol.json()
}
/// The body every test creates sandboxes with, as the SDK sends it.
pub fn create_body(extra: Value) -> Value {
    let mut b = serde_json::json!({
        "image": {"uri": BASE_IMAGE},
        "timeout": 600,
        "resourceLimits": {"cpu": "1", "memory": "512Mi"},
        "entrypoint": ["tail", "-f", "/dev/null"],
        "secureAccess": false,
    });
    if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    b
}

/// A server plus the guard of its snapshot images. Bind as
/// `let (_images, s) = ...`: `s` is dropped (stopped) first, then the guard,
/// so no commit of the server can land after the cleanup.
pub fn start_for_snapshots(tag: &str) -> (SnapshotImages, Server) {
    let s = Server::start(tag);
    (s.snapshot_images(), s)
}

impl Server {
    /// The repository this server commits snapshots to (from its prefix).
    pub fn snapshot_repository(&self) -> String {
        lifecycle::docker::snapshot::repository(&self.prefix)
    }

    /// A guard removing this server's containers and then every image of
    /// its snapshot repository when dropped, even when the test fails.
    pub fn snapshot_images(&self) -> SnapshotImages {
        SnapshotImages {
            prefix: self.prefix.clone(),
            repository: self.snapshot_repository(),
        }
    }
}

/// `repository:tag` of every image in `repository`.
pub fn images_of(repository: &str) -> Vec<String> {
    let Ok(out) = Command::new("docker")
        .args(["images", "--format", "{{.Repository}}:{{.Tag}}", repository])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Whether `docker image inspect image` finds it.
pub fn image_exists(image: &str) -> bool {
    image_present(image)
}

/// See [`Server::snapshot_images`].
pub struct SnapshotImages {
    prefix: String,
    repository: String,
}

impl Drop for SnapshotImages {
    fn drop(&mut self) {
        // After a failure a commit may still be finishing: look twice more.
        let passes = if std::thread::panicking() { 3 } else { 1 };
        for pass in 0..passes {
            if pass > 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
            self.clean();
        }
    }
}

impl SnapshotImages {
    fn clean(&self) {
        // Containers first: an image in use cannot be removed.
        let mut ids = Vec::new();
        for key in ["id", "egress-sidecar-for"] {
            if let Ok(out) = Command::new("docker")
                .args(["ps", "-aq", "--filter"])
                .arg(format!("label={}{key}", self.prefix))
                .output()
            {
                ids.extend(
                    String::from_utf8_lossy(&out.stdout)
                        .split_whitespace()
                        .map(String::from),
                );
            }
        }
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
        let images = images_of(&self.repository);
        if !images.is_empty() {
            let _ = Command::new("docker").arg("rmi").args(&images).output();
        }
    }
}

/// Runs an SDK script from `tests/` against `s` with `args` after the
/// server address; asserts it exits 0 printing `marker`. Skips (or fails
/// with `LIFECYCLE_TESTS_REQUIRED=1`) without an interpreter: the one in
/// `OPENSANDBOX_SDK_PYTHON`, else `target/sdk-venv` (made by `scripts/setup.sh`).
pub fn run_sdk_script(s: &Server, script: &str, args: &[&str], marker: &str) {
    let py = std::env::var("OPENSANDBOX_SDK_PYTHON").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/sdk-venv/bin/python"),
        PathBuf::from,
    );
    if !py.exists() {
        assert!(
            std::env::var("LIFECYCLE_TESTS_REQUIRED").as_deref() != Ok("1"),
            "no SDK interpreter (run scripts/setup.sh)"
        );
        eprintln!("SKIP: no Python with opensandbox 1.1.1 (run scripts/setup.sh)");
        return;
    }
    let out = Command::new(py)
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests")
                .join(script),
        )
        .arg(format!("127.0.0.1:{}", s.port))
        .args(args)
        .env("OPENSANDBOX_DISABLE_METRICS", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(marker),
        "{script} failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(
        s.containers().is_empty(),
        "left behind: {:?}",
        s.containers()
    );
}

/// Runs a shell command through an execd endpoint (`host:port/proxy/44772`);
/// returns its stdout lines (each ending in `\n`) and how it ended:
/// `complete`, or `exit <code>`.
pub async fn run_command(endpoint: &str, cmd: &str) -> (String, String) {
    let (authority, prefix) = endpoint.split_once('/').unwrap();
    let r = request(
        authority,
        "POST",
        &format!("/{prefix}/command"),
        &[],
        Some(
            serde_json::json!({ "command": cmd })
                .to_string()
                .into_bytes(),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut out = String::new();
    let mut end = String::new();
    for frame in r.text().split("\n\n").filter(|f| !f.trim().is_empty()) {
        let v: Value = serde_json::from_str(frame).unwrap();
        match v["type"].as_str().unwrap() {
            "stdout" => {
                out.push_str(v["text"].as_str().unwrap());
                out.push('\n');
            }
            "execution_complete" => end = "complete".into(),
            "error" => end = format!("exit {}", v["error"]["evalue"].as_str().unwrap_or("?")),
            _ => {}
        }
    }
    (out, end)
}
