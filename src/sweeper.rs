//! The optional background sweeper: a thread that runs a cache's maintenance every period so
//! that an idle cache still reclaims its expired entries.
//!
//! It holds only a weak reference to the cache (the `work` closure upgrades it for the length
//! of a pass), so it never keeps a cache alive; dropping the [`Sweeper`] (which the cache does
//! when its last handle goes, or when the period is changed) stops it at once: the thread is
//! woken and exits without another pass.

use std::io;
use std::thread::{self, Thread};
use std::time::Duration;

use crate::sync::{Arc, AtomicBool, Ordering};

pub(crate) struct Sweeper {
    stop: Arc<AtomicBool>,
    thread: Thread,
}

impl Sweeper {
    /// Starts a thread that calls `work` every `period` until `work` returns false (the cache
    /// is gone) or the sweeper is dropped.
    pub(crate) fn spawn(
        period: Duration,
        work: impl Fn() -> bool + Send + 'static,
    ) -> io::Result<Sweeper> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = thread::Builder::new()
            .name("evanesce-sweep".into())
            .spawn(move || {
                loop {
                    thread::park_timeout(period);
                    // Acquire: pairs with the Release in `drop`; nothing else is exchanged.
                    if stopped.load(Ordering::Acquire) {
                        break;
                    }
                    // A pass runs user code (a listener, a hasher): a panic in it is this
                    // sweep's loss, not the sweeper's (the cache is consistent after it).
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&work)) {
                        Ok(true) | Err(_) => {}
                        Ok(false) => break,
                    }
                }
            })?;
        Ok(Sweeper {
            stop,
            thread: handle.thread().clone(),
        })
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        // Release: pairs with the Acquire in the loop.
        self.stop.store(true, Ordering::Release);
        // Not joined: the last handle of a cache may be dropped by the sweeper thread itself
        // (it holds one during a pass), and joining would wait for it forever.
        self.thread.unpark();
    }
}
