//! Batch operations: delete files, delete directories, move, chmod/chown,
//! make directories, replace contents.
//!
//! Batches are applied in a deterministic order (the request's list order,
//! or sorted by path for maps). Every path is attempted and all failures are
//! reported together ([`FileError::Batch`]), except for moves, which stop at
//! the first failure because later moves may depend on earlier ones.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use serde::Deserialize;

use super::path::{expand, expand_abs};
use super::perms::Perms;
use super::FileError;
use crate::command::env::Env;

/// Largest file `/files/replace` will rewrite.
pub const MAX_REPLACE_BYTES: u64 = 256 << 20;

/// Runs `op` on each item, collecting failures keyed by the item's name.
fn batch<T>(
    items: impl IntoIterator<Item = (String, T)>,
    mut op: impl FnMut(&str, T) -> Result<(), FileError>,
) -> Result<(), FileError> {
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, item) in items {
        total += 1;
        if let Err(e) = op(&name, item) {
            tracing::debug!(path = %name, error = %e, "batch item failed");
            failures.push((name, e));
        }
    }
    match failures.len() {
        0 => Ok(()),
        1 if total == 1 => Err(failures.remove(0).1),
        _ => Err(FileError::Batch { total, failures }),
    }
}

/// `DELETE /files`: removes files and links; a missing path is not an error,
/// a directory (or a link to one) is refused.
pub fn delete_files(paths: &[String], env: &Env) -> Result<(), FileError> {
    batch(paths.iter().map(|p| (p.clone(), ())), |raw, ()| {
        let path = expand_abs(raw, env)?;
        match fs::metadata(&path) {
            // A dangling link still goes; a missing file is already gone.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound && fs::symlink_metadata(&path).is_err() =>
            {
                return Ok(());
            }
            Ok(m) if m.is_dir() => {
                return Err(FileError::Invalid(format!(
                    "error removing file {raw}. path is a directory: {}",
                    path.display()
                )));
            }
            _ => {}
        }
        match fs::remove_file(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r.map_err(|e| FileError::io(format!("error removing file {raw}"), e)),
        }
    })
}

/// `DELETE /directories`: removes directories recursively (and files, as
/// upstream does); a link is removed, never followed; a missing path is fine.
pub fn delete_dirs(paths: &[String], env: &Env) -> Result<(), FileError> {
    batch(paths.iter().map(|p| (p.clone(), ())), |raw, ()| {
        let path = expand(raw, env)?;
        let r = match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => Err(e),
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
            Ok(_) => fs::remove_file(&path),
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r.map_err(|e| FileError::io(format!("error removing directory {raw}"), e)),
        }
    })
}

/// One item of `POST /files/mv`.
#[derive(Debug, Clone, Deserialize)]
pub struct Move {
    /// Source path.
    pub src: String,
    /// Destination path; must not exist.
    pub dest: String,
}

/// `POST /files/mv`: moves in order, never overwriting; creates the
/// destination's parents; moves a regular file across filesystems by
/// copying. Stops at the first failure, saying how many moves were done.
pub fn move_all(moves: &[Move], env: &Env) -> Result<(), FileError> {
    for (i, m) in moves.iter().enumerate() {
        if let Err(e) = move_one(m, env) {
            return Err(if i == 0 {
                e
            } else {
                FileError::Batch {
                    total: moves.len(),
                    failures: vec![(
                        format!("{} -> {} (after {i} completed moves)", m.src, m.dest),
                        e,
                    )],
                }
            });
        }
    }
    Ok(())
}

fn move_one(m: &Move, env: &Env) -> Result<(), FileError> {
    let src = expand_abs(&m.src, env)?;
    let dest = expand_abs(&m.dest, env)?;
    if fs::symlink_metadata(&src).is_err() {
        return Err(FileError::NotFound(format!(
            "source path does not exist: {}",
            m.src
        )));
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|e| {
            FileError::io(format!("error creating directory {}", parent.display()), e)
        })?;
    }
    match rename_noreplace(&src, &dest) {
        Ok(()) => Ok(()),
        Err(Errno::EEXIST) => Err(exists(&m.dest)),
        // Filesystems without RENAME_NOREPLACE: check, then rename.
        Err(Errno::EINVAL | Errno::ENOSYS) => {
            if fs::symlink_metadata(&dest).is_ok() {
                return Err(exists(&m.dest));
            }
            fs::rename(&src, &dest).map_err(|e| FileError::io(format!("error moving {}", m.src), e))
        }
        Err(Errno::EXDEV) => move_across(&src, &dest, m),
        Err(e) => Err(FileError::io(
            format!("error moving {} to {}", m.src, m.dest),
            e.into(),
        )),
    }
}

fn exists(dest: &str) -> FileError {
    FileError::Conflict(format!("destination path already exists: {dest}"))
}

/// A move between filesystems: regular files are copied (to a temporary
/// name, synced, then renamed into place without overwriting) and the source
/// removed; anything else is refused.
fn move_across(src: &Path, dest: &Path, m: &Move) -> Result<(), FileError> {
    let meta = fs::symlink_metadata(src)
        .map_err(|e| FileError::io(format!("error moving {}", m.src), e))?;
    if !meta.is_file() {
        return Err(FileError::Invalid(format!(
            "cannot move {} to {}: they are on different filesystems and only regular files can be copied across",
            m.src, m.dest
        )));
    }
    let ctx = || format!("error copying {} to {}", m.src, m.dest);
    let tmp = TempFile::create_beside(dest, 0o600).map_err(|e| FileError::io(ctx(), e))?;
    let mut from = fs::File::open(src).map_err(|e| FileError::io(ctx(), e))?;
    io::copy(&mut from, &mut tmp.file()).map_err(|e| FileError::io(ctx(), e))?;
    let f = tmp.file();
    f.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| FileError::io(ctx(), e))?;
    // Keeping the owner is best effort: it needs privileges.
    let _ = std::os::unix::fs::fchown(f, Some(meta.uid()), Some(meta.gid()));
    tmp.commit(dest, false)
        .map_err(|e| match e.raw_os_error() {
            Some(c) if c == Errno::EEXIST as i32 => exists(&m.dest),
            _ => FileError::io(ctx(), e),
        })?;
    fs::remove_file(src).map_err(|e| FileError::io(format!("error removing {}", m.src), e))
}

/// `POST /files/permissions`: applies owner, group and mode to each path,
/// sorted by path.
pub fn chmod_all(items: BTreeMap<String, Perms>, env: &Env) -> Result<(), FileError> {
    batch(items, |raw, perms| {
        let path = expand_abs(raw, env)?;
        let r = perms.resolve()?;
        fs::symlink_metadata(&path)
            .map_err(|e| FileError::io(format!("error changing permissions for {raw}"), e))?;
        r.apply(&path)
            .map_err(|e| FileError::io(format!("error changing permissions for {raw}"), e))
    })
}

/// `POST /directories`: creates each directory with its parents; owner,
/// group and mode are applied only to a directory that did not exist before.
pub fn mkdir_all(items: BTreeMap<String, Perms>, env: &Env) -> Result<(), FileError> {
    batch(items, |raw, perms| {
        let path = expand_abs(raw, env)?;
        let r = perms.resolve()?;
        match fs::metadata(&path) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => {
                return Err(FileError::Conflict(format!(
                    "path exists and is not a directory: {raw}"
                )))
            }
            Err(_) => {}
        }
        fs::create_dir_all(&path)
            .map_err(|e| FileError::io(format!("error creating directory {raw}"), e))?;
        r.apply(&path)
            .map_err(|e| FileError::io(format!("error changing permissions for {raw}"), e))
    })
}

/// One item of `POST /files/replace`.
#[derive(Debug, Clone, Deserialize)]
pub struct Replace {
    /// Text to find; must not be empty.
    pub old: String,
    /// Replacement.
    #[serde(default)]
    pub new: String,
}

/// `POST /files/replace`: replaces every non-overlapping occurrence of
/// `old` with `new` in each file (sorted by path), rewriting the file
/// atomically with its mode and owner kept. Returns the count per path as
/// given. Every item is validated before any file is touched.
pub fn replace_all(
    items: &BTreeMap<String, Replace>,
    env: &Env,
) -> Result<BTreeMap<String, usize>, FileError> {
    if items.values().any(|r| r.old.is_empty()) {
        return Err(FileError::Invalid("old content must not be empty".into()));
    }
    let mut counts = BTreeMap::new();
    batch(items.iter().map(|(k, v)| (k.clone(), v)), |raw, r| {
        let n = replace_one(raw, r, env)?;
        counts.insert(raw.to_string(), n);
        Ok(())
    })?;
    Ok(counts)
}

fn replace_one(raw: &str, r: &Replace, env: &Env) -> Result<usize, FileError> {
    let path = expand_abs(raw, env)?;
    // Edit the file a link points to, not the link.
    let path = fs::canonicalize(&path)
        .map_err(|e| FileError::io(format!("error accessing file {raw}"), e))?;
    let meta =
        fs::metadata(&path).map_err(|e| FileError::io(format!("error accessing file {raw}"), e))?;
    if !meta.is_file() {
        return Err(FileError::Invalid(format!("not a regular file: {raw}")));
    }
    if meta.len() > MAX_REPLACE_BYTES {
        return Err(FileError::TooLarge(format!(
            "{raw} is {} bytes; replace handles files up to {MAX_REPLACE_BYTES} bytes",
            meta.len()
        )));
    }
    let content =
        fs::read(&path).map_err(|e| FileError::io(format!("error reading file {raw}"), e))?;
    let old = r.old.as_bytes();
    let finder = memchr::memmem::Finder::new(old);
    let mut out = Vec::with_capacity(content.len());
    let mut last = 0;
    let mut count = 0;
    for at in finder.find_iter(&content) {
        if at < last {
            continue; // overlapping match
        }
        out.extend_from_slice(&content[last..at]);
        out.extend_from_slice(r.new.as_bytes());
        last = at + old.len();
        count += 1;
    }
    if count == 0 {
        return Ok(0);
    }
    out.extend_from_slice(&content[last..]);
    let ctx = || format!("error writing file {raw}");
    let tmp = TempFile::create_beside(&path, 0o600).map_err(|e| FileError::io(ctx(), e))?;
    tmp.file()
        .write_all(&out)
        .map_err(|e| FileError::io(ctx(), e))?;
    let f = tmp.file();
    f.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| FileError::io(ctx(), e))?;
    let _ = std::os::unix::fs::fchown(f, Some(meta.uid()), Some(meta.gid()));
    tmp.commit(&path, true)
        .map_err(|e| FileError::io(ctx(), e))?;
    Ok(count)
}

/// A temporary file next to its final path, removed unless committed.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    file: Option<fs::File>,
}

impl TempFile {
    /// Creates `.<name>.<random>.tmp` in `dest`'s directory with `mode`
    /// (less the umask).
    pub fn create_beside(dest: &Path, mode: u32) -> io::Result<Self> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Keep the name within NAME_MAX.
        let stem: String = name.chars().take(100).collect();
        for _ in 0..8 {
            let path = dir.join(format!(".{stem}.{}.tmp", uuid::Uuid::new_v4().simple()));
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(Self {
                        path,
                        file: Some(file),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free temporary name",
        ))
    }

    /// The open file.
    pub fn file(&self) -> &fs::File {
        // Present until commit consumes self.
        self.file
            .as_ref()
            .unwrap_or_else(|| unreachable!("temp file used after commit"))
    }

    /// The temporary path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs the data, renames onto `dest` (replacing it when `overwrite`,
    /// else failing with `EEXIST`), and syncs the directory.
    pub fn commit(mut self, dest: &Path, overwrite: bool) -> io::Result<()> {
        if let Some(f) = self.file.take() {
            f.sync_all()?;
        }
        if overwrite {
            fs::rename(&self.path, dest)?;
        } else {
            match rename_noreplace(&self.path, dest) {
                Ok(()) => {}
                Err(Errno::EINVAL | Errno::ENOSYS) if fs::symlink_metadata(dest).is_err() => {
                    fs::rename(&self.path, dest)?;
                }
                Err(Errno::EINVAL | Errno::ENOSYS) => {
                    return Err(io::Error::from_raw_os_error(Errno::EEXIST as i32))
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Committed: nothing to clean up any more.
        self.path = PathBuf::new();
        if let Some(dir) = dest.parent() {
            // Best effort, as upstream: the rename itself is what matters.
            if let Ok(d) = fs::File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// `renameat2(…, RENAME_NOREPLACE)`: renames `from` to `to` atomically,
/// failing with `EEXIST` when `to` exists (`EINVAL` where the filesystem
/// cannot). nix offers it on glibc only.
#[allow(unsafe_code)]
fn rename_noreplace(from: &Path, to: &Path) -> nix::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(from.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let to = CString::new(to.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: both pointers are valid NUL-terminated strings that outlive
    // the call; AT_FDCWD makes them relative to the working directory.
    // The raw system call: static musl has no renameat2 wrapper.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    Errno::result(r).map(drop)
}
