//! The shard's maintenance lock: a try-lock around the maintainer's single-owner state.
//!
//! Writers only ever *try* it: whoever wins drains the shard's events and runs its
//! maintenance, and a thread that loses moves on. Only a few paths wait for it (and say so):
//! back-pressure when the event ring is full, `run_pending_tasks`, `clear`, `len` with expiry,
//! and dropping the cache. Readers never touch it.
//!
//! It is a mutex (std's, or loom's under loom) rather than a spinning flag: a thread that must
//! wait sleeps in the kernel, so on an oversubscribed machine the holder gets the CPU instead
//! of waiters that spin or yield to each other. (Measured: 8 threads on 2 cores under the
//! stress tests' back-pressure took several times longer with a spin-then-yield flag.) The
//! uncontended paths cost the same compare-and-swap either way.

use crate::sync::{Mutex, TryLockError};

pub(crate) struct TryLock<T> {
    value: crossbeam_utils::CachePadded<Mutex<T>>,
}

impl<T> TryLock<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            value: crossbeam_utils::CachePadded::new(Mutex::new(value)),
        }
    }

    /// Runs `f` on the value if the lock is free; `None` if another thread holds it.
    pub(crate) fn try_run<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let mut guard = match self.value.try_lock() {
            Ok(guard) => guard,
            // A pass that panicked (in a user's hasher, `Eq` or weigher; the panic went to
            // the caller that ran it) left the state where it stopped; the next holder
            // carries on from there, as it did with the lock released on unwind.
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(f(&mut guard))
    }

    /// Runs `f` on the value, waiting for the lock.
    pub(crate) fn run<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut crate::sync::lock(&self.value))
    }
}
