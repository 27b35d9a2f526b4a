//! The replay buffer of a PTY session: the last [`RING_SIZE`] bytes of its
//! output, addressed by absolute offsets (bytes ever written before them).
//!
//! It is the only buffer between the terminal and a client. While a client
//! is attached the shell is held back instead of overwriting what that client
//! has not been sent (see `PtySession::wait_room`); with no client attached
//! the oldest bytes are overwritten, and a client that comes back from too
//! far behind is told how many it lost (see [`Ring::read`]).

/// Bytes kept per session, as upstream (`1 << 20`).
pub const RING_SIZE: usize = 1 << 20;

/// A circular buffer with a monotonic byte count.
#[derive(Debug)]
pub struct Ring {
    /// Grows on demand up to `cap`, then wraps.
    buf: Vec<u8>,
    cap: usize,
    /// Bytes ever written.
    total: u64,
}

/// What [`Ring::read`] returns.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of the first returned byte.
    pub offset: u64,
    /// Bytes between the requested offset and `offset` that were evicted
    /// (0 when the read is contiguous).
    pub lost: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

impl Ring {
    /// An empty ring holding at most `cap` bytes (`cap > 0`).
    pub fn new(cap: usize) -> Self {
        Self {
            buf: Vec::new(),
            cap: cap.max(1),
            total: 0,
        }
    }

    /// Bytes the ring keeps.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes ever written: the offset the next byte will get.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Offset of the oldest retained byte.
    pub fn oldest(&self) -> u64 {
        self.total.saturating_sub(self.cap as u64)
    }

    /// Appends `data`, evicting the oldest bytes beyond the capacity.
    pub fn write(&mut self, data: &[u8]) {
        // Of a write larger than the ring only the tail survives.
        let skip = data.len().saturating_sub(self.cap);
        if skip > 0 && self.buf.len() < self.cap {
            self.buf.resize(self.cap, 0);
        }
        self.total += skip as u64;
        let mut rest = &data[skip..];
        while !rest.is_empty() {
            let pos = self.pos(self.total);
            let take = rest.len().min(self.cap - pos);
            if pos == self.buf.len() {
                // Still growing: total == buf.len() until the ring is full.
                self.buf.extend_from_slice(&rest[..take]);
            } else {
                self.buf[pos..pos + take].copy_from_slice(&rest[..take]);
            }
            self.total += take as u64;
            rest = &rest[take..];
        }
    }

    fn pos(&self, offset: u64) -> usize {
        (offset % self.cap as u64) as usize
    }

    /// Up to `max` bytes from `offset`. An offset older than the oldest
    /// retained byte is clamped to it (`lost` says how many bytes were
    /// skipped); one at or past the end returns no data at `total`.
    pub fn read(&self, offset: u64, max: usize) -> Chunk {
        let oldest = self.oldest();
        let start = offset.clamp(oldest, self.total);
        let lost = start.saturating_sub(offset);
        let len = ((self.total - start) as usize).min(max);
        let mut data = Vec::with_capacity(len);
        let mut p = self.pos(start);
        while data.len() < len {
            let take = (len - data.len()).min(self.cap - p);
            data.extend_from_slice(&self.buf[p..p + take]);
            p = (p + take) % self.cap;
        }
        Chunk {
            offset: start,
            lost,
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(r: &Ring, from: u64) -> Chunk {
        r.read(from, usize::MAX)
    }

    #[test]
    fn reads_from_the_middle_and_when_caught_up() {
        let mut r = Ring::new(16);
        r.write(b"hello ");
        r.write(b"world");
        assert_eq!(r.total(), 11);
        let c = all(&r, 6);
        assert_eq!((c.offset, c.lost, &c.data[..]), (6, 0, &b"world"[..]));
        let c = all(&r, 11);
        assert_eq!((c.offset, c.data.len()), (11, 0));
        let c = all(&r, 99);
        assert_eq!((c.offset, c.lost, c.data.len()), (11, 0, 0));
        let c = r.read(0, 5);
        assert_eq!(&c.data[..], b"hello");
    }

    #[test]
    fn evicts_circularly_and_reports_the_gap() {
        let mut r = Ring::new(8);
        r.write(b"0123456789ab"); // larger than the ring
        assert_eq!(r.total(), 12);
        assert_eq!(r.oldest(), 4);
        let c = all(&r, 0);
        assert_eq!((c.offset, c.lost, &c.data[..]), (4, 4, &b"456789ab"[..]));
        r.write(b"cde");
        let c = all(&r, 5);
        assert_eq!((c.offset, c.lost, &c.data[..]), (7, 2, &b"789abcde"[..]));
        let c = all(&r, 13);
        assert_eq!(&c.data[..], b"de");
    }

    #[test]
    fn matches_a_reference_over_many_writes() {
        let mut r = Ring::new(1000);
        let mut all_bytes = Vec::new();
        let mut n = 0u32;
        for i in 0..500usize {
            let chunk: Vec<u8> = (0..(i * 7 % 97))
                .map(|_| {
                    n = n.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (n >> 16) as u8
                })
                .collect();
            r.write(&chunk);
            all_bytes.extend_from_slice(&chunk);
            assert_eq!(r.total(), all_bytes.len() as u64);
            let from = (all_bytes.len() as u64).saturating_sub((i as u64 * 13) % 1200);
            let c = r.read(from, 300);
            let start = c.offset as usize;
            assert_eq!(c.lost, c.offset - from);
            assert_eq!(&c.data[..], &all_bytes[start..(start + c.data.len())]);
            assert_eq!(c.data.len(), (all_bytes.len() - start).min(300));
        }
    }
}
