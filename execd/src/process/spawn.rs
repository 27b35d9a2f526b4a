//! Preparing a child: its own process group, the child-subreaper flag (so
//! that orphans of the command stay under its leader), credentials, and an
//! optional extra descriptor. All of it runs between fork and exec.
#![allow(unsafe_code)]

use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use nix::unistd::{Gid, Uid};

use super::creds::Credentials;

/// Sets up `cmd` so that its child leads a new process group, is a child
/// subreaper, runs with `creds` if given, and sees `extra_fd.0` as
/// descriptor `extra_fd.1`.
pub fn prepare(cmd: &mut Command, creds: Option<Credentials>, extra_fd: Option<(RawFd, RawFd)>) {
    cmd.process_group(0);
    let groups: Vec<Gid> = creds
        .as_ref()
        .map(|c| c.groups.iter().map(|g| Gid::from_raw(*g)).collect())
        .unwrap_or_default();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (prctl, dup2, fcntl, setgroups, setgid, setuid)
    // on data prepared before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_child_subreaper(true)?;
            if let Some((from, to)) = extra_fd {
                // dup2 onto itself keeps close-on-exec; clear it explicitly.
                let rc = if from == to {
                    nix::libc::fcntl(to, nix::libc::F_SETFD, 0)
                } else {
                    nix::libc::dup2(from, to)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(c) = &creds {
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setgid(Gid::from_raw(c.gid))?;
                nix::unistd::setuid(Uid::from_raw(c.uid))?;
            }
            Ok(())
        });
    }
}

/// The shell commands run in: `bash` from execd's `PATH`, else `sh`.
pub fn shell() -> &'static Path {
    static SHELL: OnceLock<PathBuf> = OnceLock::new();
    SHELL.get_or_init(|| {
        find_in_path("bash")
            .or_else(|| find_in_path("sh"))
            .unwrap_or_else(|| "/bin/sh".into())
    })
}

/// `bash` from execd's `PATH`, needed by sessions (no `sh` fallback).
pub fn bash() -> Option<&'static Path> {
    static BASH: OnceLock<Option<PathBuf>> = OnceLock::new();
    BASH.get_or_init(|| find_in_path("bash")).as_deref()
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
