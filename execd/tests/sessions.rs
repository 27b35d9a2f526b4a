//! `/session`: a real persistent bash per session.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn create(e: &Execd, body: Option<Value>) -> String {
    let r = match body {
        Some(b) => e.post("/session", &b),
        None => e
            .send(
                "POST",
                "/session",
                &[("Content-Type", "application/json")],
                None,
            )
            .full(),
    };
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["session_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36);
    id
}

fn run(e: &Execd, sid: &str, body: Value) -> Vec<Value> {
    let ev = e
        .stream(&format!("/session/{sid}/run"), &body)
        .collect_all();
    assert_well_formed(&ev);
    assert_eq!(init_id(&ev), sid);
    ev
}

fn cmd(e: &Execd, sid: &str, command: &str) -> Vec<Value> {
    run(e, sid, json!({"command": command}))
}

#[test]
fn shell_state_persists() {
    let e = Execd::start();
    let sid = create(&e, None);
    let ev = cmd(
        &e,
        &sid,
        "x=5; export EXP=exported; f() { echo fn:$1; }; alias ll='echo aliased'; set -o pipefail; cd /tmp; echo to-stderr >&2",
    );
    assert_eq!(texts(&ev, "stderr"), ["to-stderr"]);
    assert!(texts(&ev, "stdout").is_empty());
    assert_eq!(ev.last().unwrap()["type"], "execution_complete");
    let ev = cmd(
        &e,
        &sid,
        "echo $x $EXP; f 1; ll; pwd; [[ -o pipefail ]] && echo pipefail; false",
    );
    assert_eq!(
        texts(&ev, "stdout"),
        ["5 exported", "fn:1", "aliased", "/tmp", "pipefail"]
    );
    let last = ev.last().unwrap();
    assert_eq!(last["type"], "error");
    assert_eq!(last["error"]["evalue"], "1");
    // $? carries over like in a terminal; declare -A stays global.
    let ev = cmd(&e, &sid, "echo status:$?; declare -A m=([k]=v)");
    assert_eq!(texts(&ev, "stdout"), ["status:1"]);
    let ev = cmd(&e, &sid, "echo ${m[k]}; unset x; echo x=${x:-unset}");
    assert_eq!(texts(&ev, "stdout"), ["v", "x=unset"]);
}

#[test]
fn exit_codes_and_exit() {
    let e = Execd::start();
    let sid = create(&e, None);
    let ev = cmd(&e, &sid, "echo before; exit 7");
    assert_eq!(texts(&ev, "stdout"), ["before"]);
    let last = ev.last().unwrap();
    assert_eq!(last["error"]["ename"], "CommandExecError");
    assert_eq!(last["error"]["evalue"], "7");
    assert!(!types(&ev).contains(&"execution_complete"));
    // The session goes on in a fresh shell.
    let ev = cmd(&e, &sid, "echo again");
    assert_eq!(texts(&ev, "stdout"), ["again"]);
    assert_eq!(ev.last().unwrap()["type"], "execution_complete");
}

#[test]
fn output_edges() {
    let e = Execd::start();
    let sid = create(&e, None);
    let ev = cmd(&e, &sid, r#"printf '{"foo":1}'"#);
    assert_eq!(texts(&ev, "stdout"), [r#"{"foo":1}"#]);
    let ev = cmd(&e, &sid, "true");
    assert!(texts(&ev, "stdout").is_empty());
    let ev = cmd(
        &e,
        &sid,
        "cat <<'EOF'\nline one\n$HOME stays\nEOF\necho 'it''s'",
    );
    assert_eq!(texts(&ev, "stdout"), ["line one", "$HOME stays", "its"]);
    let ev = cmd(&e, &sid, "if then fi");
    assert_eq!(ev.last().unwrap()["error"]["evalue"], "2");
    assert_eq!(texts(&cmd(&e, &sid, "echo ok"), "stdout"), ["ok"]);
    let ev = cmd(&e, &sid, r"printf 'a\n\nb\n'");
    assert_eq!(texts(&ev, "stdout"), ["a", "\n", "b"]);
    let ev = cmd(&e, &sid, "cat; echo stdin-is-null");
    assert_eq!(texts(&ev, "stdout"), ["stdin-is-null"]);
}

#[test]
fn redirections_and_exec() {
    let e = Execd::start();
    let dir = scratch("redir");
    let sid = create(&e, None);
    let tee = dir.join("tee.log");
    let ev = cmd(
        &e,
        &sid,
        &format!(
            "exec 3>&1; echo via3 >&3; exec > >(tee {}); echo teed",
            tee.display()
        ),
    );
    let out = texts(&ev, "stdout");
    assert!(out.contains(&"via3"), "{out:?}");
    let ev = cmd(&e, &sid, "echo next");
    let all: Vec<&str> = out
        .iter()
        .chain(texts(&ev, "stdout").iter())
        .copied()
        .collect();
    assert!(all.contains(&"next"), "{all:?}");
    std::fs::write(dir.join("child.sh"), "echo from-child\n").unwrap();
    let ev = cmd(
        &e,
        &sid,
        &format!("bash -c 'exec bash {}'", dir.join("child.sh").display()),
    );
    assert!(texts(&ev, "stdout").contains(&"from-child"));
    // Output sent to /dev/null by the command itself still ends the run.
    let sid2 = create(&e, None);
    let start = Instant::now();
    let ev = cmd(&e, &sid2, "exec >/dev/null; echo hidden");
    assert!(texts(&ev, "stdout").is_empty());
    assert_eq!(ev.last().unwrap()["type"], "execution_complete");
    assert!(start.elapsed() < Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cwd_on_create_and_run() {
    let e = Execd::start();
    let dir = scratch("cwd");
    let fresh = dir.join("made/by/create");
    let sid = create(&e, Some(json!({"cwd": fresh.to_str().unwrap()})));
    assert!(fresh.is_dir(), "create makes the directory");
    assert_eq!(
        texts(&cmd(&e, &sid, "pwd"), "stdout"),
        [fresh.to_str().unwrap()]
    );
    let ev = run(
        &e,
        &sid,
        json!({"command": "pwd", "cwd": dir.to_str().unwrap()}),
    );
    assert_eq!(texts(&ev, "stdout"), [dir.to_str().unwrap()]);
    assert_eq!(
        texts(&cmd(&e, &sid, "pwd"), "stdout"),
        [dir.to_str().unwrap()],
        "run cwd persists"
    );
    let r = e.post(
        &format!("/session/{sid}/run"),
        &json!({"command": "pwd", "cwd": "/does/not/exist"}),
    );
    let msg = r.assert_error(400, "INVALID_REQUEST_BODY");
    assert!(msg.contains("working directory"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn timeout_kills_the_run_not_the_session() {
    let e = Execd::start();
    let sid = create(&e, None);
    let ev = cmd(&e, &sid, "kept=yes; sleep 300 & echo PID $!");
    let old_job = pids_from(&ev)[0];
    let start = Instant::now();
    let ev = run(
        &e,
        &sid,
        json!({"command": "echo PID $BASHPID; sleep 30 & echo PID $!; wait $!", "timeout": 500}),
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let last = ev.last().unwrap();
    assert_eq!(last["type"], "error");
    assert_eq!(last["error"]["evalue"], "-1");
    let pids = pids_from(&ev);
    assert!(
        wait_until(Duration::from_secs(2), || !alive(pids[1])),
        "the run's sleep survived"
    );
    assert_eq!(
        texts(&cmd(&e, &sid, "echo $kept"), "stdout"),
        ["yes"],
        "shell state survives a timeout"
    );
    assert!(
        alive(old_job),
        "a background job of an earlier run is not the timed-out run's"
    );
    // A builtin loop cannot be killed alone: the shell is replaced.
    let ev = run(
        &e,
        &sid,
        json!({"command": "while :; do :; done", "timeout": 300}),
    );
    assert_eq!(ev.last().unwrap()["error"]["evalue"], "-1");
    assert_eq!(texts(&cmd(&e, &sid, "echo alive"), "stdout"), ["alive"]);
}

#[test]
fn background_jobs_do_not_block_runs() {
    let e = Execd::start();
    let sid = create(&e, None);
    let start = Instant::now();
    let ev = cmd(&e, &sid, "sleep 30 & echo started");
    assert_eq!(texts(&ev, "stdout"), ["started"]);
    assert_eq!(texts(&cmd(&e, &sid, "echo next"), "stdout"), ["next"]);
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn runs_in_one_session_are_serialized() {
    let e = Execd::start();
    let sid = create(&e, None);
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let port = e.port;
            let sid = sid.clone();
            std::thread::spawn(move || {
                let body = json!({"command": format!("echo start{i}; sleep 0.2; echo end{i}")})
                    .to_string();
                let out = raw_post(port, &format!("/session/{sid}/run"), &body);
                out
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let out = t.join().unwrap();
        let a = out.find(&format!("\"start{i}\"")).expect("start");
        let b = out.find(&format!("\"end{i}\"")).expect("end");
        assert!(a < b);
        for j in 0..4 {
            if j != i {
                assert!(
                    !out.contains(&format!("start{j}\"")),
                    "outputs mixed: {out}"
                );
            }
        }
        assert!(out.contains("execution_complete"));
    }
}

#[test]
fn delete_and_unknown_sessions() {
    let e = Execd::start();
    let sid = create(&e, None);
    let ev = cmd(&e, &sid, "sleep 300 & echo PID $!");
    let pid = pids_from(&ev)[0];
    assert!(alive(pid));
    assert_eq!(e.delete(&format!("/session/{sid}")).status, 200);
    assert!(
        wait_until(Duration::from_secs(2), || !alive(pid)),
        "session processes must die with it"
    );
    let msg = e
        .delete(&format!("/session/{sid}"))
        .assert_error(404, "CONTEXT_NOT_FOUND");
    assert_eq!(msg, format!("session {sid} not found"));
    let r = e.post(&format!("/session/{sid}/run"), &json!({"command": "true"}));
    assert_eq!(
        r.assert_error(500, "RUNTIME_ERROR"),
        "error running in session. context not found"
    );
    // DELETE /command?id=<session> closes the session, as upstream.
    let sid = create(&e, None);
    assert_eq!(e.delete(&format!("/command?id={sid}")).status, 200);
    e.delete(&format!("/session/{sid}"))
        .assert_error(404, "CONTEXT_NOT_FOUND");
}

#[test]
fn bad_session_requests() {
    let e = Execd::start();
    e.post_raw("/session", b"{not json")
        .assert_error(400, "INVALID_REQUEST_BODY");
    let sid = create(&e, Some(json!({})));
    e.post(&format!("/session/{sid}/run"), &json!({}))
        .assert_error(400, "INVALID_REQUEST_BODY");
    e.post(
        &format!("/session/{sid}/run"),
        &json!({"command": "true", "timeout": -1}),
    )
    .assert_error(400, "INVALID_REQUEST_BODY");
    e.post_raw(&format!("/session/{sid}/run"), b"")
        .assert_error(400, "INVALID_REQUEST_BODY");
    assert_eq!(texts(&cmd(&e, &sid, "echo fine"), "stdout"), ["fine"]);
}

#[test]
fn idle_sessions_are_closed() {
    let e = Execd::start_with(&["-session-idle-timeout=1s"], &[]);
    let sid = create(&e, None);
    assert!(wait_until(Duration::from_secs(5), || e
        .delete(&format!("/session/{sid}"))
        .status
        == 404));
}

#[test]
fn without_bash_sessions_fail_clearly_and_commands_use_sh() {
    let empty = scratch("nobash");
    let e = Execd::start_with(&[], &[("PATH", empty.to_str().unwrap())]);
    let msg = e
        .post("/session", &json!({}))
        .assert_error(500, "RUNTIME_ERROR");
    assert!(msg.contains("bash not found"), "{msg}");
    // Commands fall back to sh, as upstream.
    let ev = e.run(json!({"command": "echo from-sh"}));
    assert_eq!(texts(&ev, "stdout"), ["from-sh"]);
    let _ = std::fs::remove_dir_all(&empty);
}
