//! Host figures, the fallback when no cgroup limit applies: CPU time from
//! `/proc/stat` (only the CPUs execd may run on), memory from
//! `/proc/meminfo`, the usable CPUs from `Cpus_allowed_list` in
//! `/proc/self/status` (the `sched_getaffinity` mask).

/// Busy and total CPU time of some CPUs, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticks {
    /// Time not idle and not waiting for I/O.
    pub busy: u64,
    /// All time.
    pub total: u64,
}

/// Host memory in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `MemTotal`.
    pub total: u64,
    /// `MemTotal - MemAvailable` (or, on kernels without `MemAvailable`,
    /// total minus free, buffers and page cache).
    pub used: u64,
}

/// A kernel CPU list (`0-3,8,10-11`).
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a || b - a > 1 << 16 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// The CPUs a process may run on, from its `/proc/<pid>/status`.
pub fn parse_allowed_cpus(status: &str) -> Option<Vec<usize>> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(parse_cpu_list)
}

/// Ticks of one `cpu` line's fields: user nice system idle iowait irq
/// softirq steal (guest time is already part of user and nice).
fn ticks(fields: &[u64]) -> Ticks {
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Ticks {
        busy: total.saturating_sub(idle),
        total,
    }
}

/// CPU time from `/proc/stat`: summed over `cpus` when all of them are
/// listed, else the all-CPU line.
pub fn parse_proc_stat(text: &str, cpus: Option<&[usize]>) -> Option<Ticks> {
    let mut all = None;
    let mut per_cpu = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(name) = f.next() else { continue };
        let Some(id) = name.strip_prefix("cpu") else {
            continue;
        };
        let fields: Vec<u64> = f.map_while(|v| v.parse().ok()).collect();
        if fields.len() < 4 {
            continue;
        }
        if id.is_empty() {
            all = Some(ticks(&fields));
        } else if let Ok(n) = id.parse::<usize>() {
            per_cpu.push((n, ticks(&fields)));
        }
    }
    if let Some(cpus) = cpus {
        let picked: Vec<Ticks> = cpus
            .iter()
            .filter_map(|c| per_cpu.iter().find(|(n, _)| n == c).map(|(_, t)| *t))
            .collect();
        if !picked.is_empty() && picked.len() == cpus.len() {
            return Some(Ticks {
                busy: picked.iter().map(|t| t.busy).sum(),
                total: picked.iter().map(|t| t.total).sum(),
            });
        }
    }
    all
}

/// Host memory from `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Option<Memory> {
    let kib = |key: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    let total = kib("MemTotal")?;
    let available = kib("MemAvailable").unwrap_or_else(|| {
        kib("MemFree").unwrap_or(0)
            + kib("Buffers").unwrap_or(0)
            + kib("Cached").unwrap_or(0)
            + kib("SReclaimable").unwrap_or(0)
    });
    Some(Memory {
        total: total.saturating_mul(1024),
        used: total.saturating_sub(available).saturating_mul(1024),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "\
cpu  1000 10 300 5000 200 0 40 0 0 0
cpu0 600 5 200 2000 100 0 20 0 0 0
cpu1 400 5 100 3000 100 0 20 0 0 0
intr 12345 0 0
ctxt 999
";

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0,2-4,7"), Some(vec![0, 2, 3, 4, 7]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        let status = "Name:\texecd\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1\n";
        assert_eq!(parse_allowed_cpus(status), Some(vec![0, 1]));
        assert_eq!(parse_allowed_cpus("Name: x\n"), None);
    }

    #[test]
    fn proc_stat() {
        // All CPUs: total 6550, idle 5000 + iowait 200.
        let all = Ticks {
            busy: 1350,
            total: 6550,
        };
        assert_eq!(parse_proc_stat(STAT, None), Some(all));
        assert_eq!(parse_proc_stat(STAT, Some(&[0, 1])), Some(all));
        assert_eq!(
            parse_proc_stat(STAT, Some(&[1])),
            Some(Ticks {
                busy: 525,
                total: 3625
            })
        );
        // A CPU missing from the file: the all-CPU line.
        assert_eq!(parse_proc_stat(STAT, Some(&[1, 5])), Some(all));
        assert_eq!(parse_proc_stat("intr 1\n", None), None);
    }

    #[test]
    fn meminfo() {
        let m = "MemTotal:       24684092 kB\nMemFree:        16727384 kB\n\
                 MemAvailable:   21346020 kB\nBuffers:           61352 kB\n";
        assert_eq!(
            parse_meminfo(m),
            Some(Memory {
                total: 24_684_092 * 1024,
                used: (24_684_092 - 21_346_020) * 1024,
            })
        );
        // Old kernels: no MemAvailable.
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n";
        assert_eq!(
            parse_meminfo(old),
            Some(Memory {
                total: 1000 * 1024,
                used: 600 * 1024
            })
        );
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
    }
}
