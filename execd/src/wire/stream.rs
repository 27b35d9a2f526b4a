//! The channel between a running execution and its HTTP response: bounded,
//! so a slow client slows the producer (back-pressure), and tolerant of a
//! client that went away (the execution goes on, its events are dropped).

use bytes::Bytes;
use tokio::sync::mpsc;

/// Chunks of framed events that may wait for a slow client.
pub const STREAM_CHUNKS: usize = 16;

/// The receiving half, turned into the response body.
pub type StreamRx = mpsc::Receiver<Bytes>;

/// The producing half of an event stream.
#[derive(Debug)]
pub struct EventSink {
    tx: Option<mpsc::Sender<Bytes>>,
}

impl EventSink {
    /// A new bounded stream.
    pub fn channel() -> (Self, StreamRx) {
        let (tx, rx) = mpsc::channel(STREAM_CHUNKS);
        (Self { tx: Some(tx) }, rx)
    }

    /// Sends a chunk, waiting while the client is slow. Once the client is
    /// gone, chunks are dropped.
    pub async fn send(&mut self, chunk: Vec<u8>) {
        if chunk.is_empty() {
            return;
        }
        if let Some(tx) = &self.tx {
            if tx.send(Bytes::from(chunk)).await.is_err() {
                self.tx = None;
            }
        }
    }

    /// Whether the client still listens.
    pub fn connected(&self) -> bool {
        self.tx.as_ref().is_some_and(|t| !t.is_closed())
    }
}
