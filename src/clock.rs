//! Time: a `quanta::Clock` (mockable), read coarsely on hot paths.
//!
//! Internally every time is a `u64` of nanoseconds since the cache was built, and
//! [`NEVER`](crate::raw::node::NEVER) (`u64::MAX`) is "no deadline".
//!
//! Reading the TSC costs about 11 ns on the machines this crate was measured on, a large
//! fraction of a cache hit, so reads do not: they use `quanta::Clock::recent()`, one atomic
//! load. For a mocked clock (`quanta::Clock::mock()`) `recent()` is the mock's exact time, so
//! tests see exact deadlines. For a real clock, `recent()` is a process-wide value that a
//! background *ticker* thread refreshes every [`TICK`]; the ticker is started the first time
//! a cache needs time (a deadline is set) and stopped when the last cache using it is
//! dropped. An entry may therefore be served up to about one tick after its deadline in real
//! time, never after it in the cache's time.

use std::time::Duration;

use quanta::{Clock, Instant};

/// How often the ticker refreshes the coarse clock.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// The time source of one cache.
pub(crate) struct TimeSource {
    clock: Clock,
    start: Instant,
    /// Whether `clock` is a `quanta::Clock::mock()`, whose `recent()` is exact and needs no
    /// ticker.
    #[cfg_attr(loom, allow(dead_code))]
    mocked: bool,
    #[cfg(not(loom))]
    ticker: std::sync::OnceLock<ticker::Lease>,
}

impl TimeSource {
    pub(crate) fn new(clock: Clock) -> Self {
        let start = clock.now();
        // quanta does not say whether a clock is mocked, but its `Debug` names the variant.
        // Read once here; if that ever changes, a mocked cache starts a ticker it does not
        // need (a thread, not a wrong answer).
        let mocked = format!("{clock:?}").contains("Mock(");
        Self {
            clock,
            start,
            mocked,
            #[cfg(not(loom))]
            ticker: std::sync::OnceLock::new(),
        }
    }

    /// Makes sure the coarse clock is being refreshed (idempotent, cheap after the first call).
    #[inline]
    pub(crate) fn ensure_ticking(&self) {
        #[cfg(not(loom))]
        if !self.mocked && self.ticker.get().is_none() {
            let _ = self.ticker.get_or_init(ticker::Lease::acquire);
        }
    }

    /// Now, in nanoseconds since the cache was built (coarse for a real clock, exact for a
    /// mock).
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        let mut t = self.clock.recent();
        if t < self.start {
            // The coarse clock is not running (yet): read the source.
            t = self.clock.now();
        }
        let ns = t.saturating_duration_since(self.start).as_nanos();
        // Saturate rather than wrap (584 years of uptime).
        ns.min(u64::MAX as u128 - 1) as u64
    }
}

#[cfg(not(loom))]
mod ticker {
    //! One process-wide thread that refreshes `quanta`'s coarse clock while at least one cache
    //! needs it.

    use std::thread::{self, JoinHandle};

    use super::TICK;
    use crate::sync::{Arc, AtomicBool, Mutex, Ordering, lock};

    struct Running {
        leases: usize,
        stop: Arc<AtomicBool>,
        thread: JoinHandle<()>,
    }

    static TICKER: Mutex<Option<Running>> = Mutex::new(None);

    /// Keeps the ticker running while it lives.
    pub(crate) struct Lease(());

    impl Lease {
        pub(crate) fn acquire() -> Lease {
            let mut state = lock(&TICKER);
            match state.as_mut() {
                Some(running) => running.leases += 1,
                None => {
                    let clock = quanta::Clock::new();
                    quanta::set_recent(clock.now());
                    let stop = Arc::new(AtomicBool::new(false));
                    let flag = stop.clone();
                    let spawned =
                        thread::Builder::new()
                            .name("evanesce-ticker".into())
                            .spawn(move || {
                                // Relaxed: a stop request needs no data with it.
                                while !flag.load(Ordering::Relaxed) {
                                    quanta::set_recent(clock.now());
                                    thread::park_timeout(TICK);
                                }
                            });
                    // If the thread cannot be spawned, `TimeSource::now` falls back to reading
                    // the clock source directly (slower, still correct).
                    if let Ok(thread) = spawned {
                        *state = Some(Running {
                            leases: 1,
                            stop,
                            thread,
                        });
                    }
                }
            }
            Lease(())
        }
    }

    impl Drop for Lease {
        fn drop(&mut self) {
            let mut state = lock(&TICKER);
            let last = match state.as_mut() {
                Some(running) => {
                    running.leases -= 1;
                    running.leases == 0
                }
                None => false,
            };
            if last && let Some(running) = state.take() {
                // Relaxed: see the loop above.
                running.stop.store(true, Ordering::Relaxed);
                running.thread.thread().unpark();
                drop(state);
                let _ = running.thread.join();
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_mocked_clock_needs_no_ticker() {
        let (clock, mock) = Clock::mock();
        let time = TimeSource::new(clock);
        time.ensure_ticking();
        assert!(time.ticker.get().is_none());
        mock.increment(Duration::from_millis(5));
        assert_eq!(time.now(), 5_000_000);

        let time = TimeSource::new(Clock::new());
        time.ensure_ticking();
        assert!(time.ticker.get().is_some());
    }
}
