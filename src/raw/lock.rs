//! The shard's maintenance lock: a try-lock around the maintainer's single-owner state.
//!
//! Writers only ever *try* it: whoever wins drains the shard's events and runs its
//! maintenance, and a thread that loses moves on. Only a few paths wait for it (and say so):
//! back-pressure when the event ring is full, `run_pending_tasks`, `clear`, `len` with expiry,
//! and dropping the cache. Readers never touch it.

use crossbeam_utils::{Backoff, CachePadded};

use crate::sync::{AtomicBool, Ordering, UnsafeCell, spin_hint};

pub(crate) struct TryLock<T> {
    locked: CachePadded<AtomicBool>,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only accessed by the thread holding the lock (see `run`), so sharing the
// lock across threads only moves `T` between threads.
unsafe impl<T: Send> Sync for TryLock<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for TryLock<T> {}

/// Releases the lock when dropped, also on unwind.
struct Unlock<'a>(&'a AtomicBool);

impl Drop for Unlock<'_> {
    fn drop(&mut self) {
        // Release: pairs with the Acquire CAS of the next holder, handing it our writes.
        self.0.store(false, Ordering::Release);
    }
}

impl<T> TryLock<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            locked: CachePadded::new(AtomicBool::new(false)),
            value: UnsafeCell::new(value),
        }
    }

    fn acquire(&self) -> bool {
        // Relaxed pre-check avoids a CAS (a cache-line write) when the lock is visibly held.
        !self.locked.load(Ordering::Relaxed)
            // Acquire: pairs with the Release in `Unlock::drop` of the previous holder.
            && self
                .locked
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    /// Runs `f` on the value if the lock is free; `None` if another thread holds it.
    pub(crate) fn try_run<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        if !self.acquire() {
            return None;
        }
        let _unlock = Unlock(&self.locked);
        Some(self.value.with_mut(|p| {
            // SAFETY: we hold the lock, so no other thread accesses the value until `_unlock`
            // releases it after `f` returns (or unwinds).
            f(unsafe { &mut *p })
        }))
    }

    /// Runs `f` on the value, waiting (spinning, then yielding) for the lock.
    pub(crate) fn run<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let backoff = Backoff::new();
        loop {
            if self.acquire() {
                let _unlock = Unlock(&self.locked);
                return self.value.with_mut(|p| {
                    // SAFETY: as in `try_run`.
                    f(unsafe { &mut *p })
                });
            }
            if cfg!(loom) {
                spin_hint();
            } else {
                backoff.snooze();
            }
        }
    }
}
