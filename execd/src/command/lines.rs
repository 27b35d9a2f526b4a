//! Splitting output into line events the way upstream does: `\n`, `\r` and
//! `\r\n` (counted once, also across reads) end a line; a line is sent
//! without its terminator; an empty line is sent as `"\n"`; a trailing
//! partial line is flushed at the end. Unlike upstream, a line longer than
//! [`MAX_LINE`] is sent in pieces of at most that size (cut on a UTF-8
//! boundary), so memory stays bounded whatever a command prints.

/// Largest piece of one line sent as one event.
pub const MAX_LINE: usize = 1 << 20;

/// Streaming line splitter.
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    after_cr: bool,
    max: usize,
}

impl Default for LineSplitter {
    fn default() -> Self {
        Self::with_max(MAX_LINE)
    }
}

impl LineSplitter {
    /// A splitter that cuts lines longer than `max` bytes.
    pub fn with_max(max: usize) -> Self {
        Self {
            pending: Vec::new(),
            after_cr: false,
            max: max.max(4),
        }
    }

    /// Feeds `data`, calling `emit` with each complete line (or piece).
    pub fn push(&mut self, mut data: &[u8], emit: &mut impl FnMut(&[u8])) {
        while !data.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if data[0] == b'\n' {
                    data = &data[1..];
                    continue;
                }
            }
            match data.iter().position(|&c| c == b'\n' || c == b'\r') {
                Some(pos) => {
                    self.append(&data[..pos], emit);
                    // A cut never empties `pending` (the cut leaves the rest of
                    // the line there), so empty here means an empty line.
                    if self.pending.is_empty() {
                        emit(b"\n");
                    } else {
                        emit(&self.pending);
                        self.pending.clear();
                    }
                    self.after_cr = data[pos] == b'\r';
                    data = &data[pos + 1..];
                }
                None => {
                    self.append(data, emit);
                    data = &[];
                }
            }
        }
    }

    fn append(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(&[u8])) {
        while self.pending.len() + bytes.len() > self.max {
            let take = self.max - self.pending.len();
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let cut = utf8_cut(&self.pending);
            emit(&self.pending[..cut]);
            self.pending.drain(..cut);
        }
        self.pending.extend_from_slice(bytes);
    }

    /// Flushes a trailing partial line.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8])) {
        if !self.pending.is_empty() {
            emit(&self.pending);
            self.pending.clear();
        }
        self.after_cr = false;
    }
}

/// The largest prefix length of `buf` that does not end inside a UTF-8
/// sequence (never 0 for a non-empty buffer).
fn utf8_cut(buf: &[u8]) -> usize {
    let len = buf.len();
    for back in 1..=3.min(len) {
        let b = buf[len - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: look further back
        }
        let need = if b >= 0xF0 {
            4
        } else if b >= 0xE0 {
            3
        } else if b >= 0xC0 {
            2
        } else {
            1
        };
        return if need > back && len - back > 0 {
            len - back
        } else {
            len
        };
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], max: usize) -> Vec<String> {
        let mut s = LineSplitter::with_max(max);
        let mut out = Vec::new();
        let mut emit = |l: &[u8]| out.push(String::from_utf8_lossy(l).into_owned());
        for c in chunks {
            s.push(c, &mut emit);
        }
        s.finish(&mut emit);
        out
    }

    #[test]
    fn upstream_cases() {
        assert_eq!(
            split(&[b"a\n\nb\n\n\nc\n"], MAX_LINE),
            ["a", "\n", "b", "\n", "\n", "c"]
        );
        assert_eq!(
            split(&[b"line1\nprog 10%\rprog 20%\rprog 30%\nlast\n"], MAX_LINE),
            ["line1", "prog 10%", "prog 20%", "prog 30%", "last"]
        );
        assert_eq!(
            split(&[b"a\n\nb\n\n\nc\n\r\nd\n"], MAX_LINE),
            ["a", "\n", "b", "\n", "\n", "c", "\n", "d"]
        );
        assert_eq!(split(&[b"line1\nlast"], MAX_LINE), ["line1", "last"]);
    }

    #[test]
    fn crlf_split_across_reads() {
        assert_eq!(split(&[b"a\r", b"\nb\n"], MAX_LINE), ["a", "b"]);
        assert_eq!(split(&[b"\r", b"\n"], MAX_LINE), ["\n"]);
    }

    #[test]
    fn long_lines_are_cut_in_bounded_pieces() {
        let line = vec![b'x'; 10];
        assert_eq!(split(&[&line, b"\n"], 4), ["xxxx", "xxxx", "xx"]);
        // A cut never splits a UTF-8 character.
        let s = "aé€😀".repeat(3);
        let pieces = split(&[s.as_bytes()], 5);
        assert_eq!(pieces.concat(), s);
        assert!(pieces
            .iter()
            .all(|p| p.len() <= 5 && !p.contains('\u{FFFD}')));
    }

    #[test]
    fn exact_multiple_of_max_has_no_blank_line() {
        assert_eq!(split(&[b"xxxxxxxx\nz\n"], 4), ["xxxx", "xxxx", "z"]);
    }
}
