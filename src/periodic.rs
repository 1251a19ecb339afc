//! A background thread that runs a task every period: the cache's sweeper (`check_period`:
//! maintenance, so that an idle cache still reclaims its expired entries) and the session
//! store's snapshot saver (`snapshot_every`).
//!
//! Its task holds only a weak reference to what it works on (it upgrades it for the length of
//! a run), so it never keeps a cache or a store alive; dropping the [`Periodic`] (which the
//! owner does when its last handle goes, or when the period is changed) stops it: the thread
//! is woken and exits without another run, and the drop waits for a run already under way to
//! end, so that nothing of the task happens after the drop returns. The one exception is a
//! drop by the task's own thread (a run that stops its own sweeper from a listener, or drops
//! the last handle of what it works on): it cannot wait for itself, and returns at once.
//!
//! The owner must not hold, while it drops a `Periodic`, a lock that a run can take, nor wait
//! in any other way for something a run waits for (the cache drops its sweeper after
//! releasing the lock that guards it).

use std::io;
use std::thread::{self, Thread};
use std::time::Duration;

use crate::sync::{Arc, AtomicBool, Mutex, Ordering, lock};

thread_local! {
    /// On a `Periodic`'s thread, the address of its `running` lock (0 elsewhere): how a drop
    /// tells that it runs on the thread it would wait for. (`thread::current()` can panic in a
    /// thread-local destructor, where a cache may be dropped; `try_with` cannot.)
    static OWN_RUN_LOCK: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

pub(crate) struct Periodic {
    stop: Arc<AtomicBool>,
    /// Held by the thread for each run (and the stop check before it): a drop that takes it
    /// after setting `stop` knows no run is under way and none will start.
    running: Arc<Mutex<()>>,
    thread: Thread,
}

impl Periodic {
    /// Starts a thread named `name` that calls `work` every `period` until `work` returns
    /// false (what it works on is gone) or the `Periodic` is dropped.
    pub(crate) fn spawn(
        name: &str,
        period: Duration,
        work: impl Fn() -> bool + Send + 'static,
    ) -> io::Result<Periodic> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let running = Arc::new(Mutex::new(()));
        let run_lock = running.clone();
        let handle = thread::Builder::new().name(name.into()).spawn(move || {
            OWN_RUN_LOCK.with(|own| own.set(Arc::as_ptr(&run_lock) as usize));
            loop {
                thread::park_timeout(period);
                let _run = lock(&run_lock);
                // Acquire: pairs with the Release in `drop`; nothing else is exchanged (the
                // lock orders the run against the drop's wait).
                if stopped.load(Ordering::Acquire) {
                    break;
                }
                // A run executes user code (a listener, a hasher, a serializer): a panic in
                // it is this run's loss, not the thread's (the cache is consistent after it).
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&work)) {
                    Ok(true) | Err(_) => {}
                    Ok(false) => break,
                }
            }
            // The lock's address may be reused once this thread lets go of it.
            OWN_RUN_LOCK.with(|own| own.set(0));
        })?;
        Ok(Periodic {
            stop,
            running,
            thread: handle.thread().clone(),
        })
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        // Release: pairs with the Acquire in the loop.
        self.stop.store(true, Ordering::Release);
        self.thread.unpark();
        // Not joined, but a run under way is waited for (the thread exits at its next stop
        // check, doing nothing more). Not by the task's own thread: the last handle of a cache
        // may be dropped by a run (its task holds one), or a listener may stop the sweeper
        // that called it, and waiting would be waiting for itself.
        let mine = Arc::as_ptr(&self.running) as usize;
        if !OWN_RUN_LOCK
            .try_with(|own| own.get() == mine)
            .unwrap_or(false)
        {
            drop(lock(&self.running));
        }
    }
}
