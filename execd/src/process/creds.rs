//! uid/gid switching the way upstream does it: a uid alone takes the user's
//! primary group and supplementary groups from `/etc/passwd` and
//! `/etc/group`; an unknown uid gets gid 0 and no supplementary groups.

/// Credentials a child switches to before exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (setgroups is always applied, also when empty).
    pub groups: Vec<u32>,
}

/// Resolves credentials for `uid` and an optional `gid` override from the
/// contents of `/etc/passwd` and `/etc/group`.
pub fn resolve(uid: u32, gid: Option<u32>, passwd: &str, group: &str) -> Credentials {
    let user = passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 4 && f[2].parse::<u32>().ok() == Some(uid))
            .then(|| (f[0].to_string(), f[3].parse::<u32>().unwrap_or(0)))
    });
    let (name, primary) = match &user {
        Some((n, g)) => (Some(n.as_str()), *g),
        None => (None, 0),
    };
    let mut groups = Vec::new();
    if let Some(name) = name {
        groups.push(primary);
        for line in group.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 4 && f[3].split(',').any(|m| m == name) {
                if let Ok(g) = f[2].parse::<u32>() {
                    if !groups.contains(&g) {
                        groups.push(g);
                    }
                }
            }
        }
    }
    Credentials {
        uid,
        gid: gid.unwrap_or(primary),
        groups,
    }
}

/// Resolves credentials against this system's `/etc/passwd` and `/etc/group`.
pub fn resolve_system(uid: u32, gid: Option<u32>) -> Credentials {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    resolve(uid, gid, &passwd, &group)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nalice:x:1000:\ndocker:x:999:alice,bob\nwheel:x:10:bob\n";

    #[test]
    fn known_user_gets_groups() {
        let c = resolve(1000, None, PASSWD, GROUP);
        assert_eq!(
            c,
            Credentials {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 999]
            }
        );
    }

    #[test]
    fn gid_override() {
        assert_eq!(resolve(1000, Some(5), PASSWD, GROUP).gid, 5);
    }

    #[test]
    fn unknown_user_gets_root_group() {
        let c = resolve(4242, None, PASSWD, GROUP);
        assert_eq!(
            c,
            Credentials {
                uid: 4242,
                gid: 0,
                groups: vec![]
            }
        );
    }
}
