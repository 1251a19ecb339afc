//! The one place that names atomics, `UnsafeCell`, locks and thread-locals.
//!
//! Normally these are std's types. Under `--cfg loom` (with `--cfg crossbeam_loom`, so that
//! crossbeam-epoch is built on loom too) they are loom's, so the loom models in
//! `tests/loom.rs` see every shared access the crate makes. Naming the std types anywhere else
//! in `src/` fails CI (a grep in `.ci/run`; clippy's `disallowed-types` cannot be used, as it
//! also flags the re-exports below wherever they are used).
//!
//! [`UnsafeCell`] exposes loom's closure API (`with` / `with_mut`) in both builds: loom can
//! only check an access that happens inside such a closure.

#![allow(clippy::disallowed_types)]
#![allow(unused_imports, dead_code)]

#[cfg(loom)]
mod imp {
    pub(crate) use loom::cell::UnsafeCell;
    pub(crate) use loom::sync::atomic::{
        AtomicBool, AtomicI64, AtomicPtr, AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize,
        Ordering, fence,
    };
    pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
    pub(crate) use loom::thread::yield_now;
    pub(crate) use std::sync::TryLockError;

    /// Spin-loop hint; under loom a yield, so that the model can schedule the thread we wait for.
    #[inline]
    pub(crate) fn spin_hint() {
        loom::thread::yield_now();
    }
}

#[cfg(not(loom))]
mod imp {
    pub(crate) use std::sync::atomic::{
        AtomicBool, AtomicI64, AtomicPtr, AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize,
        Ordering, compiler_fence, fence,
    };
    pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError, Weak};
    pub(crate) use std::thread::yield_now;

    /// Spin-loop hint.
    #[inline]
    pub(crate) fn spin_hint() {
        std::hint::spin_loop();
    }

    /// std's `UnsafeCell` with loom's access API, so that one code path serves both builds.
    #[derive(Debug)]
    #[repr(transparent)]
    pub(crate) struct UnsafeCell<T: ?Sized>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        #[inline]
        pub(crate) const fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }
    }

    impl<T: ?Sized> UnsafeCell<T> {
        /// Runs `f` with a shared raw pointer to the contents.
        #[inline]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        /// Runs `f` with a mutable raw pointer to the contents.
        #[inline]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

pub(crate) use imp::*;

/// crossbeam-epoch, re-exported so that the rest of the crate names it through the shim
/// (it is loom-instrumented under `--cfg crossbeam_loom`).
pub(crate) use crossbeam_epoch as epoch;

/// Locks a mutex, ignoring poisoning: every critical section in this crate leaves its data
/// consistent before anything that can panic runs, so a poisoned lock carries no broken
/// invariant.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The calling thread's identity (loom's model thread under loom, whose threads may share an
/// OS thread).
#[cfg(not(loom))]
pub(crate) fn thread_id() -> std::thread::ThreadId {
    std::thread::current().id()
}

/// The calling thread's identity (loom's model thread under loom, whose threads may share an
/// OS thread).
#[cfg(loom)]
pub(crate) fn thread_id() -> loom::thread::ThreadId {
    loom::thread::current().id()
}

/// A small number identifying the calling thread (distinct for the first threads that ask; used
/// to spread striped counters).
#[cfg(not(loom))]
pub(crate) fn thread_index() -> usize {
    use std::cell::Cell;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|i| {
        let mut v = i.get();
        if v == usize::MAX {
            // Relaxed: only distinctness matters, and a collision only shares a stripe.
            v = NEXT.fetch_add(1, Ordering::Relaxed);
            i.set(v);
        }
        v
    })
}

/// A small number that no other *live* thread has (taken at the thread's first call, given
/// back when it exits, then handed to a later thread): whoever owns slot `i` of a per-thread
/// array may update it with a plain load and store. `None` once the thread's thread-locals are
/// being destroyed.
#[cfg(not(loom))]
pub(crate) fn live_index() -> Option<usize> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static FREE: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    struct Owned(usize);
    impl Drop for Owned {
        fn drop(&mut self) {
            FREE.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(self.0);
        }
    }
    fn take() -> Owned {
        let reused = FREE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        // Relaxed: only distinctness matters (a fresh number is never handed out twice). A
        // reused one comes through the mutex, which orders its last owner's writes first.
        Owned(reused.unwrap_or_else(|| NEXT.fetch_add(1, Ordering::Relaxed)))
    }
    thread_local! {
        static LIVE: Owned = take();
    }
    LIVE.try_with(|o| o.0).ok()
}

/// Under loom, none (the models do not look at statistics).
#[cfg(loom)]
pub(crate) fn live_index() -> Option<usize> {
    None
}

/// Under loom, every thread shares stripe 0 (the models do not look at statistics).
#[cfg(loom)]
pub(crate) fn thread_index() -> usize {
    0
}

#[cfg(not(loom))]
std::thread_local! {
    /// See [`preferred_stripe`]; `usize::MAX` until the thread first asks.
    static PREFERRED: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// The stripe the calling thread prefers among structures spread over a few cache lines for
/// writers (the arena's free stacks): its [`thread_index`] at first, then wherever
/// [`avoid_stripe`] moved it. Callers reduce it modulo their stripe count.
#[cfg(not(loom))]
#[inline]
pub(crate) fn preferred_stripe() -> usize {
    PREFERRED.with(|p| {
        let mut v = p.get();
        if v == usize::MAX {
            v = thread_index();
            p.set(v);
        }
        v
    })
}

/// Moves the calling thread's preference past `stripe`, where it met another thread: two
/// threads that started on one stripe (thread indices of the same parity) part after a
/// collision or two instead of sharing its cache line for good.
#[cfg(not(loom))]
#[inline]
pub(crate) fn avoid_stripe(stripe: usize) {
    PREFERRED.with(|p| p.set(stripe.wrapping_add(1)));
}

/// Under loom, stripe 0 (a preference kept across a model's runs would make them differ).
#[cfg(loom)]
pub(crate) fn preferred_stripe() -> usize {
    0
}

/// Under loom, nothing (see `preferred_stripe`).
#[cfg(loom)]
pub(crate) fn avoid_stripe(_stripe: usize) {}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A thread's preferred stripe starts at its index and moves past a stripe it avoids.
    #[test]
    fn a_thread_moves_off_a_stripe_it_avoids() {
        std::thread::spawn(|| {
            let first = preferred_stripe();
            assert_eq!(first, thread_index());
            avoid_stripe(first);
            assert_eq!(preferred_stripe(), first + 1);
        })
        .join()
        .unwrap();
    }
}
