//! `POST /files/upload`: a streaming multipart upload.
//!
//! Each `file` part is paired, in order, with a `metadata` part
//! (`{"path","owner","group","mode"}`) as upstream does. A file's bytes go
//! straight to a temporary file beside its target through a bounded channel
//! to a writer thread, so memory stays constant whatever the size. Nothing
//! is put in place until the whole body has arrived and checks out: then
//! every file is synced and renamed onto its target. A cut-off or malformed
//! upload leaves no file behind and no target touched.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::ops::TempFile;
use super::path::expand;
use super::perms::{Perms, Resolved};
use super::FileError;
use crate::command::env::Env;

/// Largest `metadata` part.
const MAX_METADATA: usize = 64 << 10;
/// Most files in one upload.
pub const MAX_FILES: usize = 10_000;
/// Chunks in flight between the network and a file's writer thread.
const WRITE_QUEUE: usize = 16;
/// Bytes gathered into one `writev`, at most (more if one chunk is larger).
const WRITE_BUFFER: usize = 1 << 20;

/// A `metadata` part.
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    /// Target path (expanded; may be relative to execd's directory).
    #[serde(default)]
    pub path: String,
    /// Ownership and mode to apply.
    #[serde(flatten)]
    pub perms: Perms,
}

fn bad(code: &'static str, message: impl Into<String>) -> FileError {
    FileError::Upload {
        code,
        message: message.into(),
    }
}

/// A file part written to disk, waiting for the end of the body.
#[derive(Debug)]
struct Staged {
    temp: TempFile,
    /// Its metadata and resolved target, once known.
    target: Option<Target>,
}

#[derive(Debug)]
struct Target {
    raw: String,
    path: PathBuf,
    perms: Resolved,
}

/// Receives the whole upload and puts every file in place; returns how
/// many files were written. `spool` holds file parts that arrive before
/// their metadata.
pub async fn receive(
    mut form: multer::Multipart<'static>,
    env: &Env,
    spool: &Path,
) -> Result<usize, FileError> {
    let mut metas: VecDeque<Target> = VecDeque::new();
    let mut staged: Vec<Staged> = Vec::new();
    let (mut n_meta, mut n_file) = (0usize, 0usize);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(multer::Error::IncompleteStream) if n_meta + n_file == 0 => {
                return Err(bad(
                    "INVALID_FILE",
                    "malformed multipart body: no part before the end of the body",
                ));
            }
            Err(e) => return Err(malformed(&e)),
        };
        match field.name() {
            Some("metadata") => {
                n_meta += 1;
                let meta = read_metadata(field).await?;
                let target = resolve_target(meta, env).await?;
                // A file part that came first gets this metadata.
                match staged.iter_mut().find(|s| s.target.is_none()) {
                    Some(s) => s.target = Some(target),
                    None => metas.push_back(target),
                }
            }
            Some("file") => {
                n_file += 1;
                if n_file > MAX_FILES {
                    return Err(bad(
                        "INVALID_FILE",
                        format!("too many files in one upload (at most {MAX_FILES})"),
                    ));
                }
                let target = metas.pop_front();
                let beside = target
                    .as_ref()
                    .map_or_else(|| spool.join("upload"), |t| t.path.clone());
                let temp =
                    write_part(field, beside, target.as_ref().map(|t| t.raw.as_str())).await?;
                staged.push(Staged { temp, target });
            }
            _ => {
                // Unknown parts are skipped, as upstream ignores them.
                let mut field = field;
                while field.chunk().await.map_err(|e| malformed(&e))?.is_some() {}
            }
        }
    }
    if n_meta == 0 && n_file == 0 {
        return Err(bad("INVALID_FILE", "multipart form is empty"));
    }
    if n_meta == 0 {
        return Err(bad("INVALID_FILE_METADATA", "metadata file is missing"));
    }
    if n_file == 0 {
        return Err(bad("INVALID_FILE_CONTENT", "file is missing"));
    }
    if n_meta != n_file {
        return Err(bad(
            "INVALID_FILE",
            format!("metadata and file count mismatch: {n_meta} vs {n_file}"),
        ));
    }
    let count = staged.len();
    tokio::task::spawn_blocking(move || commit_all(staged))
        .await
        .map_err(|e| FileError::Runtime(format!("upload commit task failed: {e}")))??;
    Ok(count)
}

fn malformed(e: &multer::Error) -> FileError {
    bad("INVALID_FILE", format!("malformed multipart body: {e}"))
}

async fn read_metadata(mut field: multer::Field<'static>) -> Result<Metadata, FileError> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| malformed(&e))? {
        if buf.len() + chunk.len() > MAX_METADATA {
            return Err(bad(
                "INVALID_FILE_METADATA",
                format!("metadata part exceeds {MAX_METADATA} bytes"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    let meta: Metadata = serde_json::from_slice(&buf).map_err(|e| {
        bad(
            "INVALID_FILE_METADATA",
            format!("invalid metadata format. {e}"),
        )
    })?;
    if meta.path.is_empty() {
        return Err(bad("INVALID_FILE_METADATA", "metadata path is empty"));
    }
    Ok(meta)
}

/// Expands the target, checks it can be a file, creates its parents.
async fn resolve_target(meta: Metadata, env: &Env) -> Result<Target, FileError> {
    let raw = meta.path.clone();
    let path = expand(&raw, env).map_err(|e| {
        bad(
            "INVALID_FILE_METADATA",
            format!("invalid metadata path. {e}"),
        )
    })?;
    let perms = meta.perms.resolve()?;
    let r = raw.clone();
    tokio::task::spawn_blocking(move || {
        // Write through a link to the file it names, as an in-place write would.
        let path = match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => fs::canonicalize(&path).unwrap_or(path),
            _ => path,
        };
        match fs::metadata(&path) {
            Ok(m) if m.is_dir() => {
                return Err(FileError::Conflict(format!("target is a directory: {r}")))
            }
            Ok(m) if !m.is_file() => {
                return Err(FileError::Conflict(format!(
                    "target is not a regular file: {r}"
                )))
            }
            _ => {}
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| {
                FileError::io(
                    format!("error creating target directory {}", parent.display()),
                    e,
                )
            })?;
        }
        Ok(Target {
            raw: r,
            path,
            perms,
        })
    })
    .await
    .map_err(|e| FileError::Runtime(format!("upload task failed: {e}")))?
}

/// Streams one file part into a new temporary file beside `beside`.
async fn write_part(
    mut field: multer::Field<'static>,
    beside: PathBuf,
    raw: Option<&str>,
) -> Result<TempFile, FileError> {
    let what = raw.map_or_else(|| "upload spool".to_string(), String::from);
    let ctx = move || format!("error writing file {what}");
    let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    let writer = tokio::task::spawn_blocking(move || -> io::Result<TempFile> {
        // 0777 minus the umask for a new file, as upstream creates it.
        let temp = TempFile::create_beside(&beside, 0o777)?;
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batched = 0;
        while let Some(chunk) = rx.blocking_recv() {
            batched += chunk.len();
            batch.push(chunk);
            // Gather what has arrived, then write it with one writev: no
            // copy into a buffer of our own.
            while batched < WRITE_BUFFER {
                match rx.try_recv() {
                    Ok(c) => {
                        batched += c.len();
                        batch.push(c);
                    }
                    Err(_) => break,
                }
            }
            write_all_vectored(temp.file(), &batch)?;
            batch.clear();
            batched = 0;
        }
        Ok(temp)
    });
    let mut body_err = None;
    loop {
        match field.chunk().await {
            Ok(Some(chunk)) => {
                if tx.send(chunk).await.is_err() {
                    break; // the writer failed: its error says why
                }
            }
            Ok(None) => break,
            Err(e) => {
                body_err = Some(malformed(&e));
                break;
            }
        }
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| FileError::Runtime(format!("upload writer failed: {e}")))?;
    match (body_err, written) {
        (Some(e), _) => Err(e), // the temporary file is removed on drop
        (None, Err(e)) => Err(FileError::io(ctx(), e)),
        (None, Ok(temp)) => Ok(temp),
    }
}

/// Writes every chunk, in order, with as few `writev` calls as it takes.
fn write_all_vectored(mut out: &fs::File, chunks: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = chunks
        .iter()
        .filter(|c| !c.is_empty())
        .map(|c| IoSlice::new(c))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match out.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Hands the multipart parser one chunk per poll. multer buffers every
/// chunk that is ready each time it is polled; behind a slow disk that
/// buffer grows to megabytes, and with musl's allocator each large buffer is
/// a fresh mapping whose pages must be faulted in and zeroed, which cost
/// half of upload time. One chunk at a time keeps its buffer small.
#[derive(Debug)]
pub struct OneChunkPerPoll<S> {
    inner: S,
    yielded: bool,
}

impl<S> OneChunkPerPoll<S> {
    /// Wraps a stream of body chunks.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            yielded: false,
        }
    }
}

impl<S: futures_util::Stream + Unpin> futures_util::Stream for OneChunkPerPoll<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        if self.yielded {
            // Make the caller stop and come back: it is woken at once.
            self.yielded = false;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        let r = std::pin::Pin::new(&mut self.inner).poll_next(cx);
        if matches!(r, std::task::Poll::Ready(Some(_))) {
            self.yielded = true;
        }
        r
    }
}

/// Puts every staged file in place, in request order.
fn commit_all(staged: Vec<Staged>) -> Result<(), FileError> {
    for s in staged {
        let Some(t) = s.target else {
            return Err(bad("INVALID_FILE", "a file part has no metadata"));
        };
        let ctx = || format!("error writing file {}", t.raw);
        // An existing file keeps its mode and owner, as an in-place write does.
        if let Ok(old) = fs::metadata(&t.path) {
            use std::os::unix::fs::PermissionsExt;
            let f = s.temp.file();
            f.set_permissions(fs::Permissions::from_mode(old.mode() & 0o7777))
                .map_err(|e| FileError::io(ctx(), e))?;
            let _ = std::os::unix::fs::fchown(f, Some(old.uid()), Some(old.gid()));
        }
        t.perms
            .apply_to(s.temp.file())
            .map_err(|e| FileError::io(format!("error chmoding file {}", t.raw), e))?;
        place(s.temp, &t.path).map_err(|e| FileError::io(ctx(), e))?;
    }
    Ok(())
}

/// Renames `temp` onto `dest`; a spooled file on another filesystem is
/// copied into a temporary file beside `dest` first.
fn place(temp: TempFile, dest: &Path) -> io::Result<()> {
    if same_fs(temp.path(), dest) {
        return temp.commit(dest, true);
    }
    let copy = TempFile::create_beside(dest, 0o600)?;
    let meta = temp.file().metadata()?;
    let mut src = fs::File::open(temp.path())?;
    io::copy(&mut src, &mut copy.file())?;
    use std::os::unix::fs::PermissionsExt;
    copy.file()
        .set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    let _ = std::os::unix::fs::fchown(copy.file(), Some(meta.uid()), Some(meta.gid()));
    copy.commit(dest, true)
}

fn same_fs(a: &Path, b: &Path) -> bool {
    let dev = |p: &Path| {
        p.parent()
            .and_then(|d| {
                fs::metadata(if d.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    d
                })
                .ok()
            })
            .map(|m| m.dev())
    };
    dev(a).is_some() && dev(a) == dev(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectored_writes_skip_empty_chunks() {
        let dir = std::env::temp_dir().join(format!("execd-vec-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let f = fs::File::create(&path).unwrap();
        let chunks: Vec<Bytes> = vec![
            Bytes::new(),
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from(vec![b'c'; 3000]),
            Bytes::new(),
        ];
        write_all_vectored(&f, &chunks).unwrap();
        write_all_vectored(&f, &[Bytes::new()]).unwrap();
        let got = fs::read(&path).unwrap();
        assert_eq!(got.len(), 3002);
        assert_eq!(&got[..3], b"abc");
        fs::remove_dir_all(&dir).unwrap();
    }
}
