//! `GET /files/watch` (our extension): exact events for file and directory
//! changes, renames, recursion, patterns, coalescing, overflow, errors, path
//! expansion, and release of the watcher when the client goes away.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(path: &Path, extra: &str) -> String {
    format!("path={}{extra}", enc(path.to_str().unwrap()))
}

/// Reads one `JSON\n\n` frame; None at the end of the stream or on an error.
fn read_frame(body: &mut dyn Read, buf: &mut Vec<u8>) -> Option<Value> {
    loop {
        if let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = buf.drain(..pos + 2).collect();
            let json = &frame[..pos];
            assert!(!json.contains(&b'\n'), "event split across lines");
            return Some(serde_json::from_slice(json).unwrap());
        }
        let mut chunk = [0u8; 16 * 1024];
        match body.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An open watch stream, read by a thread; `None` marks its end.
struct Watch {
    rx: mpsc::Receiver<Option<Value>>,
    ready: Value,
}

impl Watch {
    fn open(e: &Execd, q: &str) -> Watch {
        let r = e.send("GET", &format!("/files/watch?{q}"), &[], None);
        if r.status != 200 {
            let status = r.status;
            panic!("watch refused: {status} {}", r.full().text());
        }
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        let mut body = r.body;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            loop {
                let ev = read_frame(&mut body, &mut buf);
                let end = ev.is_none();
                if tx.send(ev).is_err() || end {
                    break;
                }
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
        assert_eq!(ready["type"], "ready", "{ready}");
        assert_fresh(&ready);
        Watch { rx, ready }
    }

    /// The next event other than `ping` within `limit`; `Some(None)` at the
    /// end of the stream, `None` if nothing came.
    fn next_within(&self, limit: Duration) -> Option<Option<Value>> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Some(v)) if v["type"] == "ping" => {
                    assert_eq!(v["text"], "pong");
                    continue;
                }
                Ok(v) => return Some(v),
                Err(_) => return None,
            }
        }
    }

    /// The next event (not `ping`), within 5 s.
    fn next(&self) -> Value {
        match self.next_within(Duration::from_secs(5)) {
            Some(Some(v)) => {
                assert_fresh(&v);
                v
            }
            Some(None) => panic!("the stream ended"),
            None => panic!("no event within 5 s"),
        }
    }

    /// Asserts the next event: its type and path, and no unexpected fields.
    fn expect(&self, kind: &str, path: &Path) -> Value {
        let v = self.next();
        assert_eq!(v["type"], kind, "{v}");
        assert_eq!(v["path"], path.to_str().unwrap(), "{v}");
        let allowed = ["type", "path", "old_path", "is_dir", "timestamp"];
        for k in v.as_object().unwrap().keys() {
            assert!(allowed.contains(&k.as_str()), "unexpected field {k}: {v}");
        }
        v
    }

    /// Asserts that no event (other than `ping`) comes for `d`.
    fn quiet(&self, d: Duration) {
        if let Some(v) = self.next_within(d) {
            panic!("unexpected event: {v:?}");
        }
    }
}

fn assert_fresh(v: &Value) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let ts = v["timestamp"].as_i64().expect("timestamp");
    assert!((now - ts).abs() < 60_000, "timestamp out of range: {v}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const QUIET: Duration = Duration::from_millis(400);

#[test]
fn file_and_directory_changes_in_order() {
    let e = Execd::start();
    let d = scratch("watch-basic");
    let w = Watch::open(&e, &query(&d, "&debounce_ms=100"));
    assert_eq!(w.ready["path"], s(&d));
    assert_eq!(w.ready["is_dir"], true);
    assert_eq!(w.ready["recursive"], false);

    let a = d.join("a.txt");
    fs::write(&a, "1").unwrap();
    let v = w.expect("created", &a);
    assert_eq!(v["is_dir"], false);
    fs::write(&a, "22").unwrap();
    assert_eq!(w.expect("modified", &a)["is_dir"], false);
    let b = d.join("b.txt");
    fs::rename(&a, &b).unwrap();
    let v = w.expect("renamed", &b);
    assert_eq!(v["old_path"], s(&a));
    assert_eq!(v["is_dir"], false);
    fs::remove_file(&b).unwrap();
    w.expect("removed", &b);

    let sub = d.join("sub");
    fs::create_dir(&sub).unwrap();
    assert_eq!(w.expect("created", &sub)["is_dir"], true);
    fs::remove_dir(&sub).unwrap();
    assert_eq!(w.expect("removed", &sub)["is_dir"], true);

    // Moves across the boundary of the watch.
    let outside = scratch("watch-outside").join("o.txt");
    fs::write(&outside, "x").unwrap();
    let inside = d.join("in.txt");
    fs::rename(&outside, &inside).unwrap();
    w.expect("created", &inside);
    fs::rename(&inside, &outside).unwrap();
    w.expect("removed", &inside);
    w.quiet(QUIET);
}

#[test]
fn bursts_are_coalesced() {
    let e = Execd::start();
    let d = scratch("watch-burst");
    let w = Watch::open(&e, &query(&d, "&debounce_ms=300"));
    let f = d.join("f.log");
    fs::write(&f, "").unwrap();
    w.expect("created", &f);
    for i in 0..50 {
        fs::write(&f, format!("line {i}\n")).unwrap();
    }
    w.expect("modified", &f);
    // Created and removed within one window: nothing happened.
    let t = d.join("transient");
    fs::write(&t, "x").unwrap();
    fs::remove_file(&t).unwrap();
    w.quiet(QUIET + Duration::from_millis(300));
}

#[test]
fn recursive_watches_new_subdirectories() {
    let e = Execd::start();
    let d = scratch("watch-rec");
    let w = Watch::open(&e, &query(&d, "&recursive=true&debounce_ms=100"));
    assert_eq!(w.ready["recursive"], true);

    let sub = d.join("s");
    fs::create_dir(&sub).unwrap();
    assert_eq!(w.expect("created", &sub)["is_dir"], true);
    let f = sub.join("f.txt");
    fs::write(&f, "x").unwrap();
    assert_eq!(w.expect("created", &f)["is_dir"], false);
    fs::write(&f, "y").unwrap();
    w.expect("modified", &f);

    // A whole tree at once: its contents come after it, each once.
    let u = sub.join("t/u");
    fs::create_dir_all(&u).unwrap();
    fs::write(u.join("g.txt"), "x").unwrap();
    w.expect("created", &sub.join("t"));
    w.expect("created", &u);
    w.expect("created", &u.join("g.txt"));

    // A renamed directory stays watched under its new name.
    let moved = d.join("s2");
    fs::rename(&sub, &moved).unwrap();
    let v = w.expect("renamed", &moved);
    assert_eq!(v["old_path"], s(&sub));
    assert_eq!(v["is_dir"], true);
    let h = moved.join("t/u/h.txt");
    fs::write(&h, "x").unwrap();
    w.expect("created", &h);

    fs::remove_dir_all(moved.join("t")).unwrap();
    let mut files = [w.next(), w.next()];
    files.sort_by_key(|v| v["path"].as_str().unwrap().to_string());
    assert_eq!(files[0]["type"], "removed");
    assert_eq!(files[0]["path"], s(&moved.join("t/u/g.txt")));
    assert_eq!(files[1]["type"], "removed");
    assert_eq!(files[1]["path"], s(&h));
    w.expect("removed", &moved.join("t/u"));
    w.expect("removed", &moved.join("t"));
    w.quiet(QUIET);
}

#[test]
fn non_recursive_ignores_nested_changes() {
    let e = Execd::start();
    let d = scratch("watch-flat");
    let sub = d.join("sub");
    fs::create_dir(&sub).unwrap();
    let w = Watch::open(&e, &query(&d, "&recursive=false&debounce_ms=50"));
    fs::write(sub.join("x.txt"), "x").unwrap();
    fs::create_dir(sub.join("deeper")).unwrap();
    let top = d.join("top.txt");
    fs::write(&top, "x").unwrap();
    w.expect("created", &top);
    w.quiet(QUIET);
}

#[test]
fn pattern_filters_events() {
    let e = Execd::start();
    let d = scratch("watch-pattern");
    fs::create_dir(d.join("pkg")).unwrap();
    let w = Watch::open(
        &e,
        &query(&d, "&recursive=true&debounce_ms=50&pattern=%2A.py"),
    );
    fs::write(d.join("a.txt"), "x").unwrap();
    let a = d.join("a.py");
    fs::write(&a, "x").unwrap();
    w.expect("created", &a);
    let b = d.join("pkg/b.py");
    fs::write(&b, "x").unwrap();
    w.expect("created", &b);
    // Renamed out of the pattern: gone, as far as the client is concerned.
    fs::rename(&a, d.join("a.bak")).unwrap();
    w.expect("removed", &a);
    // A renamed directory: its matching entries are told about.
    fs::rename(d.join("pkg"), d.join("lib")).unwrap();
    let v = w.expect("renamed", &d.join("lib/b.py"));
    assert_eq!(v["old_path"], s(&b));
    w.quiet(QUIET);

    // A pattern with a slash is matched against the relative path.
    let e2 = scratch("watch-pattern-rel");
    fs::create_dir_all(e2.join("src/x")).unwrap();
    let w = Watch::open(
        &e,
        &query(&e2, &format!("&recursive=1&pattern={}", enc("src/*.rs"))),
    );
    fs::write(e2.join("a.rs"), "x").unwrap();
    fs::write(e2.join("src/x/b.rs"), "x").unwrap();
    fs::write(e2.join("src/c.rs"), "x").unwrap();
    w.expect("created", &e2.join("src/c.rs"));
    w.quiet(QUIET);
}

#[test]
fn overflow_is_explicit_and_the_stream_goes_on() {
    let e = Execd::start();
    let d = scratch("watch-overflow");
    let w = Watch::open(&e, &query(&d, "&queue=8&debounce_ms=500"));
    for i in 0..200 {
        fs::write(d.join(format!("f{i:03}")), "x").unwrap();
    }
    // Everything until the stream is quiet: changes of the burst's files and
    // at least one overflow (where the loss was noticed), nothing else.
    let mut events = Vec::new();
    while let Some(v) = w.next_within(Duration::from_millis(1500)) {
        events.push(v.expect("the stream goes on"));
    }
    let overflows: Vec<&Value> = events.iter().filter(|v| v["type"] == "overflow").collect();
    assert!(!overflows.is_empty(), "no overflow: {events:?}");
    for v in &overflows {
        assert_eq!(v["path"], s(&d));
        assert!(v["dropped"].as_u64().unwrap() > 0, "{v}");
    }
    let changes = events.len() - overflows.len();
    assert!(changes < 200, "nothing was lost?");
    for v in events.iter().filter(|v| v["type"] != "overflow") {
        let p = v["path"].as_str().unwrap();
        assert!(p.starts_with(&format!("{}/f", s(&d))), "{v}");
    }
    // Still usable.
    let z = d.join("z");
    fs::write(&z, "x").unwrap();
    w.expect("created", &z);
}

#[test]
fn file_watch_follows_the_file() {
    let e = Execd::start();
    let d = scratch("watch-file");
    let f = d.join("config.json");
    fs::write(&f, "{}").unwrap();
    let w = Watch::open(&e, &query(&f, "&debounce_ms=50&recursive=true"));
    assert_eq!(w.ready["path"], s(&f));
    assert_eq!(w.ready["is_dir"], false);
    assert_eq!(w.ready["recursive"], false);
    fs::write(d.join("other"), "x").unwrap();
    fs::write(&f, "{\"a\":1}").unwrap();
    w.expect("modified", &f);
    // An atomic save (write a temporary file, rename it over).
    let tmp = d.join(".config.json.tmp");
    fs::write(&tmp, "{\"a\":2}").unwrap();
    fs::rename(&tmp, &f).unwrap();
    w.expect("created", &f);
    fs::remove_file(&f).unwrap();
    w.expect("removed", &f);
    fs::write(&f, "{}").unwrap();
    w.expect("created", &f);
    w.quiet(QUIET);
}

#[test]
fn removing_the_watched_directory_ends_the_stream() {
    let e = Execd::start();
    let d = scratch("watch-gone");
    fs::write(d.join("x"), "x").unwrap();
    let w = Watch::open(&e, &query(&d, "&recursive=true&debounce_ms=50"));
    fs::remove_dir_all(&d).unwrap();
    w.expect("removed", &d.join("x"));
    assert_eq!(w.expect("removed", &d)["is_dir"], true);
    assert_eq!(w.next_within(Duration::from_secs(5)), Some(None));

    // Moved away: the same.
    let d = scratch("watch-moved");
    let w = Watch::open(&e, &query(&d, "&debounce_ms=50"));
    fs::rename(&d, d.with_extension("away")).unwrap();
    assert_eq!(w.expect("removed", &d)["is_dir"], true);
    assert_eq!(w.next_within(Duration::from_secs(5)), Some(None));
    fs::remove_dir_all(d.with_extension("away")).unwrap();
}

#[test]
fn bad_requests() {
    let e = Execd::start();
    let d = scratch("watch-bad");
    e.get("/files/watch").assert_error(400, "MISSING_QUERY");
    e.get("/files/watch?path=")
        .assert_error(400, "MISSING_QUERY");
    let m = e
        .get(&format!("/files/watch?{}", query(&d.join("nope"), "")))
        .assert_error(404, "FILE_NOT_FOUND");
    assert!(m.contains("nope"), "{m}");
    let m = e
        .get(&format!("/files/watch?{}", query(&d, "&pattern=a%5B")))
        .assert_error(400, "INVALID_REQUEST_BODY");
    assert!(m.contains("invalid pattern 'a['"), "{m}");
    for bad in [
        "&debounce_ms=10001",
        "&debounce_ms=x",
        "&queue=0",
        "&recursive=maybe",
    ] {
        e.get(&format!("/files/watch?{}", query(&d, bad)))
            .assert_error(400, "INVALID_REQUEST_BODY");
    }
    e.get("/files/watch?path=%24NOPE_NOT_SET/x")
        .assert_error(400, "INVALID_REQUEST_BODY");
}

#[test]
fn paths_are_expanded() {
    let d = scratch("watch-expand");
    let home = scratch("watch-home");
    let e = Execd::start_with(&[], &[("WATCH_DIR", s(&d)), ("HOME", s(&home))]);
    let w = Watch::open(&e, &format!("path={}", enc("$WATCH_DIR")));
    assert_eq!(w.ready["path"], s(&d));
    let f = d.join("f");
    fs::write(&f, "x").unwrap();
    w.expect("created", &f);
    let w = Watch::open(&e, &format!("path={}", enc("${WATCH_DIR}/../watch-x/..")));
    assert_eq!(w.ready["path"], s(d.parent().unwrap()));
    let w = Watch::open(&e, &format!("path={}", enc("~/")));
    assert_eq!(w.ready["path"], s(&home));
}

fn inotify_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| fs::read_link(e.path()).is_ok_and(|l| l == Path::new("anon_inode:inotify")))
        .count()
}

fn notify_threads(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|t| {
            fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("notify-rs"))
        })
        .count()
}

#[test]
fn a_gone_client_releases_the_watcher_and_its_slot() {
    let e = Execd::start_with(&[], &[("EXECD_MAX_WATCHES", "1")]);
    let pid = e.pid();
    let d = scratch("watch-release");
    let (fds, threads) = (inotify_fds(pid), notify_threads(pid));
    let q = format!("/files/watch?{}", query(&d, "&recursive=true"));

    let r = e.send("GET", &q, &[], None);
    assert_eq!(r.status, 200);
    let mut body = r.body;
    let mut buf = Vec::new();
    assert_eq!(read_frame(&mut body, &mut buf).unwrap()["type"], "ready");
    assert_eq!(inotify_fds(pid), fds + 1);
    assert_eq!(notify_threads(pid), threads + 1);
    // The limit: a second watch is refused while the first runs.
    let m = e.get(&q).assert_error(503, "TOO_MANY_WATCHES");
    assert!(m.contains("at most 1"), "{m}");
    // Nothing changes: a ping keeps the stream alive.
    let started = Instant::now();
    let ping = read_frame(&mut body, &mut buf).unwrap();
    assert_eq!(ping["type"], "ping", "{ping}");
    assert_eq!(ping["text"], "pong");
    assert!(started.elapsed() < Duration::from_secs(5));

    drop(body);
    assert!(
        wait_until(Duration::from_secs(10), || inotify_fds(pid) == fds
            && notify_threads(pid) == threads),
        "watcher not released: {} inotify fds, {} notify threads",
        inotify_fds(pid),
        notify_threads(pid)
    );
    let again = Watch::open(&e, &query(&d, ""));
    assert_eq!(again.ready["path"], s(&d));
}
