//! The limit on concurrent watches in one execd: each holds an inotify
//! instance and a thread, and the kernel allows only so many instances per
//! user (`fs.inotify.max_user_instances`, 128 by default).

use std::sync::atomic::{AtomicUsize, Ordering};

static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// One of the limited watch slots, given back on drop.
#[derive(Debug)]
pub struct Slot(());

impl Slot {
    /// Takes a slot if fewer than `max` are taken.
    pub fn acquire(max: usize) -> Option<Self> {
        ACTIVE
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(()))
    }

    /// Slots taken now.
    pub fn active() -> usize {
        ACTIVE.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_given_back() {
        // The only test touching the global counter: relative to what is taken.
        let base = Slot::active();
        let a = Slot::acquire(base + 2);
        let b = Slot::acquire(base + 2);
        assert!(a.is_some() && b.is_some());
        assert!(Slot::acquire(base + 2).is_none());
        drop(a);
        assert!(Slot::acquire(base + 2).is_some());
        drop(b);
        assert_eq!(Slot::active(), base);
    }
}
