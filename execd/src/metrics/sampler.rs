//! The figures (cgroup when limited, host otherwise) and the background task
//! that samples CPU usage once a second, so that no request waits for a
//! measurement window.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::cgroup::Layout;
use super::host::{self, Ticks};
use super::{Fs, Metrics};
use crate::wire::time::now_millis;

/// Interval between CPU samples (and between `/metrics/watch` records).
pub const PERIOD: Duration = Duration::from_secs(1);
/// The first sample's window, after the sampler starts.
pub const FIRST: Duration = Duration::from_millis(100);

/// A CPU time counter at one moment.
#[derive(Debug, Clone, PartialEq)]
pub enum Counter {
    /// The cgroup where the CPU limit is set: its usage and the limit.
    Cgroup {
        /// Nanoseconds of CPU time used.
        usage_ns: u64,
        /// Where the usage was read (a change of cgroup restarts the window).
        dir: PathBuf,
        /// The limit, in CPUs.
        capacity: f64,
    },
    /// The host's usable CPUs.
    Host(Ticks),
}

/// The CPU figures read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuReading {
    /// `cpu_count`: the limit rounded up (at most the usable CPUs), or the usable CPUs.
    pub count: f64,
    /// The counter to take differences of.
    pub counter: Counter,
}

/// CPU figures of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cpu {
    /// `cpu_count`.
    pub count: f64,
    /// `cpu_used_pct`: percent of all the CPUs the sandbox may use.
    pub pct: f64,
}

/// Memory figures in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mem {
    /// The cgroup limit when set and below host memory, else host memory.
    pub total: u64,
    /// In use, measured where `total` comes from.
    pub used: u64,
}

/// Usage between two readings `elapsed` apart, in percent (0 to 100,
/// rounded to hundredths); None when they cannot be compared.
pub fn usage_pct(prev: &Counter, cur: &Counter, elapsed: Duration) -> Option<f64> {
    let pct = match (prev, cur) {
        (
            Counter::Cgroup {
                usage_ns: a,
                dir: da,
                ..
            },
            Counter::Cgroup {
                usage_ns: b,
                dir: db,
                capacity,
            },
        ) if da == db => {
            let window = elapsed.as_nanos() as f64 * capacity;
            if window <= 0.0 {
                return None;
            }
            b.saturating_sub(*a) as f64 / window * 100.0
        }
        (Counter::Host(a), Counter::Host(b)) => {
            let total = b.total.checked_sub(a.total)?;
            if total == 0 {
                return None;
            }
            b.busy.saturating_sub(a.busy) as f64 / total as f64 * 100.0
        }
        _ => return None,
    };
    Some(((pct.clamp(0.0, 100.0)) * 100.0).round() / 100.0)
}

/// Reads figures through an [`Fs`], keeping execd's cgroup layout until
/// `/proc/self/cgroup` changes (execd moved to another cgroup).
#[derive(Debug)]
pub struct Probe<F> {
    fs: F,
    layout: Mutex<(String, Arc<Layout>)>,
}

impl<F: Fs> Probe<F> {
    /// A probe reading through `fs`.
    pub fn new(fs: F) -> Self {
        Self {
            fs,
            layout: Mutex::new((String::from("\0"), Arc::new(Layout::default()))),
        }
    }

    fn read(&self, path: &str) -> Option<String> {
        self.fs.read(Path::new(path))
    }

    /// The current layout.
    pub fn layout(&self) -> Arc<Layout> {
        let own = self.read("/proc/self/cgroup").unwrap_or_default();
        let mut cached = self.layout.lock().unwrap_or_else(PoisonError::into_inner);
        if cached.0 != own {
            let mountinfo = self.read("/proc/self/mountinfo").unwrap_or_default();
            *cached = (own.clone(), Arc::new(Layout::discover(&own, &mountinfo)));
        }
        cached.1.clone()
    }

    /// The CPUs execd may run on.
    fn usable_cpus(&self) -> Option<Vec<usize>> {
        self.read("/proc/self/status")
            .as_deref()
            .and_then(host::parse_allowed_cpus)
    }

    /// CPU figures now.
    pub fn cpu(&self) -> Result<CpuReading, String> {
        let layout = self.layout();
        let cpus = self.usable_cpus();
        let usable = cpus.as_ref().map_or_else(
            || std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            Vec::len,
        );
        if let Some(bound) = layout.cpu_limit(&self.fs) {
            if bound.limit < usable as f64 {
                if let Some((usage_ns, dir)) = layout.cpu_usage(&self.fs, Some(bound.level)) {
                    return Ok(CpuReading {
                        count: bound.limit.ceil().clamp(1.0, usable as f64),
                        counter: Counter::Cgroup {
                            usage_ns,
                            dir,
                            capacity: bound.limit,
                        },
                    });
                }
            }
        }
        let stat = self
            .read("/proc/stat")
            .ok_or_else(|| "cannot read /proc/stat".to_string())?;
        let ticks = host::parse_proc_stat(&stat, cpus.as_deref())
            .ok_or_else(|| "no cpu line in /proc/stat".to_string())?;
        Ok(CpuReading {
            count: usable as f64,
            counter: Counter::Host(ticks),
        })
    }

    /// Memory figures now.
    pub fn memory(&self) -> Result<Mem, String> {
        let host = self
            .read("/proc/meminfo")
            .as_deref()
            .and_then(host::parse_meminfo);
        let layout = self.layout();
        if let Some(bound) = layout.memory_limit(&self.fs) {
            if host.is_none_or(|h| bound.limit < h.total) {
                if let Some(used) = layout.memory_used(&self.fs, bound.level) {
                    return Ok(Mem {
                        total: bound.limit,
                        used: used.min(bound.limit),
                    });
                }
            }
        }
        let h = host.ok_or_else(|| "cannot read MemTotal from /proc/meminfo".to_string())?;
        Ok(Mem {
            total: h.total,
            used: h.used,
        })
    }
}

/// One sample, as published to requests and watchers.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// CPU figures over the last window.
    pub cpu: Result<Cpu, String>,
    /// The whole record at the sample's time (what `/metrics/watch` sends).
    pub record: Result<Metrics, String>,
}

/// Samples until every receiver is gone: a sample `FIRST` after the start,
/// then one every `PERIOD`.
pub async fn run<F: Fs>(probe: Arc<Probe<F>>, tx: watch::Sender<Option<Arc<Sample>>>) {
    let mut prev = probe.cpu().map(|r| (r, Instant::now()));
    let mut last_pct: Option<f64> = None;
    let mut tick = tokio::time::interval_at(Instant::now() + FIRST, PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let cur = probe.cpu();
        let cpu = match (&prev, &cur) {
            (_, Err(e)) => Err(e.clone()),
            (Ok((p, at)), Ok(c)) => {
                if let Some(pct) = usage_pct(&p.counter, &c.counter, now - *at) {
                    last_pct = Some(pct);
                }
                Ok(last_pct.map(|pct| Cpu {
                    count: c.count,
                    pct,
                }))
            }
            (Err(_), Ok(c)) => Ok(last_pct.map(|pct| Cpu {
                count: c.count,
                pct,
            })),
        };
        prev = cur.map(|r| (r, now));
        // Nothing to say until a first window is measured.
        let cpu = match cpu {
            Ok(None) => continue,
            Ok(Some(c)) => Ok(c),
            Err(e) => Err(e),
        };
        let record = match (&cpu, probe.memory()) {
            (Ok(c), Ok(m)) => Ok(Metrics::new(*c, m, now_millis())),
            (Err(e), _) => Err(e.clone()),
            (_, Err(e)) => Err(e),
        };
        if tx.send(Some(Arc::new(Sample { cpu, record }))).is_err() {
            // No receiver left (the monitor is gone).
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::FakeFs;
    use super::*;

    fn cg(usage_ns: u64, capacity: f64) -> Counter {
        Counter::Cgroup {
            usage_ns,
            dir: "/cg".into(),
            capacity,
        }
    }

    #[test]
    fn percentages() {
        let s = Duration::from_secs(1);
        // Half a CPU used of a one-and-a-half CPU limit.
        assert_eq!(
            usage_pct(&cg(0, 1.5), &cg(500_000_000, 1.5), s),
            Some(33.33)
        );
        // Throttling noise above the limit is clamped.
        assert_eq!(
            usage_pct(&cg(0, 0.5), &cg(600_000_000, 0.5), s),
            Some(100.0)
        );
        let other = Counter::Cgroup {
            usage_ns: 9,
            dir: "/other".into(),
            capacity: 1.0,
        };
        assert_eq!(usage_pct(&cg(0, 1.0), &other, s), None);
        let h = |busy, total| Counter::Host(Ticks { busy, total });
        assert_eq!(usage_pct(&h(100, 1000), &h(150, 1200), s), Some(25.0));
        assert_eq!(usage_pct(&h(100, 1000), &h(100, 1000), s), None);
        assert_eq!(usage_pct(&h(0, 0), &cg(1, 1.0), s), None);
    }

    const MOUNTS: &str = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
    const MEMINFO: &str = "MemTotal: 4194304 kB\nMemAvailable: 3145728 kB\n";
    const STAT: &str = "cpu  10 0 10 80 0 0 0 0\ncpu0 5 0 5 40 0 0 0 0\ncpu1 5 0 5 40 0 0 0 0\n";

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("/proc/self/cgroup", "0::/sb\n"),
            ("/proc/self/mountinfo", MOUNTS),
            ("/proc/self/status", "Cpus_allowed_list:\t0-1\n"),
            ("/proc/meminfo", MEMINFO),
            ("/proc/stat", STAT),
        ]
    }

    #[test]
    fn limited_cgroup_figures() {
        let mut files = base();
        files.extend([
            ("/sys/fs/cgroup/sb/cpu.max", "50000 100000\n"),
            ("/sys/fs/cgroup/sb/cpu.stat", "usage_usec 1000\n"),
            ("/sys/fs/cgroup/sb/memory.max", "268435456\n"),
            ("/sys/fs/cgroup/sb/memory.current", "104857600\n"),
            ("/sys/fs/cgroup/sb/memory.stat", "inactive_file 52428800\n"),
        ]);
        let p = Probe::new(FakeFs::new(&files));
        let cpu = p.cpu().unwrap();
        assert_eq!(cpu.count, 1.0);
        assert_eq!(
            cpu.counter,
            cg(1_000_000, 0.5).with_dir("/sys/fs/cgroup/sb")
        );
        assert_eq!(
            p.memory(),
            Ok(Mem {
                total: 256 << 20,
                used: 50 << 20
            })
        );
    }

    #[test]
    fn limits_above_the_host_are_ignored() {
        let mut files = base();
        files.extend([
            ("/sys/fs/cgroup/sb/cpu.max", "800000 100000\n"),
            ("/sys/fs/cgroup/sb/cpu.stat", "usage_usec 1000\n"),
            ("/sys/fs/cgroup/sb/memory.max", "68719476736\n"),
            ("/sys/fs/cgroup/sb/memory.current", "1\n"),
        ]);
        let p = Probe::new(FakeFs::new(&files));
        let cpu = p.cpu().unwrap();
        assert_eq!(cpu.count, 2.0);
        assert_eq!(
            cpu.counter,
            Counter::Host(Ticks {
                busy: 20,
                total: 100
            })
        );
        assert_eq!(
            p.memory(),
            Ok(Mem {
                total: 4 << 30,
                used: 1 << 30
            })
        );
    }

    #[test]
    fn a_quota_of_one_and_a_half_cpus_counts_two() {
        let mut files = base();
        files[2] = ("/proc/self/status", "Cpus_allowed_list:\t0-7\n");
        files[4] = ("/proc/stat", "cpu  1 0 1 8 0 0 0 0\n");
        files.extend([
            ("/sys/fs/cgroup/sb/cpu.max", "150000 100000\n"),
            ("/sys/fs/cgroup/sb/cpu.stat", "usage_usec 1\n"),
        ]);
        let p = Probe::new(FakeFs::new(&files));
        assert_eq!(p.cpu().unwrap().count, 2.0);
    }

    #[test]
    fn host_only_and_errors() {
        let p = Probe::new(FakeFs::new(&base()));
        assert_eq!(p.cpu().unwrap().count, 2.0);
        assert_eq!(p.memory().unwrap().total, 4 << 30);
        let p = Probe::new(FakeFs::new(&[]));
        assert!(p.cpu().unwrap_err().contains("/proc/stat"));
        assert!(p.memory().unwrap_err().contains("/proc/meminfo"));
    }

    #[test]
    fn layout_follows_a_move() {
        let mut files = base();
        files.push(("/sys/fs/cgroup/sb/memory.max", "1048576\n"));
        files.push(("/sys/fs/cgroup/sb/memory.current", "0\n"));
        let fs = FakeFs::new(&files);
        let p = Probe::new(fs.clone());
        assert_eq!(p.memory().unwrap().total, 1 << 20);
        fs.set("/proc/self/cgroup", "0::/\n");
        assert_eq!(p.memory().unwrap().total, 4 << 30);
    }

    impl Counter {
        fn with_dir(self, d: &str) -> Self {
            match self {
                Counter::Cgroup {
                    usage_ns, capacity, ..
                } => Counter::Cgroup {
                    usage_ns,
                    dir: d.into(),
                    capacity,
                },
                h => h,
            }
        }
    }

    #[tokio::test]
    async fn samples_and_publishes() {
        let fs = FakeFs::new(&base());
        let probe = Arc::new(Probe::new(fs.clone()));
        let (tx, mut rx) = watch::channel(None);
        tokio::spawn(run(probe, tx));
        // Let the sampler take its baseline first.
        tokio::time::sleep(Duration::from_millis(20)).await;
        fs.set(
            "/proc/stat",
            "cpu  60 0 10 130 0 0 0 0\ncpu0 30 0 5 65 0 0 0 0\ncpu1 30 0 5 65 0 0 0 0\n",
        );
        rx.changed().await.unwrap();
        let s = rx.borrow_and_update().clone().unwrap();
        assert_eq!(
            s.cpu,
            Ok(Cpu {
                count: 2.0,
                pct: 50.0
            })
        );
        let m = s.record.clone().unwrap();
        assert_eq!((m.cpu_count, m.cpu_used_pct), (2.0, 50.0));
        assert_eq!((m.mem_total_mib, m.mem_used_mib), (4096.0, 1024.0));
        // Nothing changes: the last percentage is kept.
        rx.changed().await.unwrap();
        let s = rx.borrow_and_update().clone().unwrap();
        assert_eq!(s.cpu.clone().unwrap().pct, 50.0);
    }
}
