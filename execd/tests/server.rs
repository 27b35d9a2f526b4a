//! Server-wide behaviour: auth, routing, bad input, load, flags.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

const UNAUTHORIZED: &str =
    r#"{"error":"Unauthorized: invalid or missing header X-EXECD-ACCESS-TOKEN"}"#;

#[test]
fn ping_is_empty_200() {
    let e = Execd::start();
    let r = e.get("/ping");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
}

#[test]
fn access_token_guards_every_route() {
    let e = Execd::start_with(&[], &[("EXECD_ACCESS_TOKEN", "s3cret")]);
    for (method, path) in [
        ("GET", "/ping"),
        ("POST", "/command"),
        ("GET", "/command/status/x"),
        ("GET", "/nope"),
    ] {
        let r = e
            .send(method, path, &[("X-EXECD-ACCESS-TOKEN", "")], None)
            .full();
        assert_eq!(r.status, 401, "{method} {path}");
        assert_eq!(r.text(), UNAUTHORIZED);
        assert_eq!(
            r.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        let r = e
            .send(method, path, &[("X-EXECD-ACCESS-TOKEN", "s3cre")], None)
            .full();
        assert_eq!(r.status, 401);
    }
    assert_eq!(e.get("/ping").status, 200); // the harness sends the right token
    let ev = e.run(json!({"command": "echo ok"}));
    assert_eq!(texts(&ev, "stdout"), ["ok"]);
}

#[test]
fn access_token_flag_overrides_env() {
    let e = Execd::start_with(
        &["--access-token=cli-token"],
        &[("EXECD_ACCESS_TOKEN", "env-token")],
    );
    let r = e
        .send(
            "GET",
            "/ping",
            &[("X-EXECD-ACCESS-TOKEN", "env-token")],
            None,
        )
        .full();
    assert_eq!(r.status, 401);
    let r = e
        .send(
            "GET",
            "/ping",
            &[("X-EXECD-ACCESS-TOKEN", "cli-token")],
            None,
        )
        .full();
    assert_eq!(r.status, 200);
}

#[test]
fn unknown_routes_are_404() {
    let e = Execd::start();
    let r = e.get("/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "404 page not found");
    assert_eq!(e.get("/command").status, 404); // wrong method
}

#[test]
fn bad_command_requests_get_clear_errors() {
    let e = Execd::start();
    let cases: Vec<(&[u8], &str)> = vec![
        (b"", "EOF"),
        (b"{", "EOF while parsing"),
        (b"[1,2]", "invalid type"),
        (br#"{"command":5}"#, "invalid type"),
        (br#"{}"#, "'Command' failed on the 'required' tag"),
        (
            br#"{"command":""}"#,
            "'Command' failed on the 'required' tag",
        ),
        (
            br#"{"command":"true","timeout":-100}"#,
            "'Timeout' failed on the 'gte' tag",
        ),
        (br#"{"command":"true","timeout":1.5}"#, "invalid type"),
        (br#"{"command":"true","timeout":1e30}"#, "invalid type"),
        (
            br#"{"command":"true","gid":5}"#,
            "uid is required when gid is provided",
        ),
        (br#"{"command":"true","uid":-1}"#, "invalid value"),
        (
            br#"{"command":"true","cwd":"/no/such/dir"}"#,
            "working directory does not exist",
        ),
        (
            br#"{"command":"true","cwd":"/etc/hostname"}"#,
            "working directory path is not a directory",
        ),
        (
            br#"{"command":"true","cwd":"$NOPE_NOT_SET/x"}"#,
            "undefined environment variables: NOPE_NOT_SET",
        ),
        (br#"{"command":"a\u0000b"}"#, "NUL"),
        (
            br#"{"command":"true","argv":["true"]}"#,
            "only one of command and argv",
        ),
        (br#"{"command":"true","envs":{"A=B":"c"}}"#, "envs"),
    ];
    for (body, want) in cases {
        let r = e.post_raw("/command", body);
        let msg = r.assert_error(400, "INVALID_REQUEST_BODY");
        assert!(
            msg.contains(want),
            "{:?}: {msg:?} lacks {want:?}",
            String::from_utf8_lossy(body)
        );
    }
    // A body past the limit is refused without being buffered whole.
    let big = format!(r#"{{"command":"{}"}}"#, "x".repeat(17 << 20));
    let r = e.post_raw("/command", big.as_bytes());
    r.assert_error(413, "INVALID_REQUEST_BODY");
    // The largest timeout is accepted and simply never fires.
    let ev = e.run(json!({"command": "echo big", "timeout": i64::MAX}));
    assert_eq!(texts(&ev, "stdout"), ["big"]);
    // execd is fine afterwards.
    assert_eq!(
        texts(&e.run(json!({"command": "echo fine"})), "stdout"),
        ["fine"]
    );
}

#[test]
fn thousand_concurrent_commands() {
    let e = Execd::start();
    let port = e.port;
    let threads: Vec<_> = (0..1000)
        .map(|i| {
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let body = json!({"command": format!("sleep 1; echo n{i}")}).to_string();
                    let out = raw_post(port, "/command", &body);
                    out.contains(&format!("\"text\":\"n{i}\""))
                        && out.contains("execution_complete")
                })
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        e.get("/ping").status,
        200,
        "execd answers while 1,000 commands run"
    );
    let ok = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(ok, 1000);
    let (rss, _) = e.rss_kib();
    assert!(
        rss < 64 * 1024,
        "RSS after 1,000 concurrent commands: {rss} KiB"
    );
}

#[test]
fn command_limit_is_enforced() {
    let e = Execd::start_with(&["-max-commands=2"], &[]);
    let a = e.stream("/command", &json!({"command": "sleep 1"}));
    let b = e.stream("/command", &json!({"command": "sleep 1"}));
    let msg = e
        .post("/command", &json!({"command": "true"}))
        .assert_error(503, "RUNTIME_ERROR");
    assert!(msg.contains("limit 2"), "{msg}");
    a.collect_all();
    b.collect_all();
    assert_eq!(
        e.run(json!({"command": "true"})).last().unwrap()["type"],
        "execution_complete"
    );
}

#[test]
fn flag_errors_exit_2_and_help_exits_0() {
    let bin =
        std::env::var("EXECD_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_execd").to_string());
    let out = Command::new(&bin)
        .arg("-no-such-flag")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("flag provided but not defined: -no-such-flag"));
    let out = Command::new(&bin)
        .arg("-graceful-shutdown-timeout=soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(&bin).arg("-h").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("-port"));
}

#[test]
fn failed_starts_racing_with_exits() {
    // A failed exec is waited for by std itself; the reaper must not steal
    // that child (this once made the handler panic and drop the connection).
    let e = Execd::start();
    let port = e.port;
    let threads: Vec<_> = (0..200)
        .map(|i| {
            std::thread::spawn(move || {
                let body = if i % 2 == 0 {
                    json!({"argv": ["/nonexistent/prog"]}).to_string()
                } else {
                    json!({"command": "true"}).to_string()
                };
                let out = raw_post(port, "/command", &body);
                if i % 2 == 0 {
                    out.contains("no such file or directory") && out.contains("\"type\":\"error\"")
                } else {
                    out.contains("execution_complete")
                }
            })
        })
        .collect();
    let ok = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(ok, 200);
}

#[test]
fn sigterm_and_sigint_end_execd_cleanly() {
    for sig in ["-TERM", "-INT"] {
        let mut e = Execd::start();
        assert_eq!(e.get("/ping").status, 200);
        let ok = std::process::Command::new("kill")
            .arg(sig)
            .arg(e.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let st = e
            .wait_exit(std::time::Duration::from_secs(5))
            .unwrap_or_else(|| panic!("execd still running 5 s after {sig}"));
        assert!(st.success(), "{sig}: {st:?}");
    }
}
