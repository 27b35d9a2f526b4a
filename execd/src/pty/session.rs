//! A PTY session: the pseudo-terminal, the shell on it, its replay ring,
//! and the one client allowed to hold it.
//!
//! In pipe mode (upstream's `?pty=0`) the shell gets three pipes instead of
//! a terminal and its own process group. Both modes share the ring: stdout
//! and stderr go into it in arrival order, and the ring remembers where the
//! channel changes so live output is framed `0x01` (stdout) or `0x02`
//! (stderr), while a replay mixes them under `0x03`, as upstream.
//!
//! The terminal is opened with `openpty` and the shell is spawned through
//! [`crate::process::reaper::spawn`], so its exit status comes from execd's
//! single SIGCHLD reaper (a PTY library that waits on its own child would
//! race with it). The shell becomes a session leader with the terminal as
//! its controlling tty (`setsid`, `TIOCSCTTY`), as upstream's creack/pty.
//!
//! A reader task moves terminal output into the ring and bumps a version
//! counter; connections follow the ring with their own cursor. Nothing else
//! buffers output, so a slow client costs no memory: it lags, and past the
//! ring's size it is told about the gap.
// `pre_exec` (setsid, TIOCSCTTY) and the TIOCSWINSZ ioctl need unsafe.
#![allow(unsafe_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, watch, Notify};

use super::ring::{Ring, RING_SIZE};
use crate::command::env::{command_env, Env};
use crate::config::Config;
use crate::process::{reaper, spawn, tree, ExitStatus};

/// How long a session whose shell has exited is kept without a client.
pub const EXITED_RETENTION: Duration = Duration::from_secs(10 * 60);
/// Upper bound of each window dimension; larger requests are clamped.
pub const MAX_DIM: u16 = 10_000;
/// After the shell exits, how long its last output may take to drain (a
/// background job can keep the terminal open forever).
const DRAIN: Duration = Duration::from_millis(300);
/// While stdin waits for room, how often the shell is checked to still run.
const STDIN_RECHECK: Duration = Duration::from_millis(500);
/// Terminal reads, at most.
const READ_CHUNK: usize = 32 << 10;

/// The body of `POST /pty`: upstream's `cwd` and `command`, plus our `env`,
/// `cols` and `rows`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct CreateRequest {
    /// Working directory (expanded, created if missing).
    pub cwd: Option<String>,
    /// Run `bash -c <command>` instead of an interactive shell.
    pub command: Option<String>,
    /// Extra environment variables.
    pub env: Option<BTreeMap<String, String>>,
    /// Initial width (default 80).
    pub cols: Option<u64>,
    /// Initial height (default 24).
    pub rows: Option<u64>,
}

/// A failure creating a session.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CreateError(pub String);

/// All PTY sessions.
#[derive(Debug)]
pub struct Ptys {
    cfg: Arc<Config>,
    base_env: Env,
    map: Mutex<HashMap<String, Arc<PtySession>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Ptys {
    /// No sessions yet.
    pub fn new(cfg: Arc<Config>, base_env: Env) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            base_env,
            map: Mutex::new(HashMap::new()),
        })
    }

    /// Creates a session; its shell starts with the first connection.
    pub fn create(&self, req: CreateRequest) -> Result<String, CreateError> {
        let mut env = command_env(
            &self.base_env,
            self.cfg.envs_file.as_deref(),
            req.env.as_ref(),
        );
        if env.get("TERM").is_none_or(str::is_empty) {
            env.set("TERM".into(), "xterm-256color".into());
        }
        let cwd = match req.cwd.filter(|c| !c.is_empty()) {
            None => None,
            Some(raw) => {
                let path = crate::pathutil::expand_path(&raw, |k| env.get(k).map(String::from))
                    .map_err(|e| CreateError(e.to_string()))?;
                std::fs::create_dir_all(&path)
                    .map_err(|e| CreateError(format!("mkdir {path}: {e}")))?;
                Some(path)
            }
        };
        let dim = |v: Option<u64>, d: u16| v.map_or(d, |v| v.clamp(1, u64::from(MAX_DIM)) as u16);
        let id = uuid::Uuid::new_v4().to_string();
        let session = Arc::new(PtySession {
            id: id.clone(),
            cwd,
            command: req.command.filter(|c| !c.is_empty()),
            env,
            state: Mutex::new(State {
                ring: Ring::new(RING_SIZE),
                proc: None,
                generation: 0,
                last_exit: None,
                exited_at: None,
                size: (dim(req.cols, 80), dim(req.rows, 24)),
                channels: VecDeque::new(),
                holder: None,
                detached_since: Some(Instant::now()),
                closed: false,
            }),
            version: watch::channel(0).0,
            room: Notify::new(),
        });
        lock(&self.map).insert(id.clone(), session);
        Ok(id)
    }

    /// The session `id`.
    pub fn get(&self, id: &str) -> Option<Arc<PtySession>> {
        lock(&self.map).get(id).cloned()
    }

    /// Kills the session's processes and removes it; false if unknown.
    pub fn delete(&self, id: &str) -> bool {
        let Some(s) = lock(&self.map).remove(id) else {
            return false;
        };
        s.close();
        true
    }

    /// Removes sessions that no client holds and whose shell exited more
    /// than [`EXITED_RETENTION`] ago, or that no client has held for
    /// `-pty-idle-timeout` (killing their shell).
    pub fn sweep(&self) {
        let idle = self.cfg.pty_idle_timeout;
        let stale: Vec<String> = lock(&self.map)
            .values()
            .filter(|s| {
                let st = lock(&s.state);
                let exited = st.proc.is_none()
                    && st
                        .exited_at
                        .is_some_and(|t| t.elapsed() >= EXITED_RETENTION);
                let abandoned = st.detached_since.is_some_and(|t| t.elapsed() >= idle);
                st.holder.is_none() && (exited || abandoned)
            })
            .map(|s| s.id.clone())
            .collect();
        for id in stale {
            tracing::info!(pty = %id, "removing an exited or abandoned pty session");
            self.delete(&id);
        }
    }
}

/// One PTY session.
#[derive(Debug)]
pub struct PtySession {
    /// Its id.
    pub id: String,
    cwd: Option<String>,
    command: Option<String>,
    env: Env,
    state: Mutex<State>,
    /// Bumped on every change: output, exit, holder, close.
    version: watch::Sender<u64>,
    /// Woken when the holder's cursor moves or the holder goes.
    room: Notify,
}

#[derive(Debug)]
struct State {
    ring: Ring,
    proc: Option<Running>,
    /// Bumped at every start.
    generation: u64,
    /// The last shell's generation and exit status.
    last_exit: Option<(u64, ExitStatus)>,
    exited_at: Option<Instant>,
    /// Columns and rows, kept across restarts and reconnects.
    size: (u16, u16),
    /// Where the output channel changes: `(offset, channel)`, ascending,
    /// pruned to the ring's retained range. Before the first entry the
    /// channel is [`STDOUT`]. Pipe mode only ever adds entries.
    channels: VecDeque<(u64, u8)>,
    holder: Option<Holder>,
    /// Since when no client has been attached (`None` while one is).
    detached_since: Option<Instant>,
    closed: bool,
}

#[derive(Debug)]
struct Running {
    pid: i32,
    mode: Mode,
    /// The terminal's master side, or the write end of stdin in pipe mode.
    input: Arc<AsyncFd<OwnedFd>>,
}

/// How the shell is attached: a terminal, or three pipes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A pseudo-terminal (the default).
    Pty,
    /// stdin, stdout and stderr pipes; no terminal (`?pty=0`).
    Pipe,
}

impl Mode {
    /// The name the `connected` frame reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Pty => "pty",
            Mode::Pipe => "pipe",
        }
    }
}

/// Output channel of stdout (and of the terminal).
pub const STDOUT: u8 = 0x01;
/// Output channel of stderr (pipe mode).
pub const STDERR: u8 = 0x02;

#[derive(Debug)]
struct Holder {
    id: u64,
    evict: Option<oneshot::Sender<()>>,
    /// The offset up to which this client has been sent output, once known.
    cursor: Option<u64>,
}

/// The session is held by another client.
#[derive(Debug)]
pub struct Busy;

/// A client's hold on a session; [`PtySession::release`] gives it back.
#[derive(Debug)]
pub struct Claim {
    /// Identifies the holder.
    pub id: u64,
    /// Fires when another client takes the session over.
    pub evicted: oneshot::Receiver<()>,
}

/// What a connection sees when it looks at the session.
#[derive(Debug)]
pub enum Next {
    /// Output from the cursor (`lost` bytes before it were evicted), all
    /// of one channel ([`STDOUT`] or [`STDERR`]).
    Output(super::ring::Chunk, u8),
    /// Caught up; the shell of this generation exited with this status.
    Exited(ExitStatus),
    /// The session was deleted.
    Closed,
    /// Caught up; wait for the next change.
    Idle,
}

/// `GET /pty/{id}`.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    /// The id.
    pub session_id: String,
    /// Whether the shell runs.
    pub running: bool,
    /// Bytes ever written to the replay ring.
    pub output_offset: u64,
    /// Our addition: the last shell's exit code (-1 if signalled), once it exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

fn winsize(cols: u16, rows: u16) -> nix::pty::Winsize {
    nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn set_winsize(fd: &impl AsRawFd, cols: u16, rows: u16) -> io::Result<()> {
    let ws = winsize(cols, rows);
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which is
    // valid for the call.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCSWINSZ,
            &ws as *const libc::winsize,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn cloexec(fd: &impl AsFd) -> io::Result<()> {
    fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// Signal names a client may send, with or without `SIG`, any case.
pub fn parse_signal(name: &str) -> Option<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    Some(match bare {
        "INT" => Signal::SIGINT,
        "TERM" => Signal::SIGTERM,
        "KILL" => Signal::SIGKILL,
        "QUIT" => Signal::SIGQUIT,
        "HUP" => Signal::SIGHUP,
        "WINCH" => Signal::SIGWINCH,
        "TSTP" => Signal::SIGTSTP,
        "CONT" => Signal::SIGCONT,
        "STOP" => Signal::SIGSTOP,
        "USR1" => Signal::SIGUSR1,
        "USR2" => Signal::SIGUSR2,
        "ALRM" => Signal::SIGALRM,
        _ => return Signal::try_from(bare.parse::<i32>().ok()?).ok(),
    })
}

static HOLDERS: AtomicU64 = AtomicU64::new(1);

impl PtySession {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver of change notifications.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// `GET /pty/{id}`.
    pub fn status(&self) -> Status {
        let st = self.state();
        Status {
            session_id: self.id.clone(),
            running: st.proc.is_some(),
            output_offset: st.ring.total(),
            exit_code: st
                .proc
                .is_none()
                .then(|| st.last_exit.map(|(_, s)| s.code()))
                .flatten(),
        }
    }

    /// Takes the session for one client. With `takeover`, an existing holder
    /// is told to go and replaced at once.
    pub fn claim(&self, takeover: bool) -> Result<Claim, Busy> {
        let (tx, rx) = oneshot::channel();
        let id = HOLDERS.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state();
        if let Some(old) = &mut st.holder {
            if !takeover {
                return Err(Busy);
            }
            if let Some(evict) = old.evict.take() {
                let _ = evict.send(());
            }
        }
        st.holder = Some(Holder {
            id,
            evict: Some(tx),
            cursor: None,
        });
        st.detached_since = None;
        drop(st);
        self.bump();
        Ok(Claim { id, evicted: rx })
    }

    /// Whether holder `id` still holds the session.
    pub fn holds(&self, id: u64) -> bool {
        self.state().holder.as_ref().is_some_and(|h| h.id == id)
    }

    /// Gives the session back, if `id` still holds it.
    pub fn release(&self, id: u64) {
        let mut st = self.state();
        if st.holder.as_ref().is_some_and(|h| h.id == id) {
            st.holder = None;
            st.detached_since = Some(Instant::now());
        }
        drop(st);
        self.room.notify_waiters();
    }

    /// Holder `id` has been sent all output before `cursor`.
    pub fn advance(&self, id: u64, cursor: u64) {
        let mut st = self.state();
        if let Some(h) = st.holder.as_mut().filter(|h| h.id == id) {
            h.cursor = Some(cursor);
        }
        drop(st);
        self.room.notify_waiters();
    }

    /// Back-pressure: waits until `n` more bytes fit in the ring without
    /// overwriting output the attached client has not been sent yet. Returns
    /// at once when no client is attached (its cursor unknown), or the
    /// session is closed. The shell meanwhile blocks on a full terminal or
    /// pipe, so a slow client slows the shell instead of losing output.
    async fn wait_room(&self, n: usize) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.state();
                let behind = match st.holder.as_ref().and_then(|h| h.cursor) {
                    Some(c) if !st.closed => st.ring.total().saturating_sub(c),
                    _ => return,
                };
                let cap = st.ring.capacity() as u64;
                if behind + n as u64 <= cap || behind == 0 {
                    return;
                }
            }
            // A bounded wait: a missed wake-up costs at most this long.
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
    }

    /// Starts the shell unless it runs, in `mode`; returns its generation
    /// and the mode it actually runs in (a running shell keeps its mode).
    pub fn ensure_running(self: &Arc<Self>, mode: Mode) -> io::Result<(u64, Mode)> {
        let mut st = self.state();
        if st.closed {
            return Err(io::Error::other(format!(
                "pty session {} is closed",
                self.id
            )));
        }
        if let Some(p) = &st.proc {
            return Ok((st.generation, p.mode));
        }
        let mut cmd = match spawn::bash() {
            Some(bash) => {
                let mut c = Command::new(bash);
                c.args(["--norc", "--noprofile"]);
                c
            }
            None => Command::new(spawn::shell()),
        };
        if let Some(command) = &self.command {
            cmd.arg("-c").arg(command);
        }
        cmd.env_clear()
            .envs(self.env.pairs().iter().map(|(k, v)| (k, v)));
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        // Our ends of the terminal or pipes: (input, [(output, channel)]).
        let (input, outputs) = match mode {
            Mode::Pty => {
                let (cols, rows) = st.size;
                let pty = nix::pty::openpty(Some(&winsize(cols, rows)), None)?;
                cloexec(&pty.master)?;
                cloexec(&pty.slave)?;
                cmd.stdin(Stdio::from(pty.slave.try_clone()?))
                    .stdout(Stdio::from(pty.slave.try_clone()?))
                    .stderr(Stdio::from(pty.slave));
                // SAFETY: runs in the forked child before exec; only
                // async-signal-safe system calls (setsid, ioctl, prctl), no
                // allocation.
                unsafe {
                    cmd.pre_exec(|| {
                        nix::unistd::setsid()?;
                        if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        // Orphans stay under the shell, where DELETE finds them.
                        nix::sys::prctl::set_child_subreaper(true)?;
                        Ok(())
                    });
                }
                let output = pty.master.try_clone()?;
                (pty.master, vec![(output, STDOUT)])
            }
            Mode::Pipe => {
                // std's pipes are close-on-exec; the child's copies are dup'ed
                // onto 0, 1 and 2 without it.
                let (in_r, in_w) = io::pipe()?;
                let (out_r, out_w) = io::pipe()?;
                let (err_r, err_w) = io::pipe()?;
                cmd.stdin(Stdio::from(in_r))
                    .stdout(Stdio::from(out_w))
                    .stderr(Stdio::from(err_w))
                    .process_group(0);
                // SAFETY: runs in the forked child before exec; one prctl.
                unsafe {
                    cmd.pre_exec(|| {
                        nix::sys::prctl::set_child_subreaper(true)?;
                        Ok(())
                    });
                }
                (
                    OwnedFd::from(in_w),
                    vec![
                        (OwnedFd::from(out_r), STDOUT),
                        (OwnedFd::from(err_r), STDERR),
                    ],
                )
            }
        };
        nonblocking(&input)?;
        for (fd, _) in &outputs {
            nonblocking(fd)?;
        }
        let (child, exit_rx) = reaper::spawn(&mut cmd)?;
        drop(cmd); // closes our copies of the child's ends
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        drop(child); // never waited on: the reaper owns the status
                     // SAFETY (both registrations): an OwnedFd stays open, on the same
                     // file, for as long as it is owned, and always returns that descriptor.
        let input = Arc::new(unsafe { AsyncFd::register(input) }?);
        let mut readers = Vec::with_capacity(outputs.len());
        for (fd, channel) in outputs {
            let fd = Arc::new(unsafe { AsyncFd::register(fd) }?);
            readers.push(tokio::spawn(read_loop(self.clone(), fd, channel)));
        }
        st.generation += 1;
        let generation = st.generation;
        st.proc = Some(Running { pid, mode, input });
        st.exited_at = None;
        drop(st);
        self.bump();

        let session = self.clone();
        tokio::spawn(async move {
            let status = exit_rx.await.unwrap_or(ExitStatus::Code(-1));
            let deadline = tokio::time::Instant::now() + DRAIN;
            for mut reader in readers {
                if tokio::time::timeout_at(deadline, &mut reader)
                    .await
                    .is_err()
                {
                    reader.abort();
                }
            }
            session.finish(generation, status);
        });
        Ok((generation, mode))
    }

    fn finish(&self, generation: u64, status: ExitStatus) {
        let mut st = self.state();
        if st.generation == generation {
            st.proc = None;
            st.last_exit = Some((generation, status));
            st.exited_at = Some(Instant::now());
        }
        drop(st);
        self.bump();
    }

    fn append(&self, data: &[u8], channel: u8) {
        let mut st = self.state();
        let current = st.channels.back().map_or(STDOUT, |&(_, c)| c);
        if current != channel {
            let at = st.ring.total();
            st.channels.push_back((at, channel));
        }
        st.ring.write(data);
        let oldest = st.ring.oldest();
        while st.channels.len() >= 2 && st.channels[1].0 <= oldest {
            st.channels.pop_front();
        }
        drop(st);
        self.bump();
    }

    /// The end of the ring and what is retained from `since` (replay).
    pub fn snapshot(&self, since: u64) -> super::ring::Chunk {
        self.state().ring.read(since, usize::MAX)
    }

    /// What a connection of `generation` with `cursor` should do next.
    pub fn next(&self, generation: u64, cursor: u64, max: usize) -> Next {
        let st = self.state();
        if st.closed {
            return Next::Closed;
        }
        if cursor < st.ring.total() {
            // Stop at the next channel change.
            let start = cursor.max(st.ring.oldest());
            let i = st.channels.partition_point(|&(at, _)| at <= start);
            let channel = i.checked_sub(1).map_or(STDOUT, |i| st.channels[i].1);
            let max = st.channels.get(i).map_or(max, |&(at, _)| {
                max.min(usize::try_from(at - start).unwrap_or(usize::MAX))
            });
            return Next::Output(st.ring.read(cursor, max), channel);
        }
        match st.last_exit {
            Some((g, status)) if g == generation && st.proc.is_none() => Next::Exited(status),
            _ => Next::Idle,
        }
    }

    fn input(&self) -> io::Result<Arc<AsyncFd<OwnedFd>>> {
        self.state()
            .proc
            .as_ref()
            .map(|p| p.input.clone())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("pty session {} is not running", self.id),
                )
            })
    }

    /// Writes `data` to the shell's stdin (the terminal, or the stdin pipe).
    /// Waits while the terminal's input queue or the pipe is full.
    pub async fn write_stdin(&self, mut data: &[u8]) -> io::Result<()> {
        let master = self.input()?;
        while !data.is_empty() {
            // Re-check now and then that the shell still runs: after it
            // exits, a full input queue never drains.
            let Ok(guard) = tokio::time::timeout(STDIN_RECHECK, master.writable()).await else {
                if !self
                    .state()
                    .proc
                    .as_ref()
                    .is_some_and(|p| Arc::ptr_eq(&p.input, &master))
                {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        format!("pty session {} is not running", self.id),
                    ));
                }
                continue;
            };
            let mut guard = guard?;
            match guard.try_io(|fd| Ok(nix::unistd::write(fd.get_ref(), data)?)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    /// Sets the window size (clamped to `1..=MAX_DIM`), now and for later
    /// restarts; in pipe mode there is no terminal and it is only
    /// remembered (upstream ignores it). Returns the size applied.
    pub fn resize(&self, cols: u64, rows: u64) -> io::Result<(u16, u16)> {
        let c = cols.clamp(1, u64::from(MAX_DIM)) as u16;
        let r = rows.clamp(1, u64::from(MAX_DIM)) as u16;
        let mut st = self.state();
        st.size = (c, r);
        if let Some(p) = st.proc.as_ref().filter(|p| p.mode == Mode::Pty) {
            set_winsize(p.input.get_ref(), c, r)?;
        }
        Ok((c, r))
    }

    /// Sends `sig` to the terminal's foreground process group (the shell's
    /// group if there is none, and always in pipe mode).
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        let st = self.state();
        let Some(p) = &st.proc else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("pty session {} is not running", self.id),
            ));
        };
        let pgrp = (p.mode == Mode::Pty)
            .then(|| nix::unistd::tcgetpgrp(p.input.get_ref()).ok())
            .flatten()
            .filter(|g| g.as_raw() > 0)
            .unwrap_or(Pid::from_raw(p.pid));
        killpg(pgrp, sig)?;
        Ok(())
    }

    /// Marks the session closed and kills the shell's group and tree.
    fn close(&self) {
        let mut st = self.state();
        st.closed = true;
        let pid = st.proc.as_ref().map(|p| p.pid);
        drop(st);
        self.bump();
        self.room.notify_waiters();
        if let Some(pid) = pid {
            let root = tree::identify(pid);
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            if let Some(root) = root {
                let mut all = tree::descendants(root);
                all.insert(root);
                tree::kill_now(&all);
            }
        }
    }
}

fn nonblocking(fd: &impl AsFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Moves one output (the terminal, stdout or stderr) into the ring.
async fn read_loop(session: Arc<PtySession>, master: Arc<AsyncFd<OwnedFd>>, channel: u8) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let Ok(mut guard) = master.readable().await else {
            return;
        };
        match guard.try_io(|fd| Ok(nix::unistd::read(fd.get_ref(), &mut buf)?)) {
            Ok(Ok(0)) => return,
            Ok(Ok(n)) => {
                drop(guard);
                session.wait_room(n).await;
                session.append(&buf[..n], channel);
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            // EIO: every slave descriptor is closed.
            Ok(Err(_)) => return,
            Err(_would_block) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("SIGINT"), Some(Signal::SIGINT));
        assert_eq!(parse_signal("term"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("SIGWINCH"), Some(Signal::SIGWINCH));
        assert_eq!(parse_signal("NOPE"), None);
    }
}
