//! The policy in force: swapped atomically as a whole, changed by one writer
//! at a time, persisted (temporary file, fsync, rename) before it takes
//! effect so that a restart finds what was last accepted.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::events::Events;
use crate::nft::socket::NftError;
use crate::nft::Firewall;
use crate::policy::always::Always;
use crate::policy::matcher::Matcher;
use crate::policy::Policy;

/// Why a policy could not be put in force (the old one stays).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// The kernel refused the ruleset.
    #[error("failed to apply nftables policy: {0}")]
    Firewall(#[from] NftError),
    /// The policy file could not be written.
    #[error("failed to persist policy: {0}")]
    Persist(#[from] std::io::Error),
}

/// Shared state of the sidecar.
#[derive(Debug)]
pub struct State {
    /// The user's policy and the effective matcher (overlay + user rules).
    current: RwLock<(Arc<Policy>, Arc<Matcher>)>,
    always: RwLock<Always>,
    /// Serializes changes (no lost updates between concurrent PATCHes).
    pub writer: tokio::sync::Mutex<()>,
    /// Refusals.
    pub events: Events,
    policy_file: Option<PathBuf>,
    firewall: Box<dyn Firewall>,
    /// Signalled after every policy change.
    pub changed: tokio::sync::Notify,
}

impl State {
    /// State starting with `policy`, enforced by `firewall` once
    /// [`State::enforce`] is called.
    pub fn new(
        policy: Policy,
        always: Always,
        events_max: usize,
        policy_file: Option<PathBuf>,
        firewall: Box<dyn Firewall>,
    ) -> Self {
        let policy = Arc::new(policy);
        let m = Arc::new(Matcher::new(always.apply_to(&policy)));
        Self {
            current: RwLock::new((policy, m)),
            always: RwLock::new(always),
            writer: tokio::sync::Mutex::new(()),
            events: Events::new(events_max),
            policy_file,
            firewall,
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Puts the current policy in the kernel (at start; fail closed: an
    /// error here must stop egress).
    pub fn enforce(&self) -> Result<(), InstallError> {
        let m = self.matcher();
        self.firewall.apply(&m)?;
        count_rules(&m);
        Ok(())
    }

    /// The kernel side.
    pub fn firewall(&self) -> &dyn Firewall {
        self.firewall.as_ref()
    }

    /// The effective policy in force (the operator's overlay and the user's rules).
    pub fn matcher(&self) -> Arc<Matcher> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
            .clone()
    }

    /// The user's policy (what GET returns and PATCH and DELETE change).
    pub fn user_policy(&self) -> Arc<Policy> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .clone()
    }

    /// Re-reads the overlay files if they changed, and puts the result in
    /// force; an invalid file keeps the previous overlay (with a warning).
    pub fn reload_always(&self, dir: &std::path::Path) {
        if !self
            .always
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .changed(dir)
        {
            return;
        }
        match Always::load(dir) {
            Err(e) => tracing::warn!(error = %e, "keeping the previous always rules"),
            Ok(a) => {
                *self
                    .always
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = a;
                match self.put_in_force(self.user_policy(), false) {
                    Ok(()) => tracing::info!("always rules reloaded"),
                    Err(e) => tracing::error!(error = %e, "cannot apply the reloaded always rules"),
                }
            }
        }
    }

    /// Puts `policy` in force: the kernel first (one transaction), then the
    /// policy file, then the DNS proxy. If the file cannot be written the
    /// kernel goes back to the old policy: nothing is half-applied.
    pub fn install(&self, policy: Arc<Policy>) -> Result<(), InstallError> {
        self.put_in_force(policy, true)
    }

    fn put_in_force(&self, policy: Arc<Policy>, persist_it: bool) -> Result<(), InstallError> {
        let effective = self
            .always
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .apply_to(&policy);
        let m = Arc::new(Matcher::new(effective));
        self.firewall.apply(&m)?;
        if let Some(path) = self.policy_file.as_ref().filter(|_| persist_it) {
            if let Err(e) = persist(path, &policy) {
                if let Err(back) = self.firewall.apply(&self.matcher()) {
                    tracing::error!(error = %back, "cannot restore the previous nftables policy");
                }
                return Err(e.into());
            }
        }
        count_rules(&m);
        let old = std::mem::replace(
            &mut *self
                .current
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            (policy, m),
        );
        // Freed outside the lock: thousands of rules take a while to drop,
        // and the DNS proxy reads `current` for every query.
        drop(old);
        self.changed.notify_one();
        Ok(())
    }
}

fn persist(path: &std::path::Path, policy: &Policy) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut body = serde_json::to_vec_pretty(&policy.wire()).map_err(std::io::Error::other)?;
    body.push(b'\n');
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("policy")
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Loads the initial policy: a valid policy file wins over
/// `OPENSANDBOX_EGRESS_RULES`, which wins over deny-all. An invalid file is
/// skipped with a warning (as upstream); invalid rules are an error.
pub fn initial_policy(
    file: Option<&std::path::Path>,
    rules: Option<&str>,
) -> Result<Policy, String> {
    if let Some(path) = file {
        match std::fs::read(path) {
            Ok(body) if !body.iter().all(u8::is_ascii_whitespace) => match Policy::parse(&body) {
                Ok(p) => return Ok(p),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring invalid policy file")
                }
            },
            _ => {}
        }
    }
    match rules {
        Some(r) => {
            Policy::parse(r.as_bytes()).map_err(|e| format!("OPENSANDBOX_EGRESS_RULES: {e}"))
        }
        None => Ok(Policy::default()),
    }
}

/// The rules gauge (`egress.nftables.rules.count`) for the policy in force.
fn count_rules(m: &Matcher) {
    let n = u64::try_from(m.policy().egress.len()).unwrap_or(u64::MAX);
    crate::metrics::METRICS
        .rules
        .store(n, std::sync::atomic::Ordering::Relaxed);
}
