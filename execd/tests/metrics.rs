//! `GET /metrics` and `GET /metrics/watch`: upstream's fields, order and
//! number format, immediate answers (no 1 s measurement per request), CPU
//! usage that follows a busy loop, watch framing, headers, bound and end on
//! disconnect, and (as root, with cgroup v1 or a v2 root) the figures of a
//! cgroup with a CPU quota and a memory limit.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};

const FIELDS: [&str; 5] = [
    "cpu_count",
    "cpu_used_pct",
    "mem_total_mib",
    "mem_used_mib",
    "timestamp",
];

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Checks one record: exactly upstream's fields in upstream's order, numbers,
/// whole floats without a fraction, and upstream's checklist.
fn check_record(raw: &str) -> Value {
    let v: Value = serde_json::from_str(raw).unwrap_or_else(|e| panic!("{e}: {raw:?}"));
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), FIELDS.len(), "{raw}");
    let mut at = 0;
    for f in FIELDS {
        let pos = raw
            .find(&format!("\"{f}\":"))
            .unwrap_or_else(|| panic!("{f} missing: {raw}"));
        assert!(pos >= at, "field order: {raw}");
        at = pos;
        assert!(v[f].is_number(), "{f} not a number: {raw}");
    }
    assert!(
        !raw.contains(".0,") && !raw.contains(".0}"),
        "Go writes 4, not 4.0: {raw}"
    );
    let cpu_count = v["cpu_count"].as_f64().unwrap();
    assert!(cpu_count >= 1.0 && cpu_count.fract() == 0.0, "{raw}");
    let pct = v["cpu_used_pct"].as_f64().unwrap();
    assert!((0.0..100.1).contains(&pct), "{raw}");
    let total = v["mem_total_mib"].as_f64().unwrap();
    let used = v["mem_used_mib"].as_f64().unwrap();
    assert!(total > 0.0 && (0.0..=total).contains(&used), "{raw}");
    let ts = v["timestamp"].as_i64().expect("integer timestamp");
    assert!((now_ms() - ts).abs() < 60_000, "timestamp: {raw}");
    v
}

fn get_metrics(port: u16) -> (String, Duration) {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let r = Response::read(s).full();
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    (r.text(), took)
}

#[test]
fn metrics_answers_at_once_with_upstreams_fields() {
    let e = Execd::start();
    let (first, _) = get_metrics(e.port);
    check_record(&first);
    let cpus = std::thread::available_parallelism().unwrap().get() as f64;
    let v = check_record(&first);
    assert!(v["cpu_count"].as_f64().unwrap() <= cpus, "{first}");
    for _ in 0..5 {
        let (raw, took) = get_metrics(e.port);
        check_record(&raw);
        assert!(took < Duration::from_millis(200), "took {took:?}");
    }
}

#[test]
fn busy_loop_raises_cpu_used_pct() {
    let e = Execd::start();
    let (raw, _) = get_metrics(e.port);
    let cpu_count = check_record(&raw)["cpu_count"].as_f64().unwrap();
    let ev = e.run(json!({
        "command": "timeout 3 sh -c 'while :; do :; done'",
        "background": true,
    }));
    assert_eq!(types(&ev).last(), Some(&"execution_complete"), "{ev:?}");
    // One CPU kept busy is at least 100/cpu_count percent of all of them.
    let want = 0.7 * 100.0 / cpu_count;
    let mut seen = Vec::new();
    let ok = wait_until(Duration::from_millis(2800), || {
        let (raw, _) = get_metrics(e.port);
        let pct = check_record(&raw)["cpu_used_pct"].as_f64().unwrap();
        seen.push(pct);
        std::thread::sleep(Duration::from_millis(200));
        pct >= want
    });
    assert!(ok, "wanted {want}%, saw {seen:?}");
}

/// Reads one record framed as `JSON\n\n`; None at the end of the stream.
fn read_record(body: &mut dyn Read, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = buf.drain(..pos + 2).collect();
            let json = String::from_utf8(frame[..pos].to_vec()).unwrap();
            assert!(!json.contains('\n'), "record split across lines: {json:?}");
            return Some(json);
        }
        let mut chunk = [0u8; 4096];
        match body.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn watch_streams_a_record_a_second() {
    let e = Execd::start();
    let t = Instant::now();
    // Without `Connection: close`, to see upstream's `Connection: keep-alive`.
    let mut s = e.connect();
    write!(s, "GET /metrics/watch HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let r = Response::read(s);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.header("connection"), Some("keep-alive"));
    assert_eq!(r.header("x-accel-buffering"), Some("no"));
    let mut body = r.body;
    let mut buf = Vec::new();
    let mut stamps = Vec::new();
    for _ in 0..3 {
        let raw = read_record(&mut body, &mut buf).expect("a record");
        stamps.push(check_record(&raw)["timestamp"].as_i64().unwrap());
    }
    // The first record comes at once, then one a second.
    assert!(
        t.elapsed() < Duration::from_millis(3500),
        "{:?}",
        t.elapsed()
    );
    for w in stamps.windows(2) {
        let gap = w[1] - w[0];
        assert!((500..=2000).contains(&gap), "gap {gap} ms in {stamps:?}");
    }
}

#[test]
fn watches_are_bounded_and_end_with_their_client() {
    let e = Execd::start();
    let mut open = Vec::new();
    for _ in 0..64 {
        let r = e.send("GET", "/metrics/watch", &[], None);
        assert_eq!(r.status, 200);
        open.push(r);
    }
    let refused = e.send("GET", "/metrics/watch", &[], None).full();
    let msg = refused.assert_error(503, "TOO_MANY_WATCHES");
    assert!(msg.contains("64"), "{msg}");
    // /metrics itself still answers.
    check_record(&get_metrics(e.port).0);
    // Clients going away free their streams (noticed at the next record).
    drop(open);
    let ok = wait_until(Duration::from_secs(5), || {
        let r = e.send("GET", "/metrics/watch", &[], None);
        r.status == 200
    });
    assert!(ok, "watches not released after their clients left");
}

// ---- cgroups (root only) ----

/// A cgroup made for the test in each hierarchy, removed on drop.
struct TestCgroup {
    dirs: Vec<PathBuf>,
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                // Whatever execd left behind (warm shells, the busy loop) ends first.
                if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                    for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    }
                }
                if fs::remove_dir(dir).is_ok() || !dir.exists() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Where the test's own cgroup of `controller` is (v1), or its v2 cgroup
/// (`controller` None).
fn own_cgroup_dir(controller: Option<&str>) -> Option<PathBuf> {
    let cg = fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cg.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (id, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        let hit = match controller {
            Some(c) => ctrls.split(',').any(|x| x == c),
            None => id == "0" && ctrls.is_empty(),
        };
        hit.then(|| path.to_string())
    })?;
    let mi = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mi.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let f: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        let ok = match controller {
            Some(c) => r[0] == "cgroup" && r.get(2)?.split(',').any(|x| x == c),
            None => r[0] == "cgroup2",
        };
        if !ok {
            return None;
        }
        let rel = path.strip_prefix(f[3])?;
        Some(Path::new(f[4]).join(rel.trim_start_matches('/')))
    })
}

/// Makes a child cgroup limited to half a CPU and 256 MiB; the files to
/// write a pid to, to move it there.
fn make_cgroup(name: &str) -> Result<(TestCgroup, Vec<PathBuf>), String> {
    let v1 = ["cpu", "cpuacct", "memory"].map(|c| own_cgroup_dir(Some(c)).map(|d| d.join(name)));
    if let [Some(cpu), Some(acct), Some(mem)] = v1 {
        let mut dirs = vec![cpu.clone(), acct.clone(), mem.clone()];
        dirs.dedup();
        let mut group = TestCgroup { dirs: Vec::new() };
        for d in &dirs {
            fs::create_dir(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
            group.dirs.push(d.clone());
        }
        let write = |p: PathBuf, v: &str| {
            fs::write(&p, v).map_err(|e| format!("write {}: {e}", p.display()))
        };
        write(cpu.join("cpu.cfs_period_us"), "100000")?;
        write(cpu.join("cpu.cfs_quota_us"), "50000")?;
        write(mem.join("memory.limit_in_bytes"), "268435456")?;
        let procs = dirs.iter().map(|d| d.join("cgroup.procs")).collect();
        return Ok((group, procs));
    }
    // cgroup v2: only from the root (elsewhere the test's own cgroup has
    // processes, so it cannot hand controllers down).
    let own = own_cgroup_dir(None).ok_or("no cgroup v1 cpu/memory or v2 hierarchy")?;
    fs::write(own.join("cgroup.subtree_control"), "+cpu +memory")
        .map_err(|e| format!("enable cpu and memory below {}: {e}", own.display()))?;
    let d = own.join(name);
    fs::create_dir(&d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
    let group = TestCgroup {
        dirs: vec![d.clone()],
    };
    fs::write(d.join("cpu.max"), "50000 100000").map_err(|e| format!("cpu.max: {e}"))?;
    fs::write(d.join("memory.max"), "268435456").map_err(|e| format!("memory.max: {e}"))?;
    Ok((group, vec![d.join("cgroup.procs")]))
}

/// Our execd started inside the cgroup (it moves itself before exec'ing).
struct Jailed {
    child: Child,
    port: u16,
    tmp: PathBuf,
}

impl Drop for Jailed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

fn start_in(procs: &[PathBuf]) -> Jailed {
    let tmp = scratch("cgroup");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"b=$1; shift; for f in "$@"; do echo $$ > "$f" || exit 97; done; exec "$b" -port=0"#)
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_execd"))
        .args(procs)
        .env("TMPDIR", &tmp)
        .env_remove("EXECD_ACCESS_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let Some(port) = common::listening_port(&mut child) else {
        let _ = child.kill();
        panic!("execd exited before listening: {:?}", child.wait());
    };
    Jailed { child, port, tmp }
}

#[test]
fn cgroup_limits_are_the_sandboxs_figures() {
    if fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        != Some("0")
    {
        eprintln!("SKIPPED cgroup_limits_are_the_sandboxs_figures: needs root (CI runs as root)");
        return;
    }
    let name = format!("execd-test-{}", std::process::id());
    let (_group, procs) = match make_cgroup(&name) {
        Ok(g) => g,
        Err(why) => {
            eprintln!("SKIPPED cgroup_limits_are_the_sandboxs_figures: {why}");
            return;
        }
    };
    let e = start_in(&procs);
    let (raw, _) = get_metrics(e.port);
    let v = check_record(&raw);
    // Half a CPU rounds up to one; the memory limit is the total.
    assert_eq!(v["cpu_count"], 1, "{raw}");
    assert_eq!(v["mem_total_mib"], 256, "{raw}");
    let used = v["mem_used_mib"].as_f64().unwrap();
    assert!(used > 0.0 && used < 256.0, "{raw}");
    assert!(raw.contains("\"mem_total_mib\":256,"), "{raw}");

    // A busy loop in the sandbox uses all of its half CPU (at least most of
    // it, even on a busy host).
    let events = raw_post(
        e.port,
        "/command",
        r#"{"command":"timeout 3 sh -c 'while :; do :; done'","background":true}"#,
    );
    assert!(events.contains("execution_complete"), "{events}");
    let mut seen = Vec::new();
    let ok = wait_until(Duration::from_millis(2800), || {
        let (raw, _) = get_metrics(e.port);
        let pct = check_record(&raw)["cpu_used_pct"].as_f64().unwrap();
        seen.push(pct);
        std::thread::sleep(Duration::from_millis(200));
        pct >= 50.0
    });
    assert!(ok, "saw {seen:?}");
}
