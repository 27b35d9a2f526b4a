//! Finding the end-of-run markers a session shell prints on stdout and
//! stderr: `\x1e<nonce>:<seq>\x1e`, anywhere in the byte stream (output need
//! not end with a newline). Partial markers at chunk ends are held back.

/// Longest sequence number accepted in a marker, in digits.
const MAX_DIGITS: usize = 20;

/// Output of the scanner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Output bytes.
    Data(Vec<u8>),
    /// The end-of-run marker with this sequence number.
    Marker(u64),
}

/// Streaming marker scanner.
#[derive(Debug)]
pub struct MarkerScanner {
    prefix: Vec<u8>,
    held: Vec<u8>,
}

impl MarkerScanner {
    /// A scanner for markers with this nonce.
    pub fn new(nonce: &str) -> Self {
        let mut prefix = vec![0x1e];
        prefix.extend_from_slice(nonce.as_bytes());
        prefix.push(b':');
        Self {
            prefix,
            held: Vec::new(),
        }
    }

    /// The marker text for `seq`, as the shell prints it.
    pub fn marker(nonce: &str, seq: u64) -> String {
        format!("\x1e{nonce}:{seq}\x1e")
    }

    /// Feeds a chunk, appending what it contains to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Piece>) {
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(data);
        let mut start = 0;
        let mut pos = 0;
        let mut hold_at = buf.len();
        while let Some(off) = buf[pos..].iter().position(|&b| b == 0x1e) {
            let i = pos + off;
            let avail = &buf[i..];
            let n = avail.len().min(self.prefix.len());
            if avail[..n] != self.prefix[..n] {
                pos = i + 1;
                continue;
            }
            if n < self.prefix.len() {
                hold_at = i; // a partial prefix at the end: hold it back
                break;
            }
            let j = i + self.prefix.len();
            let digits = buf[j..]
                .iter()
                .take(MAX_DIGITS + 1)
                .take_while(|b| b.is_ascii_digit())
                .count();
            match buf.get(j + digits) {
                None if digits <= MAX_DIGITS => {
                    hold_at = i; // incomplete marker
                    break;
                }
                Some(0x1e) if digits > 0 && digits <= MAX_DIGITS => {
                    if i > start {
                        out.push(Piece::Data(buf[start..i].to_vec()));
                    }
                    let seq = std::str::from_utf8(&buf[j..j + digits])
                        .ok()
                        .and_then(|s| s.parse().ok());
                    out.push(Piece::Marker(seq.unwrap_or(0)));
                    start = j + digits + 1;
                    pos = start;
                }
                _ => pos = i + 1, // not a marker after all: plain data
            }
        }
        if hold_at > start {
            out.push(Piece::Data(buf[start..hold_at].to_vec()));
        }
        self.held = buf[hold_at.max(start)..].to_vec();
    }

    /// Flushes held bytes as data (at end of stream).
    pub fn finish(&mut self, out: &mut Vec<Piece>) {
        if !self.held.is_empty() {
            out.push(Piece::Data(std::mem::take(&mut self.held)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Vec<Piece> {
        let mut s = MarkerScanner::new("abc");
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        s.finish(&mut out);
        // Merge adjacent data for easy comparison.
        let mut merged: Vec<Piece> = Vec::new();
        for p in out {
            match (merged.last_mut(), p) {
                (Some(Piece::Data(a)), Piece::Data(b)) => a.extend(b),
                (_, p) => merged.push(p),
            }
        }
        merged
    }

    fn d(s: &str) -> Piece {
        Piece::Data(s.as_bytes().to_vec())
    }

    #[test]
    fn finds_markers_anywhere() {
        assert_eq!(
            scan(&[b"hello\x1eabc:7\x1eafter"]),
            [d("hello"), Piece::Marker(7), d("after")]
        );
        assert_eq!(scan(&[b"\x1eabc:1\x1e"]), [Piece::Marker(1)]);
    }

    #[test]
    fn markers_split_across_chunks() {
        let full = b"x\x1eabc:12\x1ey";
        for cut in 0..full.len() {
            let (a, b) = full.split_at(cut);
            assert_eq!(
                scan(&[a, b]),
                [d("x"), Piece::Marker(12), d("y")],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn lookalikes_are_data() {
        assert_eq!(scan(&[b"\x1eabd:1\x1e"]), [d("\x1eabd:1\x1e")]);
        assert_eq!(scan(&[b"\x1eabc:x\x1e"]), [d("\x1eabc:x\x1e")]);
        assert_eq!(scan(&[b"\x1eab"]), [d("\x1eab")]);
        assert_eq!(
            scan(&[b"a\x1e\x1eabc:3\x1e"]),
            [d("a\x1e"), Piece::Marker(3)]
        );
    }
}
