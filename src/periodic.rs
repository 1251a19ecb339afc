//! A background thread that runs a task every period: the cache's sweeper (`check_period`:
//! maintenance, so that an idle cache still reclaims its expired entries) and the session
//! store's snapshot saver (`snapshot_every`).
//!
//! Its task holds only a weak reference to what it works on (it upgrades it for the length of
//! a run), so it never keeps a cache or a store alive; dropping the [`Periodic`] (which the
//! owner does when its last handle goes, or when the period is changed) stops it at once: the
//! thread is woken and exits without another run.

use std::io;
use std::thread::{self, Thread};
use std::time::Duration;

use crate::sync::{Arc, AtomicBool, Ordering};

pub(crate) struct Periodic {
    stop: Arc<AtomicBool>,
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
        let handle = thread::Builder::new().name(name.into()).spawn(move || {
            loop {
                thread::park_timeout(period);
                // Acquire: pairs with the Release in `drop`; nothing else is exchanged.
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
        })?;
        Ok(Periodic {
            stop,
            thread: handle.thread().clone(),
        })
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        // Release: pairs with the Acquire in the loop.
        self.stop.store(true, Ordering::Release);
        // Not joined: the last handle of a cache may be dropped by this thread itself (its task
        // holds one during a run), and joining would wait for it forever.
        self.thread.unpark();
    }
}
