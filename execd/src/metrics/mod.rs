//! `GET /metrics` and `GET /metrics/watch`: CPU and memory figures of the
//! sandbox, in upstream's `Metrics` shape.
//!
//! Unlike upstream (which measures CPU for 1 s inside every request, host
//! wide), a background task samples CPU usage once a second (the first
//! sample 100 ms after start), so a request answers at once; memory is read
//! when asked. Figures come from the sandbox's cgroup (v1 or v2) when it is
//! limited, else from the host:
//! - `cpu_count`: the tightest CPU quota in CPUs, rounded up and at most the
//!   usable CPUs; without a quota, the CPUs execd may run on (its affinity).
//! - `cpu_used_pct`: CPU time used in the last window as a percent of that
//!   capacity (the quota itself, e.g. 0.5 CPU, or all usable CPUs), 0 to
//!   100, rounded to hundredths. Host-wide from `/proc/stat` without a quota,
//!   as upstream.
//! - `mem_total_mib`: the tightest memory limit when below host memory, else
//!   `MemTotal`. `mem_used_mib`: the cgroup's usage minus inactive file cache
//!   (the working set), else `MemTotal - MemAvailable`.
//!
//! One job per module:
//! - [`cgroup`]: finding execd's cgroups, their limits and usage.
//! - [`host`]: `/proc/stat`, `/proc/meminfo` and the usable CPUs.
//! - [`sampler`]: choosing between the two, and the sampling task.

pub mod cgroup;
pub mod host;
pub mod sampler;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};

use crate::wire::json::write_go_json;
use crate::wire::stream::{StreamRx, STREAM_CHUNKS};
use crate::wire::time::now_millis;
use sampler::{Cpu, Mem, Probe, Sample};

/// Most `/metrics/watch` streams at once.
pub const MAX_WATCHES: usize = 64;
/// Longest a request waits for the first CPU sample after start.
const FIRST_SAMPLE_WAIT: Duration = Duration::from_secs(2);
const MIB: f64 = 1024.0 * 1024.0;

/// Reads small files (`/proc`, `/sys/fs/cgroup`); swapped for file contents
/// in memory by the tests.
pub trait Fs: Send + Sync + 'static {
    /// The file's contents, None when it cannot be read.
    fn read(&self, path: &Path) -> Option<String>;
}

/// The real filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

impl Fs for RealFs {
    fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
}

/// Upstream's `Metrics`, fields in its order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metrics {
    /// Usable CPUs.
    pub cpu_count: f64,
    /// Percent of the usable CPU capacity in use.
    pub cpu_used_pct: f64,
    /// Memory available to the sandbox, MiB.
    pub mem_total_mib: f64,
    /// Memory in use, MiB.
    pub mem_used_mib: f64,
    /// When the figures were taken, Unix milliseconds.
    pub timestamp: i64,
}

impl Metrics {
    /// A record from CPU and memory figures.
    pub fn new(cpu: Cpu, mem: Mem, timestamp: i64) -> Self {
        Self {
            cpu_count: cpu.count,
            cpu_used_pct: cpu.pct,
            mem_total_mib: mem.total as f64 / MIB,
            mem_used_mib: mem.used as f64 / MIB,
            timestamp,
        }
    }
}

/// `/metrics/watch` is refused: [`MAX_WATCHES`] streams run already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// The metrics service: the sampler and the watch streams.
#[derive(Debug)]
pub struct Monitor {
    probe: Arc<Probe<RealFs>>,
    /// Latest sample; kept here so the sampler runs while the monitor lives.
    rx: watch::Receiver<Option<Arc<Sample>>>,
    /// The sampler's end, until it is started.
    tx: Mutex<Option<watch::Sender<Option<Arc<Sample>>>>>,
    watches: Arc<AtomicUsize>,
}

impl Default for Monitor {
    fn default() -> Self {
        Self::new()
    }
}

impl Monitor {
    /// The service; its sampler starts now when called within a Tokio
    /// runtime, else on first use.
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(None);
        let m = Self {
            probe: Arc::new(Probe::new(RealFs)),
            rx,
            tx: Mutex::new(Some(tx)),
            watches: Arc::new(AtomicUsize::new(0)),
        };
        m.ensure_started();
        m
    }

    fn ensure_started(&self) {
        let Ok(handle) = Handle::try_current() else {
            return;
        };
        let mut tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = tx.take() {
            tracing::debug!("metrics sampler started");
            handle.spawn(sampler::run(self.probe.clone(), tx));
        }
    }

    /// The figures now: CPU from the last sample, memory read now.
    pub async fn current(&self) -> Result<Metrics, String> {
        self.ensure_started();
        let mut rx = self.rx.clone();
        let sample =
            match tokio::time::timeout(FIRST_SAMPLE_WAIT, rx.wait_for(Option::is_some)).await {
                Ok(Ok(s)) => s.clone(),
                _ => None,
            };
        let sample = sample.ok_or_else(|| "no CPU sample yet".to_string())?;
        let cpu = sample.cpu.clone()?;
        let mem = self.probe.memory()?;
        Ok(Metrics::new(cpu, mem, now_millis()))
    }

    /// A stream of one record per sample (the latest one first), each
    /// compact JSON followed by a blank line; `{"error":"..."}` when figures
    /// cannot be read. It ends when the client goes away.
    pub fn watch(&self) -> Result<StreamRx, Busy> {
        self.ensure_started();
        let slot = WatchSlot::acquire(&self.watches).ok_or(Busy)?;
        let (out, body) = mpsc::channel(STREAM_CHUNKS);
        let mut rx = self.rx.clone();
        if rx.borrow().is_some() {
            rx.mark_changed();
        }
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                tokio::select! {
                    biased;
                    () = out.closed() => break,
                    changed = rx.changed() => if changed.is_err() { break },
                }
                let Some(sample) = rx.borrow_and_update().clone() else {
                    continue;
                };
                if out.send(frame(&sample.record)).await.is_err() {
                    break;
                }
            }
            tracing::debug!("metrics watch ended");
        });
        Ok(body)
    }
}

/// One `/metrics/watch` record with its framing.
fn frame(record: &Result<Metrics, String>) -> Bytes {
    #[derive(Serialize)]
    struct Failed<'a> {
        error: &'a str,
    }
    let mut out = Vec::with_capacity(128);
    match record {
        Ok(m) => write_go_json(&mut out, m),
        Err(e) => write_go_json(&mut out, &Failed { error: e }),
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// One of the limited watch streams, given back on drop.
#[derive(Debug)]
struct WatchSlot(Arc<AtomicUsize>);

impl WatchSlot {
    fn acquire(count: &Arc<AtomicUsize>) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_WATCHES).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(count.clone()))
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;

    /// File contents in memory.
    #[derive(Debug, Clone, Default)]
    pub struct FakeFs(Arc<Mutex<HashMap<PathBuf, String>>>);

    impl FakeFs {
        pub fn new(files: &[(&str, &str)]) -> Self {
            let fs = Self::default();
            for (p, c) in files {
                fs.set(p, c);
            }
            fs
        }

        pub fn set(&self, path: &str, contents: &str) {
            self.0
                .lock()
                .unwrap()
                .insert(PathBuf::from(path), contents.to_string());
        }
    }

    impl Fs for FakeFs {
        fn read(&self, path: &Path) -> Option<String> {
            self.0.lock().unwrap().get(path).cloned()
        }
    }

    #[test]
    fn json_like_upstream() {
        let m = Metrics::new(
            Cpu {
                count: 4.0,
                pct: 12.5,
            },
            Mem {
                total: 8 << 30,
                used: 2_109_014_016,
            },
            1_718_000_000_000,
        );
        assert_eq!(
            String::from_utf8(crate::wire::json::to_go_json(&m)).unwrap(),
            r#"{"cpu_count":4,"cpu_used_pct":12.5,"mem_total_mib":8192,"mem_used_mib":2011.3125,"timestamp":1718000000000}"#
        );
        assert_eq!(
            &frame(&Ok(m))[..],
            format!(
                "{}\n\n",
                String::from_utf8(crate::wire::json::to_go_json(&m)).unwrap()
            )
            .as_bytes()
        );
        assert_eq!(
            &frame(&Err("x <y>".into()))[..],
            b"{\"error\":\"x \\u003cy\\u003e\"}\n\n"
        );
    }

    #[test]
    fn watch_slots_are_bounded() {
        let n = Arc::new(AtomicUsize::new(0));
        let slots: Vec<_> = (0..MAX_WATCHES)
            .map(|_| WatchSlot::acquire(&n).unwrap())
            .collect();
        assert!(WatchSlot::acquire(&n).is_none());
        drop(slots);
        assert_eq!(n.load(Ordering::Acquire), 0);
        assert!(WatchSlot::acquire(&n).is_some());
    }

    #[tokio::test]
    async fn answers_from_the_real_system() {
        let m = Monitor::new();
        let v = m.current().await.unwrap();
        assert!(v.cpu_count >= 1.0);
        assert!((0.0..=100.0).contains(&v.cpu_used_pct));
        assert!(v.mem_total_mib > 0.0 && v.mem_used_mib <= v.mem_total_mib);
        let t = std::time::Instant::now();
        m.current().await.unwrap();
        assert!(t.elapsed() < Duration::from_millis(100));
    }
}
