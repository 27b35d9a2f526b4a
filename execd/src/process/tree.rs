//! Finding and killing every process of a command, from `/proc`.
//!
//! A process is identified by its pid and start time, so a recycled pid is
//! never signalled. Killing freezes the tree with SIGSTOP until a walk finds
//! nothing new (nothing frozen can fork), then sends SIGKILL to all of it.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// A process: pid and start time (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Proc {
    /// Process id.
    pub pid: i32,
    /// Start time, field 22 of `/proc/<pid>/stat`.
    pub start: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    ppid: i32,
    start: u64,
    zombie: bool,
}

/// Parses `/proc/<pid>/stat` into (state, ppid, starttime).
fn parse_stat(stat: &str) -> Option<(char, i32, u64)> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // rest starts at field 3 (state): state=0, ppid=1, starttime=19.
    Some((
        f.first()?.chars().next()?,
        f.get(1)?.parse().ok()?,
        f.get(19)?.parse().ok()?,
    ))
}

fn snapshot() -> HashMap<i32, Entry> {
    let mut map = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return map;
    };
    for ent in dir.flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some((state, ppid, start)) = parse_stat(&stat) {
                map.insert(
                    pid,
                    Entry {
                        ppid,
                        start,
                        zombie: state == 'Z' || state == 'X',
                    },
                );
            }
        }
    }
    map
}

/// The identity of a live process, if `pid` exists.
pub fn identify(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, _, start) = parse_stat(&stat)?;
    Some(Proc { pid, start })
}

/// Whether the kernel lists children in `/proc/<pid>/task/<tid>/children`.
fn children_files() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| std::path::Path::new("/proc/thread-self/children").exists())
}

/// Children of `pid`, from the children files of all its threads.
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
}

fn stat_of(pid: i32) -> Option<Entry> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (state, ppid, start) = parse_stat(&stat)?;
    Some(Entry {
        ppid,
        start,
        zombie: state == 'Z' || state == 'X',
    })
}

/// `roots` that are still alive, with all their live descendants.
fn collect(roots: &HashSet<Proc>) -> HashSet<Proc> {
    if !children_files() {
        return collect_from(&snapshot(), roots);
    }
    // Walk down from the roots only: no scan of every process on the host.
    let mut out = HashSet::new();
    let mut stack: Vec<Proc> = roots
        .iter()
        .filter(|r| stat_of(r.pid).is_some_and(|e| e.start == r.start))
        .copied()
        .collect();
    while let Some(p) = stack.pop() {
        let Some(e) = stat_of(p.pid) else { continue };
        if e.start != p.start || !out.insert(p) {
            continue;
        }
        for c in children_of(p.pid) {
            if let Some(ce) = stat_of(c) {
                stack.push(Proc {
                    pid: c,
                    start: ce.start,
                });
            }
        }
    }
    out.retain(|p| stat_of(p.pid).is_some_and(|e| !e.zombie));
    out
}

/// `roots` that are still alive, with all their live descendants, from a
/// snapshot of every process.
fn collect_from(procs: &HashMap<i32, Entry>, roots: &HashSet<Proc>) -> HashSet<Proc> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (pid, e) in procs {
        children.entry(e.ppid).or_default().push(*pid);
    }
    let mut out = HashSet::new();
    let mut stack: Vec<i32> = roots
        .iter()
        .filter(|r| procs.get(&r.pid).is_some_and(|e| e.start == r.start))
        .map(|r| r.pid)
        .collect();
    while let Some(pid) = stack.pop() {
        let Some(e) = procs.get(&pid) else { continue };
        if !out.insert(Proc {
            pid,
            start: e.start,
        }) {
            continue;
        }
        if let Some(c) = children.get(&pid) {
            stack.extend(c.iter().copied());
        }
    }
    out.retain(|p| procs.get(&p.pid).is_some_and(|e| !e.zombie));
    out
}

/// Live descendants of `root` (not including `root`).
pub fn descendants(root: Proc) -> HashSet<Proc> {
    let mut set = collect(&HashSet::from([root]));
    set.remove(&root);
    set
}

/// Freezes and kills `roots` and every live descendant of them. Returns how
/// many processes were killed.
pub fn kill_now(roots: &HashSet<Proc>) -> usize {
    let mut frozen: HashSet<Proc> = HashSet::new();
    for _ in 0..64 {
        let found = collect(&roots.iter().chain(frozen.iter()).copied().collect());
        let new: Vec<Proc> = found.difference(&frozen).copied().collect();
        if new.is_empty() {
            break;
        }
        for p in new {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGSTOP);
            frozen.insert(p);
        }
    }
    for p in &frozen {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
    }
    frozen.len()
}

/// Ends a command's tree gracefully: SIGTERM to the tree and the leader's
/// process group, then, if anything is left after `grace`, [`kill_now`].
/// Processes seen during the grace period are remembered, so those whose
/// parent died (and were reparented away from the tree) are still killed.
pub async fn terminate(leader: Proc, grace: Duration) {
    let mut seen: HashSet<Proc> = HashSet::from([leader]);
    let deadline = Instant::now() + grace;
    let mut signalled: HashSet<Proc> = HashSet::new();
    let mut first = true;
    loop {
        // Walk before signalling: once the leader dies, its orphans are
        // reparented away from the tree and only this memory finds them.
        let live = collect(&seen);
        if live.is_empty() {
            return;
        }
        seen.extend(live.iter().copied());
        if first {
            let _ = killpg(Pid::from_raw(leader.pid), Signal::SIGTERM);
            first = false;
        }
        for p in &live {
            if signalled.insert(*p) {
                let _ = kill(Pid::from_raw(p.pid), Signal::SIGTERM);
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = killpg(Pid::from_raw(leader.pid), Signal::SIGKILL);
    kill_now(&seen);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let stat = "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 100 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(('S', 1, 98765)));
    }

    #[test]
    fn finds_own_process() {
        let me = identify(i32::try_from(std::process::id()).unwrap()).unwrap();
        assert!(me.start > 0);
    }
}
