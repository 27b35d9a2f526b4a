//! Applying `{"owner","group","mode"}` to a path: upstream's `ChmodFile`,
//! with names resolved to ids (numeric strings accepted when no such name
//! exists) and every mode bit the caller asked for applied.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::unistd::{Group, User};
use serde::Deserialize;

use super::info::mode_from_wire;
use super::FileError;

/// Requested ownership and mode; absent or zero fields are left unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Perms {
    /// User name (or uid) of the new owner.
    pub owner: Option<String>,
    /// Group name (or gid).
    pub group: Option<String>,
    /// Mode as octal digits in a decimal number (755); 0 means unchanged.
    pub mode: Option<u32>,
}

/// [`Perms`] resolved to numbers, ready to apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resolved {
    /// uid to set.
    pub uid: Option<u32>,
    /// gid to set.
    pub gid: Option<u32>,
    /// Mode bits (0o7777 at most) to set.
    pub mode: Option<u32>,
}

impl Perms {
    /// Resolves names and checks the mode; bad values are [`FileError::Invalid`].
    pub fn resolve(&self) -> Result<Resolved, FileError> {
        let mode = match self.mode {
            None | Some(0) => None,
            Some(m) => Some(mode_from_wire(m).ok_or_else(|| {
                FileError::Invalid(format!(
                    "invalid mode {m}: expected octal digits such as 755 or 4755"
                ))
            })?),
        };
        let uid = match self.owner.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(name) => Some(match User::from_name(name) {
                Ok(Some(u)) => u.uid.as_raw(),
                _ => name
                    .parse()
                    .map_err(|_| FileError::Invalid(format!("unknown user '{name}'")))?,
            }),
        };
        let gid = match self.group.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(name) => Some(match Group::from_name(name) {
                Ok(Some(g)) => g.gid.as_raw(),
                _ => name
                    .parse()
                    .map_err(|_| FileError::Invalid(format!("unknown group '{name}'")))?,
            }),
        };
        Ok(Resolved { uid, gid, mode })
    }
}

impl Resolved {
    /// Whether there is nothing to change.
    pub fn is_noop(&self) -> bool {
        *self == Self::default()
    }

    /// Applies ownership, then mode (chown clears set-id bits, so mode goes last).
    pub fn apply(&self, path: &Path) -> std::io::Result<()> {
        if self.uid.is_some() || self.gid.is_some() {
            std::os::unix::fs::chown(path, self.uid, self.gid)?;
        }
        if let Some(mode) = self.mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }

    /// Like [`Resolved::apply`], on an open file.
    pub fn apply_to(&self, file: &std::fs::File) -> std::io::Result<()> {
        if self.uid.is_some() || self.gid.is_some() {
            std::os::unix::fs::fchown(file, self.uid, self.gid)?;
        }
        if let Some(mode) = self.mode {
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_numbers_and_modes() {
        let p = Perms {
            owner: Some("root".into()),
            group: Some("0".into()),
            mode: Some(644),
        };
        assert_eq!(
            p.resolve().unwrap(),
            Resolved {
                uid: Some(0),
                gid: Some(0),
                mode: Some(0o644)
            }
        );
        let none = Perms {
            owner: Some(String::new()),
            mode: Some(0),
            ..Perms::default()
        };
        assert!(none.resolve().unwrap().is_noop());
        assert!(matches!(
            Perms { mode: Some(789), ..Perms::default() }.resolve(),
            Err(FileError::Invalid(m)) if m.contains("789")
        ));
        assert!(matches!(
            Perms { owner: Some("no-such-user-xyz".into()), ..Perms::default() }.resolve(),
            Err(FileError::Invalid(m)) if m.contains("no-such-user-xyz")
        ));
    }
}
