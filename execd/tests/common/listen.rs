//! The port execd listens on, read from its log line
//! `execd listening ... local=ADDR:PORT` (`-port=0` lets the kernel choose).
//! Shared by the tests and the benchmarks (`#[path]`).

use std::io::{BufRead, BufReader};
use std::process::Child;

/// Reads `child`'s piped stdout until execd says where it listens and
/// returns the port; the rest of the log is drained on a thread, so execd
/// never blocks on a full pipe. None when execd exits (or its stdout was not
/// piped) before that.
pub fn listening_port(child: &mut Child) -> Option<u16> {
    let mut out = BufReader::new(child.stdout.take()?);
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        if !line.contains("execd listening") {
            continue;
        }
        let port = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("local="))
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok());
        if port.is_some() {
            std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
            return port;
        }
    }
}
