//! The PTY WebSocket protocol (upstream's `pty_ws.go`), over a connection
//! already upgraded and claimed.
//!
//! Server → client: binary `0x01`+output (stdout, or the terminal),
//! `0x02`+stderr (pipe mode only), `0x03`+8-byte big-endian offset+replay
//! (both channels mixed, as upstream); JSON text frames (`connected`, `exit`, `error`, `pong`,
//! and our `gap`), each ending in `"\n"` as Go's `WriteJSON`.
//!
//! `gap` (our addition) is sent whenever bytes the client asked for, or had
//! not received yet, were evicted from the ring:
//! `{"type":"gap","offset":Y,"data":"N bytes ... evicted ..."}`, where `Y` is
//! the offset at which the following output resumes. Output is otherwise
//! offset-exact: the replay frame carries its offset and live `0x01` frames
//! continue contiguously from its end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::session::{parse_signal, Claim, Mode, Next, PtySession};
use crate::wire::json::to_go_json;

/// Largest frame or message accepted from a client.
pub const MAX_CLIENT_FRAME: usize = 1 << 20;
/// Output per binary frame, at most.
const OUT_CHUNK: usize = 64 << 10;
/// WebSocket ping period.
const PING_EVERY: Duration = Duration::from_secs(30);
/// A client silent for this long is dropped.
const READ_DEADLINE: Duration = Duration::from_secs(60);
/// Time allowed to send the takeover close frame.
const EVICT_WRITE: Duration = Duration::from_millis(200);

/// The WebSocket settings of PTY connections.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_CLIENT_FRAME))
        .max_frame_size(Some(MAX_CLIENT_FRAME))
}

/// Server → client text frame (`ServerFrame`, fields in upstream's order).
#[derive(Debug, Default, Serialize)]
struct ServerFrame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
}

/// Client → server text frame (`ClientFrame`).
#[derive(Debug, Deserialize)]
struct ClientFrame {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    cols: Option<i64>,
    #[serde(default)]
    rows: Option<i64>,
    #[serde(default)]
    signal: Option<String>,
}

fn text(frame: &ServerFrame<'_>) -> Message {
    let mut json = to_go_json(frame);
    json.push(b'\n');
    Message::Text(String::from_utf8_lossy(&json).into_owned().into())
}

fn error_frame(error: &str, code: &str) -> Message {
    text(&ServerFrame {
        kind: "error",
        error: Some(error),
        code: Some(code),
        ..Default::default()
    })
}

fn gap_frame(lost: u64, resume: u64) -> Message {
    let data = format!(
        "{lost} bytes of output (offsets {}..{resume}) were evicted from the replay buffer",
        resume - lost
    );
    text(&ServerFrame {
        kind: "gap",
        offset: Some(resume),
        data: Some(&data),
        ..Default::default()
    })
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// Why the connection loop ended.
enum End {
    /// The client went away or broke the protocol: just release.
    Gone,
    /// Close with this frame.
    Close(Message),
}

/// Runs the protocol on `ws` until the client leaves, the shell exits, the
/// session is deleted or another client takes over; then releases `claim`.
/// `mode` only matters if the shell has to be started.
pub async fn serve<S>(
    session: Arc<PtySession>,
    mut ws: WebSocketStream<S>,
    claim: Claim,
    since: u64,
    mode: Mode,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Claim { id, mut evicted } = claim;
    let end = run(&session, &mut ws, id, &mut evicted, since, mode).await;
    session.release(id);
    if let End::Close(frame) = end {
        let _ = tokio::time::timeout(EVICT_WRITE, ws.send(frame)).await;
    }
}

async fn run<S>(
    session: &Arc<PtySession>,
    ws: &mut WebSocketStream<S>,
    holder: u64,
    evicted: &mut tokio::sync::oneshot::Receiver<()>,
    since: u64,
    mode: Mode,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Replay: one frame, before `connected`, as upstream. Taken before the
    // shell starts, so a fresh shell's first output arrives live (`0x01`),
    // not in a replay frame; the cursor makes the hand-over exact either way.
    let mut changes = session.subscribe();
    let replay = session.snapshot(since);
    let (generation, mode) = match session.ensure_running(mode) {
        Ok(r) => r,
        Err(e) => {
            let _ = ws.send(error_frame(&e.to_string(), "START_FAILED")).await;
            return End::Close(close(1011, "start failed"));
        }
    };
    let mut cursor = replay.offset + replay.data.len() as u64;
    session.advance(holder, cursor);
    if replay.lost > 0
        && ws
            .send(gap_frame(replay.lost, replay.offset))
            .await
            .is_err()
    {
        return End::Gone;
    }
    if !replay.data.is_empty() {
        let mut frame = Vec::with_capacity(9 + replay.data.len());
        frame.push(0x03);
        frame.extend_from_slice(&replay.offset.to_be_bytes());
        frame.extend_from_slice(&replay.data);
        drop(replay);
        if ws.send(Message::Binary(frame.into())).await.is_err() {
            return End::Gone;
        }
    }
    let connected = text(&ServerFrame {
        kind: "connected",
        session_id: Some(&session.id),
        mode: Some(mode.as_str()),
        ..Default::default()
    });
    if ws.send(connected).await.is_err() {
        return End::Gone;
    }

    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut last_seen = Instant::now();
    loop {
        // Output first: everything the ring has beyond the cursor.
        loop {
            match session.next(generation, cursor, OUT_CHUNK) {
                Next::Output(chunk, channel) => {
                    if chunk.lost > 0 && ws.send(gap_frame(chunk.lost, chunk.offset)).await.is_err()
                    {
                        return End::Gone;
                    }
                    cursor = chunk.offset + chunk.data.len() as u64;
                    let mut frame = Vec::with_capacity(1 + chunk.data.len());
                    frame.push(channel);
                    frame.extend_from_slice(&chunk.data);
                    if ws.send(Message::Binary(frame.into())).await.is_err() {
                        return End::Gone;
                    }
                    session.advance(holder, cursor);
                }
                Next::Exited(status) => {
                    let exit = text(&ServerFrame {
                        kind: "exit",
                        exit_code: Some(status.code()),
                        ..Default::default()
                    });
                    if ws.send(exit).await.is_err() {
                        return End::Gone;
                    }
                    return End::Close(close(1000, "process exited"));
                }
                Next::Closed => return End::Close(close(1000, "session closed")),
                Next::Idle => break,
            }
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return End::Gone;
                }
            }
            _ = &mut *evicted => {
                return End::Close(close(4001, "TAKEN_OVER"));
            }
            _ = ping.tick() => {
                if last_seen.elapsed() >= READ_DEADLINE {
                    return End::Gone;
                }
                if ws.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return End::Gone;
                }
            }
            msg = ws.next() => {
                last_seen = Instant::now();
                match msg {
                    None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                        return End::Gone;
                    }
                    Some(Err(WsError::Capacity(e))) => {
                        let msg = format!("frame too large ({e}); the limit is {MAX_CLIENT_FRAME} bytes");
                        let _ = ws.send(error_frame(&msg, "FRAME_TOO_LARGE")).await;
                        return End::Close(close(1009, "frame too large"));
                    }
                    Some(Err(_)) => return End::Gone,
                    Some(Ok(Message::Close(_))) => return End::Gone,
                    Some(Ok(m)) => {
                        if !session.holds(holder) {
                            return End::Close(close(4001, "TAKEN_OVER"));
                        }
                        if let Some(end) = handle(session, ws, m).await {
                            return end;
                        }
                    }
                }
            }
        }
    }
}

/// Handles one client message; `Some` ends the connection.
async fn handle<S>(session: &PtySession, ws: &mut WebSocketStream<S>, msg: Message) -> Option<End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let reply = match msg {
        Message::Binary(b) => match b.split_first() {
            None => None,
            Some((0x00, data)) => return stdin(session, ws, data).await,
            Some((ch, _)) => Some(error_frame(
                &format!("unknown binary channel 0x{ch:02x} (only 0x00, stdin, is accepted)"),
                "INVALID_FRAME",
            )),
        },
        Message::Text(t) => match serde_json::from_str::<ClientFrame>(t.as_str()) {
            Err(e) => Some(error_frame(
                &format!("invalid control frame: {e}"),
                "INVALID_FRAME",
            )),
            Ok(f) => match f.kind.as_str() {
                "stdin" => {
                    let data = f.data.unwrap_or_default();
                    return stdin(session, ws, data.as_bytes()).await;
                }
                "ping" => Some(text(&ServerFrame {
                    kind: "pong",
                    ..Default::default()
                })),
                "resize" => match (f.cols, f.rows) {
                    (Some(c), Some(r)) if c > 0 && r > 0 => {
                        match session.resize(c.unsigned_abs(), r.unsigned_abs()) {
                            Ok(_) => None,
                            Err(e) => {
                                Some(error_frame(&format!("resize failed: {e}"), "RESIZE_FAILED"))
                            }
                        }
                    }
                    _ => Some(error_frame(
                        "resize needs integer cols and rows greater than 0",
                        "INVALID_FRAME",
                    )),
                },
                "signal" => {
                    let name = f.signal.unwrap_or_default();
                    match parse_signal(&name) {
                        None => Some(error_frame(
                            &format!("unknown signal {name:?}"),
                            "INVALID_FRAME",
                        )),
                        Some(sig) => match session.signal(sig) {
                            Ok(()) => None,
                            Err(e) => {
                                Some(error_frame(&format!("signal failed: {e}"), "SIGNAL_FAILED"))
                            }
                        },
                    }
                }
                other => Some(error_frame(
                    &format!("unknown frame type {other:?}"),
                    "INVALID_FRAME",
                )),
            },
        },
        // Pings are answered by tungstenite; pongs only prove liveness.
        _ => None,
    };
    if let Some(frame) = reply {
        if ws.send(frame).await.is_err() {
            return Some(End::Gone);
        }
    }
    None
}

async fn stdin<S>(session: &PtySession, ws: &mut WebSocketStream<S>, data: &[u8]) -> Option<End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if data.is_empty() {
        return None;
    }
    match session.write_stdin(data).await {
        Ok(()) => None,
        // The shell exited: the exit frame follows; the connection stays.
        Err(e) if e.kind() == std::io::ErrorKind::NotConnected => {
            let frame = error_frame(&e.to_string(), "STDIN_WRITE_FAILED");
            ws.send(frame).await.err().map(|_| End::Gone)
        }
        Err(e) => {
            let _ = ws
                .send(error_frame(&e.to_string(), "STDIN_WRITE_FAILED"))
                .await;
            Some(End::Close(close(1011, "stdin write failed")))
        }
    }
}
