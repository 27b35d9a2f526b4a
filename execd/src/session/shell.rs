//! One persistent `bash` process behind a session.
//!
//! bash reads its script from a pipe on stdin. Each run is sent as
//! `eval '<command>' </dev/null` at the top level, so shell variables,
//! functions, aliases, options, `cd` and exports persist, the command's own
//! stdin is `/dev/null`, and no syntax error in the command can desynchronise
//! the script. After the command, the shell prints a marker on stdout and on
//! stderr (so execd knows where this run's output ends on each stream) and
//! writes the exit status on a control descriptor (62).

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

use super::marker::{MarkerScanner, Piece};
use crate::command::env::Env;
use crate::process::spawn::prepare;
use crate::process::tree::{self, Proc};
use crate::process::{reaper, ExitStatus};

/// The descriptor the shell writes exit statuses to.
const CTRL_FD: i32 = 62;
/// Output pieces buffered per stream while no run reads them; then the
/// shell's writers block (nothing is dropped).
const PIECES: usize = 64;

/// Something read from the shell's stdout or stderr.
#[derive(Debug)]
pub enum Out {
    /// A piece of output or a marker.
    Piece(Piece),
    /// The stream ended.
    Eof,
}

/// A running shell.
#[derive(Debug)]
pub struct Shell {
    /// The bash process.
    pub leader: Option<Proc>,
    stdin: pipe::Sender,
    /// stdout pieces.
    pub out: mpsc::Receiver<Out>,
    /// stderr pieces.
    pub err: mpsc::Receiver<Out>,
    /// Exit statuses, one line per run.
    pub ctrl: Lines<BufReader<pipe::Receiver>>,
    /// Fires when bash exits.
    pub exit: oneshot::Receiver<ExitStatus>,
    nonce: String,
    seq: u64,
    last_status: i32,
}

const PREAMBLE: &str = "shopt -s expand_aliases\n__execd_rs() { return \"$1\"; }\n";

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Shell {
    /// Starts bash with `env` in `cwd`.
    pub fn spawn(bash: &std::path::Path, env: &Env, cwd: Option<&str>) -> std::io::Result<Self> {
        let (ctrl_r, ctrl_w) = std::io::pipe()?;
        let mut cmd = Command::new(bash);
        cmd.args(["--noprofile", "--norc"])
            .env_clear()
            .envs(env.pairs().iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        prepare(&mut cmd, None, Some((ctrl_w.as_raw_fd(), CTRL_FD)));
        let spawned = reaper::spawn(&mut cmd);
        drop(cmd);
        drop(ctrl_w);
        let (mut child, exit) = spawned?;
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        let leader = tree::identify(pid);
        let missing = || std::io::Error::other("missing pipe");
        let stdin = pipe::Sender::from_owned_fd(child.stdin.take().ok_or_else(missing)?.into())?;
        let stdout =
            pipe::Receiver::from_owned_fd(child.stdout.take().ok_or_else(missing)?.into())?;
        let stderr =
            pipe::Receiver::from_owned_fd(child.stderr.take().ok_or_else(missing)?.into())?;
        let ctrl = BufReader::new(pipe::Receiver::from_owned_fd(ctrl_r.into())?).lines();
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let (out_tx, out) = mpsc::channel(PIECES);
        let (err_tx, err) = mpsc::channel(PIECES);
        tokio::spawn(pump(stdout, MarkerScanner::new(&nonce), out_tx));
        tokio::spawn(pump(stderr, MarkerScanner::new(&nonce), err_tx));
        Ok(Self {
            leader,
            stdin,
            out,
            err,
            ctrl,
            exit,
            nonce,
            seq: 0,
            last_status: 0,
        })
    }

    /// Writes the preamble; call once after spawning.
    pub async fn init(&mut self) -> std::io::Result<()> {
        self.stdin.write_all(PREAMBLE.as_bytes()).await
    }

    /// Sends one run and returns its sequence number.
    pub async fn send_run(&mut self, command: &str, cwd: Option<&str>) -> std::io::Result<u64> {
        self.seq += 1;
        let marker = MarkerScanner::marker(&self.nonce, self.seq);
        let mut script = String::with_capacity(command.len() + 256);
        if let Some(cwd) = cwd {
            script.push_str(&format!("cd -- {}\n", quote(cwd)));
        }
        script.push_str(&format!(
            "__execd_rs {}\neval {} </dev/null\n__execd_st=$?\nprintf '%s' {m}\nprintf '%s' {m} >&2\nprintf '%d\\n' \"$__execd_st\" >&{CTRL_FD}\nunset __execd_st\n",
            self.last_status,
            quote(command),
            m = quote(&marker),
        ));
        self.stdin.write_all(script.as_bytes()).await?;
        Ok(self.seq)
    }

    /// Remembers the status of the last run (restored as `$?` for the next).
    pub fn set_last_status(&mut self, status: i32) {
        self.last_status = status.clamp(0, 255);
    }
}

/// Reads one of the shell's output streams, separating markers from data.
async fn pump(mut pipe: pipe::Receiver, mut scanner: MarkerScanner, tx: mpsc::Sender<Out>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pieces = Vec::new();
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        scanner.push(&buf[..n], &mut pieces);
        for p in pieces.drain(..) {
            if tx.send(Out::Piece(p)).await.is_err() {
                return;
            }
        }
    }
    scanner.finish(&mut pieces);
    for p in pieces.drain(..) {
        let _ = tx.send(Out::Piece(p)).await;
    }
    let _ = tx.send(Out::Eof).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }
}
