//! Time: a `quanta::Clock` (mockable), read coarsely on hot paths.
//!
//! Internally every time is a `u64` of nanoseconds since the cache was built, and
//! `NEVER` (`raw/table/node.rs`) (`u64::MAX`) is "no deadline".
//!
//! A mocked clock (`quanta::Clock::mock()`) is the cache's time: `recent()` is the mock's exact
//! time, so tests see exact deadlines. A real clock's time is the operating system's monotonic
//! clock (`std::time::Instant`), not quanta's TSC reading: quanta calibrates the TSC against
//! that clock once, and on the 2-vCPU KVM machine of this crate's CI its time ran 35 ppm
//! fast (3 seconds a day), enough for an entry with a 5 ms time to live to vanish a few
//! hundred nanoseconds before its deadline by `std::time::Instant`
//! (`tests/expiry.rs::a_precise_clock_expires_entries_at_their_deadline_in_real_time`).
//!
//! Reading that clock costs about 21 ns (a vDSO call) on the machines this crate was
//! measured on, a large fraction of a cache hit, so reads do not: a background *ticker* thread
//! refreshes a process-wide coarse time every [`TICK`], nanoseconds since a process-wide base
//! ([`ticker::base`]), which a cache with deadlines reads with one load and one subtraction.
//! The ticker is started the first time a cache needs time (a deadline is set) and stopped
//! when the last cache using it is dropped. An entry may therefore be served up to about one
//! tick after its deadline in real time, never after it in the cache's time. That holds
//! while the ticker thread runs: one descheduled for longer (a machine loaded far beyond its
//! cores, a process just resumed) leaves the coarse time behind, and with it every cache's
//! expiry, until it runs again or a cache's maintenance pass, which reads the clock and
//! raises the coarse time when it is more than two ticks behind ([`TimeSource::catch_up`]),
//! catches it up. Entries inserted meanwhile get deadlines early by the lag. A cache that
//! must never serve an entry past its deadline by more than a tick, whatever the scheduling,
//! reads the clock on every operation instead (`coarse_clock(false)`).
//!
//! A cache built with [`coarse_clock(false)`](crate::CacheBuilder::coarse_clock) starts no
//! ticker and reads the monotonic clock on every operation that needs the time: about 21 ns
//! more per operation, no thread waking a thousand times a second. That is the better trade
//! for a cache that serves few operations a second (a session store behind a Node.js server,
//! where one call into the addon costs far more than a clock reading, and the ticker's
//! wake-ups took 12-22 ms of CPU a second from a 2-core machine that also ran the server and
//! its load).

use std::time::Duration;

use quanta::{Clock, Instant};

use crate::sync::AtomicU64;
#[cfg(not(loom))]
use crate::sync::Ordering;

/// How often the ticker refreshes the coarse clock.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// A point in time to measure from on a [`Clock`]: a mock's time, or, for a real clock, the
/// monotonic clock's (see the module's documentation for why not quanta's TSC time).
pub(crate) struct Origin {
    clock: Clock,
    /// The origin on `clock` (what a mocked clock's time counts from).
    on_clock: Instant,
    /// The origin on the monotonic clock (what a real clock's time counts from).
    real: std::time::Instant,
    /// Whether `clock` is a `quanta::Clock::mock()`.
    mocked: bool,
}

impl Origin {
    /// Now, on `clock`.
    pub(crate) fn new(clock: Clock) -> Self {
        let on_clock = clock.now();
        let real = std::time::Instant::now();
        // quanta does not say whether a clock is mocked, but its `Debug` names the variant.
        // Read once here; if that ever changed, a mock would be read as the monotonic clock,
        // which `tests::a_mocked_clock_needs_no_ticker` (the mock's exact time) would catch.
        let mocked = format!("{clock:?}").contains("Mock(");
        Self {
            clock,
            on_clock,
            real,
            mocked,
        }
    }

    /// The time since the origin: the mock's (exact), or the monotonic clock's.
    #[inline]
    pub(crate) fn elapsed(&self) -> Duration {
        if self.mocked {
            // `recent()` is a mock's exact time.
            self.clock.recent().saturating_duration_since(self.on_clock)
        } else {
            self.real.elapsed()
        }
    }
}

/// The time source of one cache.
pub(crate) struct TimeSource {
    /// The cache's start (and whether the clock is a mock, whose time is exact and needs
    /// no ticker).
    origin: Origin,
    /// A real clock read on every call (`coarse_clock(false)`): no ticker.
    #[cfg_attr(loom, allow(dead_code))]
    precise: bool,
    /// Once the ticker runs for this cache: the cache's start in the ticker's coarse time
    /// (nanoseconds since [`ticker::base`]), so that `now` is one load and a subtraction.
    #[cfg(not(loom))]
    ticker: std::sync::OnceLock<(ticker::Lease, Option<u64>)>,
    /// The offset above, where `now` reads it: [`NO_OFFSET`] until it is known. (An atomic
    /// of its own, so that a hit loads one word instead of checking the `OnceLock`.)
    #[cfg_attr(loom, allow(dead_code))]
    offset: AtomicU64,
}

/// `TimeSource::offset` before the ticker runs for the cache (or without one).
const NO_OFFSET: u64 = u64::MAX;

impl TimeSource {
    /// A time source reading `clock`, coarsely through the ticker if `coarse` (and the clock
    /// is not a mock), else exactly on every call.
    pub(crate) fn new(clock: Clock, coarse: bool) -> Self {
        // The coarse time's base is fixed before this cache's start, so that the start's offset
        // from it is exact (it would saturate to zero if the base came later).
        #[cfg(not(loom))]
        let _ = ticker::base();
        let origin = Origin::new(clock);
        Self {
            precise: !coarse && !origin.mocked,
            origin,
            #[cfg(not(loom))]
            ticker: std::sync::OnceLock::new(),
            offset: AtomicU64::new(NO_OFFSET),
        }
    }

    /// Makes sure the coarse clock is being refreshed (idempotent, cheap after the first call).
    #[inline]
    pub(crate) fn ensure_ticking(&self) {
        #[cfg(not(loom))]
        if !self.origin.mocked && !self.precise && self.ticker.get().is_none() {
            let (_, offset) = self.ticker.get_or_init(|| {
                let lease = ticker::Lease::acquire();
                // Only with a running ticker is the coarse time kept fresh.
                let offset = lease.running().then(|| {
                    let ns = self
                        .origin
                        .real
                        .saturating_duration_since(ticker::base())
                        .as_nanos();
                    u64::try_from(ns).unwrap_or(NO_OFFSET - 1)
                });
                (lease, offset)
            });
            if let Some(offset) = offset {
                // The coarse time may be up to a tick old, behind what `now_slow` returned
                // before this (time would step back): bring it up to now first.
                ticker::catch_up(0);
                // Relaxed: a reader that does not see it yet reads the source (`now_slow`),
                // which is as correct, only slower.
                self.offset.store(*offset, Ordering::Relaxed);
            }
        }
    }

    /// Now, in nanoseconds since the cache was built (coarse for a real clock, exact for a
    /// mock).
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        #[cfg(not(loom))]
        {
            // Relaxed: see `ensure_ticking`.
            let offset = self.offset.load(Ordering::Relaxed);
            // `NO_OFFSET` fails the test below (the coarse time stays below it, see
            // `ticker::refresh`). Before the ticker's first refresh after this cache started,
            // the coarse time is still behind its start: read the source.
            let coarse = ticker::coarse();
            if coarse >= offset {
                return coarse - offset;
            }
            if offset != NO_OFFSET {
                // The ticker runs but has not refreshed since this cache started (it was set
                // before `ensure_ticking`'s catch-up, by a refresh that read the clock earlier
                // and stored later). Reading the source here without raising the coarse time
                // would let a later `now` step back to it.
                return ticker::catch_up(0).saturating_sub(offset);
            }
        }
        self.now_slow()
    }

    /// Brings the process's coarse time up to the monotonic clock if it is more than two
    /// ticks behind (its ticker thread descheduled on a loaded machine, or the process just
    /// resumed). Maintenance passes call it, so that while a cache is written its coarse
    /// time lags real time by at most the interval between its passes, whatever the ticker
    /// thread's scheduling. Costs a clock reading (about 21 ns); stores only when behind, so
    /// that readers' shared cache line is not written by every pass.
    #[inline]
    pub(crate) fn catch_up(&self) {
        #[cfg(not(loom))]
        // Relaxed: see `ensure_ticking`.
        if !self.origin.mocked && self.offset.load(Ordering::Relaxed) != NO_OFFSET {
            ticker::catch_up(2 * TICK.as_nanos() as u64);
        }
    }

    /// `now` read from the source: the mock's time, or the monotonic clock (a precise cache,
    /// or a coarse one before its ticker's first refresh, or whose ticker could not start).
    #[inline]
    fn now_slow(&self) -> u64 {
        // A precise source never sets the offset, so every call comes here.
        let elapsed = self.origin.elapsed();
        // Saturate rather than wrap (584 years of uptime).
        elapsed.as_nanos().min(u64::MAX as u128 - 1) as u64
    }
}

#[cfg(not(loom))]
mod ticker {
    //! One process-wide thread that refreshes the coarse clock while at least one cache needs
    //! it.

    use std::thread::{self, JoinHandle};

    use std::sync::OnceLock;

    use std::time::Instant;

    use super::TICK;
    use crate::sync::{Arc, AtomicBool, AtomicU64, Mutex, Ordering, lock};

    /// The instant coarse times count from (the first time anything asks).
    static BASE: OnceLock<Instant> = OnceLock::new();
    /// The coarse time: nanoseconds since [`BASE`], as of the ticker's last refresh.
    static COARSE: AtomicU64 = AtomicU64::new(0);
    /// Tests: the ticker thread skips its refreshes while set (a descheduled ticker).
    #[cfg(test)]
    pub(super) static STALLED: AtomicBool = AtomicBool::new(false);

    pub(crate) fn base() -> Instant {
        *BASE.get_or_init(Instant::now)
    }

    /// The coarse time (fresh within one [`TICK`] while a ticker runs).
    #[inline]
    pub(crate) fn coarse() -> u64 {
        // Relaxed: a clock reading; no data is published with it.
        COARSE.load(Ordering::Relaxed)
    }

    /// The monotonic clock's time since [`base`], in nanoseconds.
    fn read() -> u64 {
        let ns = base().elapsed().as_nanos();
        // Below `NO_OFFSET` (584 years of uptime), which `TimeSource::now` relies on.
        u64::try_from(ns)
            .unwrap_or(u64::MAX)
            .min(super::NO_OFFSET - 1)
    }

    /// Reads the monotonic clock and raises the coarse time to it if the coarse time is more
    /// than `slack` nanoseconds behind (the ticker's refresh is `catch_up(0)`). Returns the
    /// coarse time as of after the raise (at least the reading when it raised, and never less
    /// than a value returned before).
    pub(crate) fn catch_up(slack: u64) -> u64 {
        let now = read();
        let coarse = coarse();
        if now > coarse.saturating_add(slack) {
            // Relaxed: see `coarse`. `fetch_max`: never moves backwards, whoever raises it; it
            // returns the previous value.
            COARSE.fetch_max(now, Ordering::Relaxed).max(now)
        } else {
            coarse
        }
    }

    struct Running {
        leases: usize,
        stop: Arc<AtomicBool>,
        thread: JoinHandle<()>,
    }

    static TICKER: Mutex<Option<Running>> = Mutex::new(None);

    /// Keeps the ticker running while it lives. `true` if the ticker thread runs (it may
    /// fail to spawn; then nothing refreshes the coarse clocks).
    pub(crate) struct Lease(bool);

    impl Lease {
        pub(crate) fn acquire() -> Lease {
            let mut state = lock(&TICKER);
            match state.as_mut() {
                Some(running) => {
                    running.leases += 1;
                    return Lease(true);
                }
                None => {
                    catch_up(0);
                    let stop = Arc::new(AtomicBool::new(false));
                    let flag = stop.clone();
                    let spawned =
                        thread::Builder::new()
                            .name("evanesce-ticker".into())
                            .spawn(move || {
                                // Relaxed: a stop request needs no data with it.
                                while !flag.load(Ordering::Relaxed) {
                                    #[cfg(test)]
                                    if STALLED.load(Ordering::Relaxed) {
                                        thread::park_timeout(TICK);
                                        continue;
                                    }
                                    catch_up(0);
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
                        return Lease(true);
                    }
                }
            }
            Lease(false)
        }

        pub(crate) fn running(&self) -> bool {
            self.0
        }
    }

    impl Drop for Lease {
        fn drop(&mut self) {
            if !self.0 {
                return;
            }
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
        let time = TimeSource::new(clock, true);
        time.ensure_ticking();
        assert!(time.ticker.get().is_none());
        mock.increment(Duration::from_millis(5));
        assert_eq!(time.now(), 5_000_000);

        let time = TimeSource::new(Clock::new(), true);
        time.ensure_ticking();
        assert!(time.ticker.get().is_some());
    }

    /// With a real clock and its ticker running, `now` is the coarse time (one load): the
    /// ticker's last refresh, read around it, in the cache's time. It never runs ahead of the
    /// monotonic clock, and keeps up with it within a few ticks while the ticker thread runs.
    /// A loaded machine may leave that thread unscheduled for a while (100 ticks and more):
    /// the readings wait for it to catch up, up to a watchdog, rather than require it at every
    /// reading.
    #[test]
    fn a_real_clock_reads_the_coarse_time() {
        let time = TimeSource::new(Clock::new(), true);
        time.ensure_ticking();
        let Some((lease, offset)) = time.ticker.get() else {
            panic!("no ticker lease");
        };
        if !lease.running() {
            // The ticker thread could not be spawned here: `now` reads the source instead.
            assert!(offset.is_none());
            return;
        }
        let Some(offset) = *offset else {
            panic!("no offset with a running ticker");
        };
        let behind = |fast: u64, slow: u64| Duration::from_nanos(slow.saturating_sub(fast));
        let mut last = 0;
        let mut caught_up = false;
        for _ in 0..1000 {
            let before = ticker::coarse();
            let fast = time.now();
            let after = ticker::coarse();
            let slow = time.now_slow();
            assert!(
                fast <= slow,
                "coarse time {fast} ahead of the clock's {slow}"
            );
            // Until the ticker's first refresh after the cache's start, `now` reads the
            // source (and the step from that reading to the coarse time is not checked here).
            if before >= offset {
                assert!(
                    (before - offset..=after - offset).contains(&fast),
                    "now {fast} is not the coarse time ({before}..={after}, offset {offset})"
                );
                assert!(fast >= last, "time went back: {fast} after {last}");
                last = fast;
                caught_up |= behind(fast, slow) < 100 * TICK;
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !caught_up {
            assert!(
                std::time::Instant::now() < deadline,
                "the coarse time stayed 100 ticks or more behind the clock for 10 s"
            );
            std::thread::sleep(TICK);
            let coarse = ticker::coarse();
            let (fast, slow) = (time.now(), time.now_slow());
            caught_up = coarse >= offset && behind(fast, slow) < 100 * TICK;
        }
    }

    /// Without the coarse clock no ticker is leased, and `now` is the monotonic clock's time
    /// since the cache was built, exactly: between `std::time::Instant` readings taken around
    /// it. (quanta's TSC time ran 35 ppm fast on the CI machine: after 200 ms, 7 us off, far
    /// outside that window.)
    #[test]
    fn a_precise_clock_needs_no_ticker_and_follows_the_monotonic_clock() {
        // quanta's calibration (in `Clock::new`) is not inside the window.
        let clock = Clock::new();
        let before_new = std::time::Instant::now();
        let time = TimeSource::new(clock, false);
        let after_new = std::time::Instant::now();
        time.ensure_ticking();
        assert!(time.ticker.get().is_none());
        let mut last = 0;
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(50));
            let before = std::time::Instant::now();
            let now = time.now();
            let after = std::time::Instant::now();
            let lowest = before.duration_since(after_new).as_nanos() as u64;
            let highest = after.duration_since(before_new).as_nanos() as u64;
            assert!(
                (lowest..=highest).contains(&now),
                "now {now} ns, outside [{lowest}, {highest}] by std::time::Instant"
            );
            assert!(now >= last + 50_000_000, "{last} then {now} after 50 ms");
            last = now;
        }
        assert!(time.ticker.get().is_none());

        // A mock stays a mock, exact, whatever the option.
        let (clock, mock) = Clock::mock();
        let time = TimeSource::new(clock, false);
        mock.increment(Duration::from_millis(7));
        assert_eq!(time.now(), 7_000_000);
    }

    /// A cache created while the ticker runs for others reads the source until it needs
    /// deadlines, then the coarse time, which may be up to a tick old: it is brought up to
    /// now first, so the cache's time never steps back (before, a refresh between the cache's
    /// start and its first reading made the next reading earlier than that one).
    #[test]
    fn time_never_steps_back_when_a_cache_starts_using_the_coarse_time() {
        let running = TimeSource::new(Clock::new(), true);
        running.ensure_ticking();
        for round in 0..50 {
            let time = TimeSource::new(Clock::new(), true);
            // Long enough for a refresh to land after the start, half the time.
            std::thread::sleep(TICK / 2);
            let before = time.now();
            time.ensure_ticking();
            let after = time.now();
            assert!(after >= before, "round {round}: {before} then {after}");
        }
    }

    /// A ticker thread that does not run (descheduled) leaves the coarse time behind; a
    /// maintenance pass's `catch_up` brings it back to within two ticks of the clock.
    #[test]
    fn a_stalled_ticker_is_caught_up_by_passes() {
        let time = TimeSource::new(Clock::new(), true);
        time.ensure_ticking();
        if !time.ticker.get().is_some_and(|(lease, _)| lease.running()) {
            return;
        }
        ticker::STALLED.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
        let stale = time.now();
        std::thread::sleep(Duration::from_millis(20));
        let real_before = time.origin.real.elapsed().as_nanos() as u64;
        time.catch_up();
        let caught = time.now();
        ticker::STALLED.store(false, Ordering::Relaxed);
        assert!(
            caught + 2 * TICK.as_nanos() as u64 >= real_before,
            "coarse {caught} ns after catching up, the clock {real_before} (stale {stale})"
        );
    }

    /// The coarse time never runs ahead of the monotonic clock (it is that clock's time, up to
    /// a tick old).
    #[test]
    fn the_coarse_time_is_never_ahead_of_the_monotonic_clock() {
        let before_new = std::time::Instant::now();
        let time = TimeSource::new(Clock::new(), true);
        time.ensure_ticking();
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(10));
            let now = time.now();
            let highest = before_new.elapsed().as_nanos() as u64;
            assert!(
                now <= highest,
                "coarse {now} ns ahead of the clock's {highest}"
            );
        }
    }
}
