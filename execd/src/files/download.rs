//! `GET /files/download`: a file's bytes (whole or one `Range`) or a span of
//! its lines, streamed from a reader thread through a bounded channel so
//! memory stays constant whatever the size.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::sync::mpsc;

/// Bytes read per chunk.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the reader thread and the connection.
const QUEUE: usize = 4;

/// Why a `Range` header cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The header is not `bytes=<range>[,<range>…]`.
    #[error("invalid Range header {0:?}: expected bytes=start-end, bytes=start- or bytes=-suffix")]
    Syntax(String),
    /// No range overlaps the file.
    #[error("range {range:?} is not satisfiable for a file of {size} bytes")]
    Unsatisfiable {
        /// The header.
        range: String,
        /// The file's size.
        size: u64,
    },
}

/// The first satisfiable range of a `Range` header, as `(start, end)` with
/// `end` exclusive. Like upstream, only the first satisfiable range of a
/// multi-range request is served.
pub fn parse_range(header: &str, size: u64) -> Result<(u64, u64), RangeError> {
    let syntax = || RangeError::Syntax(header.to_string());
    let spec = header.trim().strip_prefix("bytes=").ok_or_else(syntax)?;
    let mut first = None;
    for part in spec.split(',') {
        let part = part.trim();
        let (a, b) = part.split_once('-').ok_or_else(syntax)?;
        let num = |s: &str| -> Result<u64, RangeError> {
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(syntax());
            }
            s.parse().map_err(|_| syntax())
        };
        let r = if a.is_empty() {
            // Suffix: the last n bytes.
            let n = num(b)?;
            (n > 0 && size > 0).then(|| (size.saturating_sub(n), size))
        } else {
            let start = num(a)?;
            let end = if b.is_empty() {
                size
            } else {
                let last = num(b)?;
                if last < start {
                    return Err(syntax());
                }
                last.saturating_add(1)
            };
            (start < size).then(|| (start, end.min(size)))
        };
        if first.is_none() {
            first = r;
        }
    }
    first.ok_or_else(|| RangeError::Unsatisfiable {
        range: header.to_string(),
        size,
    })
}

/// A body fed by a reader thread; a read error aborts the response.
#[derive(Debug)]
pub struct ReaderBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    left: Option<u64>,
}

impl hyper::body::Body for ReaderBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                if let Some(left) = &mut self.left {
                    *left = left.saturating_sub(b.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => match self.left {
                Some(n) if n > 0 => Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file shrank while being sent: {n} bytes missing"),
                )))),
                _ => Poll::Ready(None),
            },
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.left
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// Read buffers kept for reuse between downloads, at most.
const POOL_MAX: usize = 4;
/// The first read is small so that the response starts at once.
const FIRST_CHUNK: usize = 64 << 10;

/// Recycled read buffers of [`CHUNK`] bytes: a fresh large buffer costs an
/// mmap, page faults and zeroing, which halved download throughput.
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn take_buffer() -> Vec<u8> {
    POOL.lock()
        .ok()
        .and_then(|mut p| p.pop())
        .unwrap_or_else(|| vec![0u8; CHUNK])
}

/// Streams bytes `start..end` of `file` from pooled buffers.
pub fn bytes(file: fs::File, start: u64, end: u64) -> ReaderBody {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::task::spawn_blocking(move || {
        let mut pos = start;
        let mut chunk = FIRST_CHUNK;
        while pos < end {
            let want = usize::try_from((end - pos).min(chunk as u64)).unwrap_or(chunk);
            chunk = CHUNK;
            let mut buf = take_buffer();
            let r = match file.read_at(&mut buf[..want], pos) {
                Ok(0) => break, // shrank: the body reports the shortfall
                Ok(n) => {
                    pos += n as u64;
                    Ok(Bytes::from_owner(Recycled { buf, len: n }))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = r.is_err();
            if tx.blocking_send(r).is_err() || failed {
                return; // client gone, or error sent
            }
        }
    });
    ReaderBody {
        rx,
        left: Some(end - start),
    }
}

/// A read buffer that goes back to the pool once the connection wrote it.
struct Recycled {
    buf: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        if let Ok(mut p) = POOL.lock() {
            if p.len() < POOL_MAX {
                p.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

/// Streams lines `offset..offset+limit` (1-based) of `file`, each without
/// its trailing `\r`s, joined by `\n`, with no final newline: upstream's
/// line mode.
pub fn lines(file: fs::File, offset: u64, limit: Option<u64>) -> ReaderBody {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::task::spawn_blocking(move || {
        let mut r = io::BufReader::with_capacity(CHUNK, file);
        let mut s = LineSpan::new(offset, limit);
        let mut inbuf = vec![0u8; CHUNK];
        loop {
            let n = match r.read(&mut inbuf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            let out = s.feed(&inbuf[..n]);
            if !out.is_empty() && tx.blocking_send(Ok(Bytes::from(out))).is_err() {
                return;
            }
            if s.done() {
                return;
            }
        }
    });
    ReaderBody { rx, left: None }
}

/// The line-selection state machine behind [`lines`].
#[derive(Debug)]
pub struct LineSpan {
    /// 1-based number of the line being read.
    line: u64,
    first: u64,
    last: Option<u64>,
    /// `\r`s seen at the current position, held until we know whether the line ends.
    pending_cr: usize,
    /// Whether the current line has started.
    started: bool,
}

impl LineSpan {
    /// Selects lines `offset..offset+limit` (1-based).
    pub fn new(offset: u64, limit: Option<u64>) -> Self {
        Self {
            line: 1,
            first: offset.max(1),
            last: limit.map(|l| offset.max(1).saturating_add(l).saturating_sub(1)),
            pending_cr: 0,
            started: false,
        }
    }

    fn selected(&self) -> bool {
        self.line >= self.first && self.last.is_none_or(|l| self.line <= l)
    }

    /// Whether every selected line has been produced.
    pub fn done(&self) -> bool {
        self.last.is_some_and(|l| self.line > l)
    }

    /// Consumes input, returning the output it produces.
    pub fn feed(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &c in input {
            if self.done() {
                break;
            }
            if !self.started {
                // A line exists once its first byte (even its newline) is read.
                self.started = true;
                if self.selected() && self.line > self.first {
                    out.push(b'\n');
                }
            }
            match c {
                b'\n' => {
                    self.pending_cr = 0;
                    self.line += 1;
                    self.started = false;
                }
                b'\r' => self.pending_cr += 1,
                _ => {
                    if self.selected() {
                        out.extend(std::iter::repeat_n(b'\r', self.pending_cr));
                        out.push(c);
                    }
                    self.pending_cr = 0;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 20), Ok((0, 10)));
        assert_eq!(parse_range("bytes=-5", 10), Ok((5, 10)));
        assert_eq!(parse_range("bytes=-50", 10), Ok((0, 10)));
        assert_eq!(parse_range("bytes=5-", 10), Ok((5, 10)));
        assert_eq!(parse_range("bytes=5-100", 10), Ok((5, 10)));
        assert_eq!(parse_range("bytes=50-60, 2-3", 10), Ok((2, 4)));
        assert!(matches!(
            parse_range("bytes=foo", 10),
            Err(RangeError::Syntax(_))
        ));
        assert!(matches!(
            parse_range("bytes=5-2", 10),
            Err(RangeError::Syntax(_))
        ));
        assert!(matches!(
            parse_range("bytes=--5", 10),
            Err(RangeError::Syntax(_))
        ));
        assert!(matches!(
            parse_range("items=0-1", 10),
            Err(RangeError::Syntax(_))
        ));
        assert!(matches!(
            parse_range("bytes=99999999999999999999999-", 10),
            Err(RangeError::Syntax(_))
        ));
        assert!(matches!(
            parse_range("bytes=10-", 10),
            Err(RangeError::Unsatisfiable { .. })
        ));
        assert!(matches!(
            parse_range("bytes=-0", 10),
            Err(RangeError::Unsatisfiable { .. })
        ));
        assert!(matches!(
            parse_range("bytes=0-0", 0),
            Err(RangeError::Unsatisfiable { .. })
        ));
    }

    fn span(input: &str, offset: u64, limit: Option<u64>) -> String {
        let mut s = LineSpan::new(offset, limit);
        // Feed byte by byte to exercise chunk boundaries.
        let mut out = Vec::new();
        for b in input.as_bytes() {
            out.extend(s.feed(std::slice::from_ref(b)));
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn line_mode_as_upstream() {
        let five = "line1\nline2\nline3\nline4\nline5\n";
        assert_eq!(span(five, 2, Some(2)), "line2\nline3");
        assert_eq!(span(five, 4, None), "line4\nline5");
        assert_eq!(span(five, 1, Some(2)), "line1\nline2");
        assert_eq!(span(five, 9, None), "");
        assert_eq!(span(five, 5, Some(10)), "line5");
        assert_eq!(span("a\r\nb\r\r\nc", 1, None), "a\nb\nc");
        assert_eq!(span("a\rb\n", 1, None), "a\rb");
        assert_eq!(span("a\n\n\nb\n", 1, None), "a\n\n\nb");
        assert_eq!(span("a\n\nb\n", 2, Some(1)), "");
        assert_eq!(span("a\n\nb\n", 2, Some(2)), "\nb");
    }
}
