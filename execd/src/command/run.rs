//! Running one command: spawn, stream or spool its output, enforce its
//! timeout, record its end.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tracing::Instrument;

use super::lines::LineSplitter;
use super::registry::Record;
use super::{elapsed_ms, now, CommandError, Commands, Plan};
use crate::process::spawn::prepare;
use crate::process::{reaper, tree, ExitStatus};
use crate::wire::event::Event;
use crate::wire::stream::{EventSink, StreamRx};

/// Bytes read from a pipe at once.
const READ_CHUNK: usize = 16 * 1024;
/// Interval of `ping` keep-alives (upstream: 3 s).
const PING_EVERY: Duration = Duration::from_secs(3);

fn build(plan: &Plan) -> Command {
    let mut cmd = Command::new(&plan.program);
    cmd.args(&plan.args)
        .env_clear()
        .envs(plan.env.pairs().iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    if let Some(cwd) = &plan.cwd {
        cmd.current_dir(cwd);
    }
    prepare(&mut cmd, plan.creds.clone(), None);
    cmd
}

/// Go-like text of a start failure: `fork/exec /bin/x: no such file or directory`.
pub(crate) fn start_error(program: &Path, e: &std::io::Error) -> String {
    let text = match e.raw_os_error() {
        Some(code) => {
            let d = nix::errno::Errno::from_raw(code).desc();
            let mut c = d.chars();
            c.next()
                .map_or_else(String::new, |f| f.to_lowercase().chain(c).collect())
        }
        None => e.to_string(),
    };
    format!("fork/exec {}: {text}", program.display())
}

fn receiver(fd: impl Into<OwnedFd>) -> std::io::Result<pipe::Receiver> {
    pipe::Receiver::from_owned_fd(fd.into())
}

/// Sends `init` and an `error` for a command that could not start.
fn start_failed(id: &str, msg: String) -> StreamRx {
    let (mut sink, rx) = EventSink::channel();
    let mut buf = Event::init(id).to_bytes();
    Event::command_error(msg.clone(), msg).write_to(&mut buf);
    tokio::spawn(async move { sink.send(buf).await });
    rx
}

fn watch_timeout(rec: &Arc<Record>, timeout: Option<Duration>) {
    let Some(limit) = timeout else { return };
    let rec = rec.clone();
    tokio::spawn(async move {
        if rec.wait_done(limit).await {
            return;
        }
        if let Some(leader) = rec.leader() {
            tracing::info!(command = %rec.id, ?limit, "timeout: killing the process tree");
            let _ =
                tokio::task::spawn_blocking(move || tree::kill_now(&HashSet::from([leader]))).await;
        }
    });
}

fn terminal_event(status: Result<ExitStatus, String>, started: Instant) -> Vec<u8> {
    match status {
        Ok(s) if s.success() => Event::complete(elapsed_ms(started)).to_bytes(),
        Ok(s) => Event::command_error(s.code().to_string(), s.describe()).to_bytes(),
        Err(e) => Event::command_error(e.clone(), e).to_bytes(),
    }
}

async fn exit_of(rx: oneshot::Receiver<ExitStatus>) -> Result<ExitStatus, String> {
    rx.await.map_err(|_| "wait: exit status lost".to_string())
}

/// A started process with piped stdout and stderr.
#[derive(Debug)]
pub(super) struct Started {
    pid: i32,
    leader: Option<tree::Proc>,
    exit: oneshot::Receiver<ExitStatus>,
    out: pipe::Receiver,
    err: pipe::Receiver,
}

impl Started {
    /// Whether the process has already exited.
    pub(super) fn exited(&mut self) -> bool {
        !matches!(
            self.exit.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        )
    }
}

/// Spawns `cmd` with stdout and stderr piped to execd.
pub(super) fn spawn_piped(cmd: &mut Command) -> std::io::Result<Started> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let (mut child, exit) = reaper::spawn(cmd)?;
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let leader = tree::identify(pid);
    let pipes = child
        .stdout
        .take()
        .zip(child.stderr.take())
        .ok_or_else(|| std::io::Error::other("missing pipes"))
        .and_then(|(o, e)| Ok((receiver(o)?, receiver(e)?)));
    match pipes {
        Ok((out, err)) => Ok(Started {
            pid,
            leader,
            exit,
            out,
            err,
        }),
        Err(e) => {
            // Cannot happen with piped stdio; never leave the process behind.
            if let Some(l) = leader {
                tree::kill_now(&HashSet::from([l]));
            }
            Err(e)
        }
    }
}

/// Starts a foreground command: its events are streamed as it runs.
pub(super) async fn foreground(svc: &Arc<Commands>, plan: Plan) -> Result<StreamRx, CommandError> {
    let started = Instant::now();
    let started_at = now();
    let warm = if plan.warm_ok && svc.warm.serves(&plan.program) {
        svc.warm.take(&plan.content, plan.cwd.as_deref()).await
    } else {
        None
    };
    let proc = match warm {
        Some(p) => p,
        None => {
            let mut cmd = build(&plan);
            match spawn_piped(&mut cmd) {
                Ok(p) => p,
                Err(e) => {
                    svc.registry.release();
                    let msg = start_error(&plan.program, &e);
                    tracing::info!(command = %plan.id, error = %msg, "command failed to start");
                    return Ok(start_failed(&plan.id, msg));
                }
            }
        }
    };
    let rec = svc.registry.insert(
        plan.id.clone(),
        plan.content.clone(),
        false,
        None,
        started_at,
        proc.leader,
    );
    tracing::debug!(command = %plan.id, pid = proc.pid, "foreground command started");
    watch_timeout(&rec, plan.timeout);
    let (sink, rx) = EventSink::channel();
    let span = tracing::info_span!("command", id = %plan.id);
    tokio::spawn(foreground_task(svc.clone(), rec, proc, sink, started).instrument(span));
    Ok(rx)
}

/// One output pipe of a foreground command.
struct Output {
    kind: &'static str,
    pipe: pipe::Receiver,
    lines: LineSplitter,
    eof: bool,
}

impl Output {
    fn new(kind: &'static str, pipe: pipe::Receiver) -> Self {
        Self {
            kind,
            pipe,
            lines: LineSplitter::default(),
            eof: false,
        }
    }

    /// Turns a read result into framed events.
    fn feed(&mut self, r: std::io::Result<usize>, buf: &[u8], out: &mut Vec<u8>) {
        match r {
            Ok(0) | Err(_) => self.eof = true,
            Ok(n) => {
                let kind = self.kind;
                self.lines
                    .push(&buf[..n], &mut |l| Event::output(kind, l).write_to(out));
            }
        }
    }

    /// Reads what is already in the pipe, without waiting. This reads the
    /// descriptor directly: tokio's `try_read` answers `WouldBlock` until the
    /// reactor has seen readiness, which can lag behind the exit signal.
    fn drain(&mut self, buf: &mut [u8], out: &mut Vec<u8>) {
        while !self.eof {
            match nix::unistd::read(&self.pipe, buf) {
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => self.feed(Err(e.into()), buf, out),
                Ok(n) => self.feed(Ok(n), buf, out),
            }
        }
        let kind = self.kind;
        self.lines
            .finish(&mut |l| Event::output(kind, l).write_to(out));
    }

    /// Leaves a pipe that background descendants still hold to a task that
    /// reads and discards it, so that they never get EPIPE.
    fn detach(self) {
        if self.eof {
            return;
        }
        let mut pipe = self.pipe;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            while matches!(pipe.read(&mut buf).await, Ok(n) if n > 0) {}
        });
    }
}

async fn foreground_task(
    svc: Arc<Commands>,
    rec: Arc<Record>,
    proc: Started,
    mut sink: EventSink,
    started: Instant,
) {
    let Started {
        mut exit, out, err, ..
    } = proc;
    let mut first = Event::init(&rec.id).to_bytes();
    Event::ping().write_to(&mut first);
    sink.send(first).await;
    let mut out = Output::new("stdout", out);
    let mut err = Output::new("stderr", err);
    let mut obuf = vec![0u8; READ_CHUNK];
    let mut ebuf = vec![0u8; READ_CHUNK];
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let status = loop {
        let mut chunk = Vec::new();
        tokio::select! {
            r = out.pipe.read(&mut obuf), if !out.eof => out.feed(r, &obuf, &mut chunk),
            r = err.pipe.read(&mut ebuf), if !err.eof => err.feed(r, &ebuf, &mut chunk),
            s = &mut exit => break s.map_err(|_| "wait: exit status lost".to_string()),
            _ = ping.tick() => Event::ping().write_to(&mut chunk),
        }
        sink.send(chunk).await;
    };
    let mut chunk = Vec::new();
    out.drain(&mut obuf, &mut chunk);
    err.drain(&mut ebuf, &mut chunk);
    out.detach();
    err.detach();
    rec.finish(status.clone());
    svc.registry.release();
    tracing::debug!(?status, "foreground command finished");
    chunk.extend_from_slice(&terminal_event(status, started));
    sink.send(chunk).await;
}

/// Starts a background command: output (stdout and stderr interleaved) is
/// spooled to `$TMPDIR/<id>.output`; the stream ends at once.
pub(super) fn background(svc: &Arc<Commands>, plan: Plan) -> Result<StreamRx, CommandError> {
    let path = svc.spool_path(&plan.id);
    std::fs::create_dir_all(&svc.cfg.tmp_dir)?;
    let file = std::fs::File::create(&path)?;
    let (r, w) = std::io::pipe()?;
    let mut cmd = build(&plan);
    cmd.stdout(w.try_clone()?).stderr(w);
    let started = Instant::now();
    let started_at = now();
    let spawned = reaper::spawn(&mut cmd);
    drop(cmd); // closes execd's copies of the pipe's write end
    let (child, exit_rx) = match spawned {
        Ok(c) => c,
        Err(e) => {
            svc.registry.release();
            let msg = start_error(&plan.program, &e);
            let rec = svc.registry.insert(
                plan.id.clone(),
                plan.content,
                true,
                Some(path),
                started_at,
                None,
            );
            rec.finish(Err(msg.clone()));
            return Ok(start_failed(&plan.id, msg));
        }
    };
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let leader = tree::identify(pid);
    let rec = svc.registry.insert(
        plan.id.clone(),
        plan.content.clone(),
        true,
        Some(path),
        started_at,
        leader,
    );
    tracing::debug!(command = %plan.id, pid, "background command started");
    let reader = receiver(r)?;
    tokio::spawn(spool(
        reader,
        tokio::fs::File::from_std(file),
        svc.cfg.max_log_bytes,
        plan.id.clone(),
    ));
    let svc2 = svc.clone();
    let rec2 = rec.clone();
    let span = tracing::info_span!("command", id = %plan.id, background = true);
    tokio::spawn(
        async move {
            let status = exit_of(exit_rx).await;
            rec2.finish(status.clone());
            svc2.registry.release();
            tracing::debug!(?status, "background command finished");
        }
        .instrument(span),
    );
    watch_timeout(&rec, plan.timeout);
    let (mut sink, rx) = EventSink::channel();
    let mut buf = Event::init(&plan.id).to_bytes();
    Event::ping().write_to(&mut buf);
    Event::complete(elapsed_ms(started)).write_to(&mut buf);
    tokio::spawn(async move { sink.send(buf).await });
    Ok(rx)
}

/// Copies a background command's output into its spool file, up to `max`
/// bytes; the rest is read, counted and dropped (never blocking the command),
/// and a note at the end of the log says how much.
async fn spool(mut pipe: pipe::Receiver, mut file: tokio::fs::File, max: u64, id: String) {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut written: u64 = 0;
    let mut dropped: u64 = 0;
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let room = usize::try_from(max.saturating_sub(written))
            .unwrap_or(usize::MAX)
            .min(n);
        if room > 0 {
            if let Err(e) = file.write_all(&buf[..room]).await {
                tracing::warn!(command = %id, error = %e, "cannot write the command log; dropping output");
                written = max;
                dropped += n as u64;
                continue;
            }
            written += room as u64;
        }
        dropped += (n - room) as u64;
    }
    if dropped > 0 {
        let note = format!(
            "\n[execd: {dropped} bytes of output dropped: log limit of {max} bytes reached]\n"
        );
        let _ = file.write_all(note.as_bytes()).await;
        tracing::warn!(command = %id, dropped, "command log limit reached");
    }
    let _ = file.flush().await;
}
