//! `/pty`: REST and the WebSocket protocol, over a real WebSocket client.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Execd;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(15);

fn create(e: &Execd, body: Value) -> String {
    let r = e.post("/pty", &body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["session_id"].as_str().unwrap().to_string()
}

struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Live output (0x01).
    out: Vec<u8>,
    /// Live stderr (0x02, pipe mode).
    err: Vec<u8>,
    /// The replay frame (0x03): offset and bytes.
    replay: Option<(u64, Vec<u8>)>,
    /// Text frames, in order.
    texts: Vec<Value>,
    /// Kinds of frames in arrival order: "replay", "out", or the text type.
    order: Vec<String>,
    close: Option<(u16, String)>,
    ended: bool,
}

async fn try_open(e: &Execd, id: &str, query: &str) -> Result<Client, WsError> {
    let url = format!("ws://127.0.0.1:{}/pty/{id}/ws{query}", e.port);
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    Ok(Client {
        ws,
        out: Vec::new(),
        err: Vec::new(),
        replay: None,
        texts: Vec::new(),
        order: Vec::new(),
        close: None,
        ended: false,
    })
}

async fn open(e: &Execd, id: &str, query: &str) -> Client {
    let mut c = try_open(e, id, query).await.unwrap();
    c.until(|c| c.has("connected")).await;
    c
}

fn http_status(r: Result<Client, WsError>) -> u16 {
    match r {
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("connected"),
    }
}

impl Client {
    fn out_text(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }

    fn has(&self, kind: &str) -> bool {
        self.texts.iter().any(|t| t["type"] == kind)
    }

    fn last(&self, kind: &str) -> Option<&Value> {
        self.texts.iter().rev().find(|t| t["type"] == kind)
    }

    /// Processes one message; false once the connection ended.
    async fn step(&mut self) -> bool {
        match self.ws.next().await {
            Some(Ok(Message::Binary(b))) => {
                match b[0] {
                    0x01 => {
                        self.out.extend_from_slice(&b[1..]);
                        self.order.push("out".into());
                    }
                    0x02 => {
                        self.err.extend_from_slice(&b[1..]);
                        self.order.push("err".into());
                    }
                    0x03 => {
                        let off = u64::from_be_bytes(b[1..9].try_into().unwrap());
                        assert!(self.replay.is_none(), "two replay frames");
                        self.replay = Some((off, b[9..].to_vec()));
                        self.order.push("replay".into());
                    }
                    ch => panic!("unexpected channel {ch}"),
                }
                true
            }
            Some(Ok(Message::Text(t))) => {
                assert!(t.ends_with('\n'), "text frame without newline: {t:?}");
                let v: Value = serde_json::from_str(&t).unwrap();
                self.order.push(v["type"].as_str().unwrap().to_string());
                self.texts.push(v);
                true
            }
            Some(Ok(Message::Close(f))) => {
                self.close = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                self.ended = true;
                false
            }
            Some(Ok(_)) => true,
            None | Some(Err(_)) => {
                self.ended = true;
                false
            }
        }
    }

    /// Reads until `pred` holds; panics after [`WAIT`].
    async fn until(&mut self, pred: impl Fn(&Client) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !pred(self) {
            assert!(
                !self.ended,
                "connection ended; out={:?} texts={:?} close={:?}",
                self.out_text(),
                self.texts,
                self.close
            );
            if tokio::time::timeout_at(deadline, self.step())
                .await
                .is_err()
            {
                panic!(
                    "timed out; out={:?} texts={:?}",
                    self.out_text(),
                    self.texts
                );
            }
        }
    }

    async fn until_out(&mut self, needle: &str) {
        self.until(|c| c.out_text().contains(needle)).await;
    }

    async fn stdin(&mut self, s: &str) {
        let mut b = vec![0u8];
        b.extend_from_slice(s.as_bytes());
        self.ws.send(Message::Binary(b.into())).await.unwrap();
    }

    async fn control(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    async fn raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_lifecycle() {
    let e = Execd::start();
    let id = create(&e, json!({}));
    assert_eq!(id.len(), 36);
    let st = e.get(&format!("/pty/{id}")).json();
    assert_eq!(
        st,
        json!({"session_id": id, "running": false, "output_offset": 0})
    );
    let msg = e.get("/pty/nope").assert_error(404, "CONTEXT_NOT_FOUND");
    assert_eq!(msg, "pty session nope not found");
    assert_eq!(http_status(try_open(&e, "nope", "").await), 404);
    e.post_raw("/pty", b"{bad")
        .assert_error(400, "INVALID_REQUEST_BODY");
    // cwd is created.
    let dir = e.tmp.join("made/here");
    let id2 = create(&e, json!({"cwd": dir.to_str().unwrap()}));
    assert!(dir.is_dir());
    let mut c = open(&e, &id2, "").await;
    c.stdin("pwd\n").await;
    c.until_out(&format!("{}\r\n", dir.display())).await;
    assert_eq!(e.delete(&format!("/pty/{id}")).status, 200);
    e.delete(&format!("/pty/{id}"))
        .assert_error(404, "CONTEXT_NOT_FOUND");
    // DELETE kills a connected session's shell: the client sees it end.
    assert_eq!(e.delete(&format!("/pty/{id2}")).status, 200);
    c.until(|c| c.ended).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_resize_ping_and_bad_frames() {
    let e = Execd::start();
    let id = create(&e, json!({}));
    let mut c = open(&e, &id, "").await;
    let conn = c.last("connected").unwrap().clone();
    assert_eq!(
        conn,
        json!({"type": "connected", "session_id": id, "mode": "pty"})
    );
    assert!(c.replay.is_none());

    c.stdin("echo hello_$((6*7))\n").await;
    c.until_out("hello_42").await;

    c.control(json!({"type": "resize", "cols": 120, "rows": 40}))
        .await;
    c.stdin("stty size\n").await;
    c.until_out("40 120").await;

    c.control(json!({"type": "ping"})).await;
    c.until(|c| c.has("pong")).await;

    // Bad input: each gets an error frame, and the session goes on.
    for (m, code) in [
        (Message::Text("{not json".into()), "INVALID_FRAME"),
        (Message::Text(r#"{"type":"bogus"}"#.into()), "INVALID_FRAME"),
        (Message::Binary(vec![7u8, 1, 2].into()), "INVALID_FRAME"),
        (
            Message::Text(r#"{"type":"resize","cols":0,"rows":0}"#.into()),
            "INVALID_FRAME",
        ),
        (
            Message::Text(r#"{"type":"signal","signal":"SIGNOPE"}"#.into()),
            "INVALID_FRAME",
        ),
    ] {
        let before = c.texts.iter().filter(|t| t["type"] == "error").count();
        c.raw(m).await;
        c.until(|c| c.texts.iter().filter(|t| t["type"] == "error").count() > before)
            .await;
        let err = c.last("error").unwrap();
        assert_eq!(err["code"], code, "{err}");
        assert!(!err["error"].as_str().unwrap().is_empty());
    }
    assert!(c.last("error").unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("SIGNOPE"));
    // Huge sizes are clamped.
    c.control(json!({"type": "resize", "cols": 100_000, "rows": 100_000}))
        .await;
    c.stdin("stty size\n").await;
    c.until_out("10000 10000").await;
    // Text stdin still works.
    c.control(json!({"type": "stdin", "data": "echo text_$((2+3))\n"}))
        .await;
    c.until_out("text_5").await;

    // An oversized frame: error frame and close; the session survives.
    c.raw(Message::Binary(vec![0u8; (1 << 20) + 10].into()))
        .await;
    c.until(|c| c.ended).await;
    let mut c = open(&e, &id, &format!("?since={}", u64::MAX)).await;
    c.stdin("stty size; echo again_$((1+1))\n").await;
    c.until_out("again_2").await;
    // The size was kept across the reconnect.
    assert!(c.out_text().contains("10000 10000"), "{}", c.out_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_is_reported() {
    let e = Execd::start();
    let id = create(&e, json!({}));
    let mut c = open(&e, &id, "").await;
    c.stdin("exit 3\n").await;
    c.until(|c| c.has("exit")).await;
    assert_eq!(
        c.last("exit").unwrap(),
        &json!({"type": "exit", "exit_code": 3})
    );
    c.until(|c| c.ended).await;
    assert_eq!(c.close, Some((1000, "process exited".to_string())));
    let st = e.get(&format!("/pty/{id}")).json();
    assert_eq!(st["running"], false);
    assert_eq!(st["exit_code"], 3);
    assert!(st["output_offset"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_ends_the_foreground_job() {
    let e = Execd::start();
    // Interactive shell: SIGINT ends `sleep`, bash survives.
    let id = create(&e, json!({}));
    let mut c = open(&e, &id, "").await;
    c.stdin("sleep 100; echo after_$((1+1))\n").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = std::time::Instant::now();
    c.control(json!({"type": "signal", "signal": "SIGINT"}))
        .await;
    c.stdin("echo alive_$((3+4))\n").await;
    c.until_out("alive_7").await;
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(!c.has("exit"));

    // A command session: the command itself is the foreground job.
    let id = create(&e, json!({"command": "sleep 100"}));
    let mut c = open(&e, &id, "").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.control(json!({"type": "signal", "signal": "INT"})).await;
    c.until(|c| c.has("exit")).await;
    assert_eq!(c.last("exit").unwrap()["exit_code"], -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_and_takeover() {
    let e = Execd::start();
    let id = create(&e, json!({}));
    let mut a = open(&e, &id, "").await;
    a.stdin("export MARK=xy$((1+1))z\necho set_$MARK\n").await;
    a.until_out("set_xy2z").await;

    assert_eq!(http_status(try_open(&e, &id, "").await), 409);
    let r = e.get(&format!("/pty/{id}/ws?takeover=1"));
    let msg = r.assert_error(409, "ALREADY_CONNECTED");
    assert_eq!(
        msg,
        format!("another client is already connected to pty session {id}")
    );

    let mut b = open(&e, &id, "?takeover=1&since=0").await;
    a.until(|c| c.ended).await;
    assert_eq!(a.close, Some((4001, "TAKEN_OVER".to_string())));
    assert_eq!(b.order[0], "replay", "{:?}", b.order);
    assert_eq!(b.order[1], "connected", "{:?}", b.order);
    let (off, data) = b.replay.clone().unwrap();
    assert_eq!(off, 0);
    assert!(String::from_utf8_lossy(&data).contains("set_xy2z"));
    b.stdin("echo again_$MARK\n").await;
    b.until_out("again_xy2z").await;
    drop(b);
    // Released on disconnect: a plain connection works again.
    let mut tries = 0;
    let mut c = loop {
        match try_open(&e, &id, "").await {
            Ok(c) => break c,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("{err}"),
        }
    };
    c.until(|c| c.has("connected")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_since_gets_exactly_the_missed_bytes() {
    let e = Execd::start();
    let id = create(
        &e,
        json!({"command": "for i in $(seq 1 300); do echo line$i; sleep 0.005; done"}),
    );
    let mut a = open(&e, &id, "").await;
    a.until(|c| c.out.len() >= 200).await;
    let n = a.out.len() as u64;
    let first_out = a.out.clone();
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b = open(&e, &id, &format!("?since={n}")).await;
    b.until(|c| c.has("exit")).await;
    let (off, replay) = b.replay.clone().expect("replay frame");
    assert_eq!(off, n);
    let st = e.get(&format!("/pty/{id}")).json();
    assert_eq!(st["running"], false);
    let expected: String = (1..=300).map(|i| format!("line{i}\r\n")).collect();
    assert_eq!(st["output_offset"].as_u64().unwrap(), expected.len() as u64);
    // The first client's bytes, then the replay, then live output.
    let mut got = first_out;
    got.extend_from_slice(&replay);
    got.extend_from_slice(&b.out);
    assert_eq!(String::from_utf8_lossy(&got), expected);
    assert_eq!(b.last("exit").unwrap()["exit_code"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_older_than_the_ring_gets_a_gap_marker() {
    let e = Execd::start();
    // 150000 lines of 12 bytes ("abcdefghij\r\n") = 1.8 MB > 1 MiB.
    let id = create(
        &e,
        json!({"command": "yes abcdefghij | head -n 150000; sleep 100"}),
    );
    let a = open(&e, &id, "").await;
    drop(a);
    let total = 150_000 * 12u64;
    assert!(common::wait_until(Duration::from_secs(30), || {
        e.get(&format!("/pty/{id}")).json()["output_offset"].as_u64() == Some(total)
    }));
    let b = open(&e, &id, "?since=5").await;
    assert_eq!(b.order, ["gap", "replay", "connected"]);
    let gap = &b.texts[0];
    let oldest = total - (1 << 20);
    assert_eq!(gap["offset"], oldest);
    let (off, data) = b.replay.clone().unwrap();
    assert_eq!(off, oldest);
    assert_eq!(data.len(), 1 << 20);
    // Offset-accurate: the data starts mid-line exactly where it should.
    let line = b"abcdefghij\r\n";
    for (i, byte) in data.iter().take(100).enumerate() {
        assert_eq!(*byte, line[((oldest as usize) + i) % 12]);
    }
    assert_eq!(e.delete(&format!("/pty/{id}")).status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_holds_the_shell_back_and_loses_nothing() {
    let e = Execd::start();
    // 2,000,000 lines of 12 bytes = 24 MB, far beyond the ring and the
    // socket buffers.
    let lines = 2_000_000u64;
    let id = create(
        &e,
        json!({"command": format!("yes abcdefghij | head -n {lines}; sleep 100")}),
    );
    let mut c = open(&e, &id, "").await;
    let total = lines * 12;
    // Do not read: the shell is held back once the ring is full of output
    // this client has not been sent, so memory stays bounded.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = e.get(&format!("/pty/{id}")).json()["output_offset"]
        .as_u64()
        .unwrap();
    assert!(
        held < total / 2,
        "the shell was not held back: {held} of {total}"
    );
    let (_, hwm) = e.rss_kib();
    assert!(hwm < 64 * 1024, "execd peak RSS {hwm} KiB");
    // Now read everything: every byte, in order, no gap.
    let line = b"abcdefghij\r\n";
    let mut pos = 0u64;
    while pos < total {
        assert!(c.step().await, "ended at {pos}");
        assert!(!c.has("gap"), "a gap while attached: {:?}", c.texts);
        for b in &c.out {
            assert_eq!(*b, line[(pos % 12) as usize], "at offset {pos}");
            pos += 1;
        }
        c.out.clear();
    }
    assert_eq!(pos, total);
    assert_eq!(e.delete(&format!("/pty/{id}")).status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_written_while_detached_beyond_the_ring_is_a_gap_on_return() {
    let e = Execd::start();
    let lines = 200_000u64; // 2.4 MB, beyond the 1 MiB ring
    let id = create(
        &e,
        json!({"command": format!("yes abcdefghij | head -n {lines}; sleep 100")}),
    );
    // Start the shell, then leave.
    let c = open(&e, &id, "").await;
    drop(c);
    let total = lines * 12;
    assert!(common::wait_until(Duration::from_secs(60), || {
        e.get(&format!("/pty/{id}")).json()["output_offset"].as_u64() == Some(total)
    }));
    let mut c = loop {
        match try_open(&e, &id, "?since=0").await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    c.until(|c| c.has("connected")).await;
    // The gap frame says where the retained output resumes: the last MiB.
    let gap = c.last("gap").cloned().expect("a gap marker");
    assert_eq!(gap["offset"].as_u64(), Some(total - (1 << 20)), "{gap}");
    assert_eq!(e.delete(&format!("/pty/{id}")).status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_mode_separates_stdout_and_stderr() {
    let e = Execd::start();
    let id = create(&e, json!({}));
    let mut c = open(&e, &id, "?pty=0").await;
    assert_eq!(
        c.last("connected").unwrap(),
        &json!({"type": "connected", "session_id": id, "mode": "pipe"})
    );
    // No terminal: no prompt, no echo of the typed command.
    c.stdin("echo out; echo err >&2; echo out2; echo err2 >&2\n")
        .await;
    c.until(|c| c.out == b"out\nout2\n" && c.err == b"err\nerr2\n")
        .await;
    // Resize is accepted and ignored (there is no terminal).
    c.control(json!({"type": "resize", "cols": 120, "rows": 40}))
        .await;
    c.stdin("tty >/dev/null || echo notty\n").await;
    c.until_out("notty").await;
    assert!(!c.has("error"), "{:?}", c.texts);
    assert!(c.err.ends_with(b"err2\n"), "{:?}", c.err);

    // A reconnect replays both channels, mixed, under 0x03.
    drop(c);
    // The server releases the session once it notices the disconnect.
    let mut c = loop {
        match try_open(&e, &id, "?pty=1").await {
            Err(WsError::Http(r)) if r.status() == 409 => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => break r.unwrap(),
        }
    };
    c.until(|c| c.has("connected")).await;
    // The running shell keeps its mode.
    assert_eq!(c.last("connected").unwrap()["mode"], "pipe");
    let (off, replay) = c.replay.clone().unwrap();
    assert_eq!(off, 0);
    // In arrival order, which between two pipes is not fixed; each
    // channel's own order is kept.
    let replay_text = String::from_utf8_lossy(&replay).into_owned();
    let lines: Vec<&str> = replay_text.lines().collect();
    let only = |keep: &[&str]| -> Vec<&str> {
        lines.iter().copied().filter(|l| keep.contains(l)).collect()
    };
    assert_eq!(only(&["out", "out2", "notty"]), ["out", "out2", "notty"]);
    assert_eq!(only(&["err", "err2"]), ["err", "err2"]);
    assert_eq!(lines.len(), 5, "{replay_text:?}");
    assert_eq!(
        e.get(&format!("/pty/{id}")).json()["output_offset"],
        replay.len()
    );

    c.stdin("exit 7\n").await;
    c.until(|c| c.has("exit")).await;
    assert_eq!(
        c.last("exit").unwrap(),
        &json!({"type": "exit", "exit_code": 7})
    );
    c.until(|c| c.ended).await;
    assert_eq!(c.close, Some((1000, "process exited".to_string())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_mode_cat_echoes_once_and_exits() {
    let e = Execd::start();
    let id = create(&e, json!({"command": "cat; exit 5"}));
    let mut c = open(&e, &id, "?pty=0").await;
    assert_eq!(c.last("connected").unwrap()["mode"], "pipe");
    c.stdin("hello\n").await;
    c.until_out("hello\n").await;
    c.stdin("world\n").await;
    c.until_out("world\n").await;
    // Exactly once each: no terminal echo.
    assert_eq!(c.out_text(), "hello\nworld\n");
    assert!(c.err.is_empty());
    // Signals go to the shell's process group: bash and cat both die.
    c.control(json!({"type": "signal", "signal": "SIGKILL"}))
        .await;
    c.until(|c| c.has("exit")).await;
    assert_eq!(c.last("exit").unwrap()["exit_code"], -1);
    c.until(|c| c.ended).await;

    // The command's own exit code.
    let id = create(&e, json!({"command": "head -n1; exit 5"}));
    let mut c = open(&e, &id, "?pty=0").await;
    c.stdin("line\n").await;
    c.until(|c| c.has("exit")).await;
    assert_eq!(c.out_text(), "line\n");
    assert_eq!(c.last("exit").unwrap()["exit_code"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_without_a_client_are_closed_after_the_idle_timeout() {
    let e = Execd::start_with(&["-pty-idle-timeout=1s"], &[]);
    // Never attached: removed.
    let never = create(&e, json!({}));
    // Attached, then left: removed, and its shell killed.
    let left = create(&e, json!({"command": "echo $$ > /dev/null; sleep 300"}));
    let c = open(&e, &left, "").await;
    drop(c);
    // Attached for longer than the timeout: kept.
    let kept = create(&e, json!({}));
    let _holder = open(&e, &kept, "").await;
    assert!(common::wait_until(Duration::from_secs(10), || {
        e.get(&format!("/pty/{never}")).status == 404
            && e.get(&format!("/pty/{left}")).status == 404
    }));
    assert_eq!(e.get(&format!("/pty/{kept}")).status, 200);
}
