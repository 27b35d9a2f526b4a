//! The sandbox's cgroup: where it is (`/proc/self/cgroup` and
//! `/proc/self/mountinfo`), its CPU and memory limits and its usage, for
//! cgroup v1 and v2. Parsers take file contents; [`Layout`] reads through an
//! [`Fs`], so the whole logic is tested with file contents in memory.
//!
//! A limit set on any ancestor (up to the mount's root, which is all a
//! container sees) binds: the tightest one counts, and usage is read where
//! it is set, so it covers every process under that limit (execd, the
//! commands it started and any sibling cgroups of the sandbox).

use std::path::{Path, PathBuf};

use super::Fs;

/// v1 memory limits at or above this mean "no limit" (the kernel's
/// unlimited value is `PAGE_COUNTER_MAX` pages, about 2^63 bytes).
const V1_UNLIMITED: u64 = 1 << 62;

/// One cgroup on the way from execd's own cgroup up to the mount's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level {
    /// The cgroup's path as `/proc/self/cgroup` writes it (`/docker/abc`).
    pub cgroup: String,
    /// Its directory.
    pub dir: PathBuf,
}

/// The cgroups of one hierarchy that execd is in: its own first, the mount's
/// root last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// cgroup v2 (unified) files, else v1.
    pub v2: bool,
    /// Own cgroup first.
    pub levels: Vec<Level>,
}

/// Where execd's CPU and memory cgroups are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// The hierarchy holding CPU limits (v1 `cpu`, or v2).
    pub cpu: Option<Chain>,
    /// The hierarchy holding CPU usage (v1 `cpuacct`, or v2).
    pub cpuacct: Option<Chain>,
    /// The hierarchy holding memory limits and usage (v1 `memory`, or v2).
    pub memory: Option<Chain>,
}

/// A limit and the level where it is set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound<T> {
    /// The limit.
    pub limit: T,
    /// Index in [`Chain::levels`].
    pub level: usize,
}

/// One line of `/proc/self/cgroup`: `id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Hierarchy id (`0` for v2).
    pub id: String,
    /// Controllers of the hierarchy (empty for v2).
    pub controllers: Vec<String>,
    /// Path of the cgroup within the hierarchy.
    pub path: String,
}

/// One cgroup mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The cgroup mounted there (`/` unless only a subtree is visible).
    pub root: String,
    /// Where it is mounted.
    pub point: PathBuf,
    /// `cgroup2`, else v1.
    pub v2: bool,
    /// v1 controllers (and `name=...`) from the super options.
    pub controllers: Vec<String>,
}

/// Parses `/proc/self/cgroup`.
pub fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let id = parts.next()?.trim();
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(Membership {
                id: id.to_string(),
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(String::from)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses the cgroup mounts of `/proc/self/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let (root, point) = (f.get(3)?, f.get(4)?);
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let _source = r.next();
            let opts = r.next().unwrap_or("");
            let v2 = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            Some(Mount {
                root: unescape(root),
                point: PathBuf::from(unescape(point)),
                v2,
                controllers: if v2 {
                    Vec::new()
                } else {
                    opts.split(',').map(String::from).collect()
                },
            })
        })
        .collect()
}

/// The chain from `path` up to `mount`'s root, or None when the cgroup is
/// not below what is mounted.
fn chain(mount: &Mount, path: &str, v2: bool) -> Option<Chain> {
    let comps = |s: &str| -> Option<Vec<String>> {
        let v: Vec<String> = s
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(String::from)
            .collect();
        (!v.iter().any(|c| c == "..")).then_some(v)
    };
    let root = comps(&mount.root)?;
    let own = comps(path)?;
    let below = own.strip_prefix(root.as_slice())?;
    let mut levels = Vec::with_capacity(below.len() + 1);
    for depth in (0..=below.len()).rev() {
        let mut dir = mount.point.clone();
        dir.extend(&below[..depth]);
        let cg: Vec<&str> = root
            .iter()
            .chain(&below[..depth])
            .map(String::as_str)
            .collect();
        levels.push(Level {
            cgroup: format!("/{}", cg.join("/")),
            dir,
        });
    }
    Some(Chain { v2, levels })
}

impl Layout {
    /// Finds execd's cgroups from `/proc/self/cgroup` and
    /// `/proc/self/mountinfo`. A controller bound to a v1 hierarchy is read
    /// there; otherwise from the v2 hierarchy if one is mounted.
    pub fn discover(proc_cgroup: &str, mountinfo: &str) -> Self {
        let members = parse_proc_cgroup(proc_cgroup);
        let mounts = parse_mountinfo(mountinfo);
        let v1 = |controller: &str| -> Option<Option<Chain>> {
            let m = members
                .iter()
                .find(|m| m.controllers.iter().any(|c| c == controller))?;
            let found = mounts
                .iter()
                .filter(|mt| !mt.v2 && mt.controllers.iter().any(|c| c == controller))
                .find_map(|mt| chain(mt, &m.path, false));
            // Bound to v1, even if that hierarchy is not visible here.
            Some(found)
        };
        let v2 = || -> Option<Chain> {
            let m = members
                .iter()
                .find(|m| m.id == "0" && m.controllers.is_empty())?;
            mounts
                .iter()
                .filter(|mt| mt.v2)
                .find_map(|mt| chain(mt, &m.path, true))
        };
        let pick = |controller: &str| v1(controller).unwrap_or_else(v2);
        Self {
            cpu: pick("cpu"),
            cpuacct: pick("cpuacct"),
            memory: pick("memory"),
        }
    }

    /// The tightest CPU limit, in CPUs.
    pub fn cpu_limit(&self, fs: &impl Fs) -> Option<Bound<f64>> {
        let chain = self.cpu.as_ref()?;
        tightest(chain, |dir| {
            if chain.v2 {
                parse_cpu_max(&fs.read(&dir.join("cpu.max"))?)
            } else {
                parse_cfs(
                    &fs.read(&dir.join("cpu.cfs_quota_us"))?,
                    &fs.read(&dir.join("cpu.cfs_period_us"))?,
                )
            }
        })
    }

    /// CPU time used by the cgroup where `at` (a CPU limit) is set, or by
    /// execd's own cgroup, in nanoseconds; with the directory it was read from.
    pub fn cpu_usage(&self, fs: &impl Fs, at: Option<usize>) -> Option<(u64, PathBuf)> {
        let cgroup = at
            .and_then(|i| self.cpu.as_ref()?.levels.get(i))
            .map(|l| l.cgroup.clone());
        let chain = self.cpuacct.as_ref()?;
        let level = cgroup
            .and_then(|cg| chain.levels.iter().find(|l| l.cgroup == cg))
            .or_else(|| chain.levels.first())?;
        let ns = if chain.v2 {
            parse_cpu_stat_usec(&fs.read(&level.dir.join("cpu.stat"))?)?.checked_mul(1000)?
        } else {
            parse_u64(&fs.read(&level.dir.join("cpuacct.usage"))?)?
        };
        Some((ns, level.dir.clone()))
    }

    /// The tightest memory limit, in bytes.
    pub fn memory_limit(&self, fs: &impl Fs) -> Option<Bound<u64>> {
        let chain = self.memory.as_ref()?;
        tightest(chain, |dir| {
            if chain.v2 {
                parse_memory_max(&fs.read(&dir.join("memory.max"))?)
            } else {
                parse_v1_limit(&fs.read(&dir.join("memory.limit_in_bytes"))?)
            }
        })
    }

    /// Memory in use (the working set: usage minus inactive file cache, as
    /// `docker stats` and the kubelet count it) at a level, in bytes.
    pub fn memory_used(&self, fs: &impl Fs, level: usize) -> Option<u64> {
        let chain = self.memory.as_ref()?;
        let dir = &chain.levels.get(level)?.dir;
        let stat = fs.read(&dir.join("memory.stat")).unwrap_or_default();
        if chain.v2 {
            let usage = parse_u64(&fs.read(&dir.join("memory.current"))?)?;
            Some(usage.saturating_sub(stat_field(&stat, "inactive_file").unwrap_or(0)))
        } else {
            let usage = parse_u64(&fs.read(&dir.join("memory.usage_in_bytes"))?)?;
            let inactive = stat_field(&stat, "total_inactive_file")
                .or_else(|| stat_field(&stat, "inactive_file"))
                .unwrap_or(0);
            Some(usage.saturating_sub(inactive))
        }
    }
}

/// The smallest limit along the chain; the outermost level on a tie.
fn tightest<T: PartialOrd + Copy>(
    chain: &Chain,
    limit_at: impl Fn(&Path) -> Option<T>,
) -> Option<Bound<T>> {
    let mut best: Option<Bound<T>> = None;
    for (level, l) in chain.levels.iter().enumerate() {
        if let Some(limit) = limit_at(&l.dir) {
            if best.is_none_or(|b| limit <= b.limit) {
                best = Some(Bound { limit, level });
            }
        }
    }
    best
}

/// A decimal integer file.
pub fn parse_u64(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// v2 `cpu.max` (`"50000 100000"` or `"max 100000"`): CPUs, None when unlimited.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut f = text.split_whitespace();
    let quota = f.next()?;
    let period: f64 = f.next().map_or(Some(100_000.0), |p| p.parse().ok())?;
    if quota == "max" {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`: CPUs, None when unlimited (`-1`).
pub fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: i64 = period.trim().parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// `usage_usec` of v2 `cpu.stat`.
pub fn parse_cpu_stat_usec(text: &str) -> Option<u64> {
    stat_field(text, "usage_usec")
}

/// v2 `memory.max`: bytes, None when `max`.
pub fn parse_memory_max(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => None,
        v => v.parse().ok(),
    }
}

/// v1 `memory.limit_in_bytes`: bytes, None when unlimited.
pub fn parse_v1_limit(text: &str) -> Option<u64> {
    parse_u64(text).filter(|&v| v < V1_UNLIMITED)
}

/// A `key value` line of a stat file (`memory.stat`, `cpu.stat`).
pub fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::FakeFs;
    use super::*;

    const V1_CGROUP: &str = "12:pids:/docker/abc\n\
        5:memory:/docker/abc\n\
        4:cpu,cpuacct:/docker/abc\n\
        1:name=systemd:/docker/abc\n\
        0::/system.slice/containerd.service\n";

    /// A v1 container without a cgroup namespace: the mounts show only its subtree.
    const V1_MOUNTINFO: &str = "\
        600 500 0:50 / / rw,relatime master:1 - overlay overlay rw\n\
        610 600 0:60 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n\
        611 610 0:30 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,nosuid master:12 - cgroup cgroup rw,cpu,cpuacct\n\
        612 610 0:31 /docker/abc /sys/fs/cgroup/memory ro,nosuid master:13 - cgroup cgroup rw,memory\n\
        613 610 0:32 /docker/abc /sys/fs/cgroup/pids ro - cgroup cgroup rw,pids\n";

    const V2_CGROUP: &str = "0::/sandbox/execd\n";
    const V2_MOUNTINFO: &str = "\
        25 1 253:1 / / rw - ext4 /dev/vda1 rw\n\
        30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn parses_proc_cgroup_and_mountinfo() {
        let m = parse_proc_cgroup(V1_CGROUP);
        assert_eq!(m.len(), 5);
        assert_eq!(m[2].controllers, ["cpu", "cpuacct"]);
        assert_eq!(m[4].id, "0");
        assert!(m[4].controllers.is_empty());
        let mounts = parse_mountinfo(V1_MOUNTINFO);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[0].root, "/docker/abc");
        assert_eq!(mounts[0].point, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert!(mounts[0].controllers.iter().any(|c| c == "cpuacct"));
        let m = parse_mountinfo(r"1 0 0:1 / /a\040b rw - cgroup2 none rw");
        assert_eq!(m[0].point, PathBuf::from("/a b"));
        assert!(m[0].v2);
    }

    #[test]
    fn v1_container_limits_and_usage() {
        let l = Layout::discover(V1_CGROUP, V1_MOUNTINFO);
        let cpu = l.cpu.clone().unwrap();
        assert!(!cpu.v2);
        assert_eq!(cpu.levels.len(), 1);
        assert_eq!(
            cpu.levels[0].dir,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(cpu.levels[0].cgroup, "/docker/abc");
        let fs = FakeFs::new(&[
            ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "150000\n"),
            ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
            ("/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage", "123456789\n"),
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "536870912\n"),
            ("/sys/fs/cgroup/memory/memory.usage_in_bytes", "209715200\n"),
            (
                "/sys/fs/cgroup/memory/memory.stat",
                "cache 1000\ninactive_file 5\ntotal_inactive_file 104857600\n",
            ),
        ]);
        assert_eq!(
            l.cpu_limit(&fs),
            Some(Bound {
                limit: 1.5,
                level: 0
            })
        );
        assert_eq!(
            l.cpu_usage(&fs, Some(0)),
            Some((123_456_789, "/sys/fs/cgroup/cpu,cpuacct".into()))
        );
        assert_eq!(
            l.memory_limit(&fs),
            Some(Bound {
                limit: 512 << 20,
                level: 0
            })
        );
        assert_eq!(l.memory_used(&fs, 0), Some(100 << 20));
    }

    #[test]
    fn v1_unlimited() {
        let l = Layout::discover(V1_CGROUP, V1_MOUNTINFO);
        let fs = FakeFs::new(&[
            ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n"),
            ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
        ]);
        assert_eq!(l.cpu_limit(&fs), None);
        assert_eq!(l.memory_limit(&fs), None);
    }

    #[test]
    fn v1_separate_hierarchies_full_tree_visible() {
        // As on a host (or this VM): cpu and cpuacct mounted apart, the whole tree visible.
        let cg = "4:memory:/sandboxes/s1\n2:cpuacct:/sandboxes/s1\n1:cpu:/sandboxes/s1\n0::/\n";
        let mi = "\
            32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
            33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n\
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let l = Layout::discover(cg, mi);
        let cpu = l.cpu.clone().unwrap();
        let dirs: Vec<_> = cpu.levels.iter().map(|l| l.dir.clone()).collect();
        assert_eq!(
            dirs,
            [
                PathBuf::from("/sys/fs/cgroup/cpu/sandboxes/s1"),
                "/sys/fs/cgroup/cpu/sandboxes".into(),
                "/sys/fs/cgroup/cpu".into()
            ]
        );
        // The limit is on the parent: usage is read there, in the cpuacct hierarchy.
        let fs = FakeFs::new(&[
            ("/sys/fs/cgroup/cpu/sandboxes/s1/cpu.cfs_quota_us", "-1"),
            (
                "/sys/fs/cgroup/cpu/sandboxes/s1/cpu.cfs_period_us",
                "100000",
            ),
            ("/sys/fs/cgroup/cpu/sandboxes/cpu.cfs_quota_us", "50000"),
            ("/sys/fs/cgroup/cpu/sandboxes/cpu.cfs_period_us", "100000"),
            ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1"),
            ("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000"),
            ("/sys/fs/cgroup/cpuacct/sandboxes/s1/cpuacct.usage", "10"),
            ("/sys/fs/cgroup/cpuacct/sandboxes/cpuacct.usage", "20"),
        ]);
        let b = l.cpu_limit(&fs).unwrap();
        assert_eq!(
            b,
            Bound {
                limit: 0.5,
                level: 1
            }
        );
        assert_eq!(
            l.cpu_usage(&fs, Some(b.level)),
            Some((20, "/sys/fs/cgroup/cpuacct/sandboxes".into()))
        );
        // Without a limit, execd's own cgroup.
        assert_eq!(l.cpu_usage(&fs, None).map(|u| u.0), Some(10));
    }

    #[test]
    fn v2_nested_limits() {
        let l = Layout::discover(V2_CGROUP, V2_MOUNTINFO);
        let mem = l.memory.clone().unwrap();
        assert!(mem.v2);
        assert_eq!(mem.levels.len(), 3);
        assert_eq!(
            mem.levels[0].dir,
            PathBuf::from("/sys/fs/cgroup/sandbox/execd")
        );
        assert_eq!(mem.levels[2].dir, PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(l.cpu, l.cpuacct);
        let fs = FakeFs::new(&[
            ("/sys/fs/cgroup/sandbox/execd/cpu.max", "max 100000\n"),
            ("/sys/fs/cgroup/sandbox/cpu.max", "250000 100000\n"),
            ("/sys/fs/cgroup/sandbox/execd/cpu.stat", "usage_usec 7\n"),
            (
                "/sys/fs/cgroup/sandbox/cpu.stat",
                "usage_usec 2000\nuser_usec 1500\nsystem_usec 500\n",
            ),
            ("/sys/fs/cgroup/sandbox/execd/memory.max", "max\n"),
            ("/sys/fs/cgroup/sandbox/memory.max", "1073741824\n"),
            ("/sys/fs/cgroup/sandbox/memory.current", "314572800\n"),
            (
                "/sys/fs/cgroup/sandbox/memory.stat",
                "anon 1\nactive_file 2\ninactive_file 104857600\n",
            ),
        ]);
        let cpu = l.cpu_limit(&fs).unwrap();
        assert_eq!(
            cpu,
            Bound {
                limit: 2.5,
                level: 1
            }
        );
        assert_eq!(l.cpu_usage(&fs, Some(1)).map(|u| u.0), Some(2_000_000));
        let mem = l.memory_limit(&fs).unwrap();
        assert_eq!(
            mem,
            Bound {
                limit: 1 << 30,
                level: 1
            }
        );
        assert_eq!(l.memory_used(&fs, 1), Some(200 << 20));
    }

    #[test]
    fn v2_unlimited_and_root() {
        // A cgroup namespace: execd at the root of what it sees, no limits.
        let l = Layout::discover("0::/\n", V2_MOUNTINFO);
        let fs = FakeFs::new(&[
            ("/sys/fs/cgroup/cpu.max", "max 100000\n"),
            ("/sys/fs/cgroup/memory.max", "max\n"),
            ("/sys/fs/cgroup/cpu.stat", "usage_usec 5\n"),
        ]);
        assert_eq!(l.cpu_limit(&fs), None);
        assert_eq!(l.memory_limit(&fs), None);
        assert_eq!(l.cpu_usage(&fs, None).map(|u| u.0), Some(5000));
    }

    #[test]
    fn hybrid_prefers_v1_controllers() {
        let cg = "4:memory:/\n1:cpu,cpuacct:/\n0::/\n";
        let mi = "\
            32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let l = Layout::discover(cg, mi);
        assert!(!l.cpu.as_ref().unwrap().v2);
        // memory is bound to v1 but not mounted here: no memory cgroup at all.
        assert_eq!(l.memory, None);
    }

    #[test]
    fn no_cgroups_or_outside_the_mount() {
        assert_eq!(Layout::discover("", ""), Layout::default());
        // Moved outside the namespace's root: not readable.
        let l = Layout::discover("0::/../other\n", V2_MOUNTINFO);
        assert_eq!(l.memory, None);
        let mi = "30 25 0:26 /a /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(Layout::discover("0::/b/c\n", mi).memory, None);
    }

    #[test]
    fn limit_parsers() {
        assert_eq!(parse_cpu_max("max 100000"), None);
        assert_eq!(parse_cpu_max("max"), None);
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("200000"), Some(2.0));
        assert_eq!(parse_cpu_max("garbage 1"), None);
        assert_eq!(parse_cfs("-1", "100000"), None);
        assert_eq!(parse_cfs("25000\n", "100000\n"), Some(0.25));
        assert_eq!(parse_cfs("1", "0"), None);
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("268435456\n"), Some(256 << 20));
        assert_eq!(parse_v1_limit("9223372036854771712"), None);
        assert_eq!(parse_v1_limit("268435456"), Some(256 << 20));
        assert_eq!(
            stat_field("usage_usec 12\nuser_usec 3", "user_usec"),
            Some(3)
        );
        assert_eq!(stat_field("usage_usec 12", "usage"), None);
    }
}
