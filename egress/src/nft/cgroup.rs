//! Finding egress's own cgroup v2 (level and id), which the ruleset uses to
//! let egress's own sockets through: a process in the sandbox cannot move
//! itself into another container's cgroup.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// The cgroup v2 mount point, from mountinfo.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// The cgroup v2 path from `/proc/self/cgroup` (the `0::` line).
fn cgroup2_path(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// The id (inode) of the calling process's cgroup v2 as this process sees
/// it (inside a cgroup namespace, the container's own cgroup), or None when
/// cgroup v2 is not mounted.
pub fn own_id() -> Option<u64> {
    let path = cgroup2_path(&std::fs::read_to_string("/proc/self/cgroup").ok()?)?;
    let mount = cgroup2_mount(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)?;
    let rel = path.trim_start_matches('/');
    Some(std::fs::metadata(mount.join(rel)).ok()?.ino())
}

/// The calling process's cgroup v2 as (level, id): the level is found by
/// [`super::probe_cgroup_level`], because a cgroup namespace hides it.
pub fn own() -> Option<(u32, u64)> {
    let id = own_id()?;
    let level = super::probe_cgroup_level(id)?;
    Some((level, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let mi = "25 30 0:22 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                  35 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_path("4:memory:/x\n0::/a/b\n").as_deref(),
            Some("/a/b")
        );
    }
}
