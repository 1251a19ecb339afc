//! Retirement: memory that readers may still reach (nodes, replaced tables) is freed only
//! after a light grace period (light.rs) and then a crossbeam-epoch one.
//!
//! The maintainer makes the memory unreachable, then [`retire`]s a function that frees it: the
//! function joins a process-wide queue with a light token. Whoever [`collect`]s (every
//! maintenance pass, the explicit ones, and the reclaimer thread) moves grace periods along
//! and hands each function whose token has passed to crossbeam-epoch (`Guard::defer`), which
//! runs it once every thread pinned at that moment has unpinned. Each function carries the
//! name of the cache that retired it ([`owner`]): when that cache is dropped, what it still
//! has queued runs at once ([`release_owner`]), since nothing can reach its memory any more.
//!
//! **The reclaimer thread.** Reads no longer pin crossbeam-epoch, so a phase of reads only
//! would move neither kind of grace period along, and memory retired just before it would
//! wait for the next write. While anything retired is not freed yet, one process-wide thread
//! therefore collects every millisecond and flushes crossbeam-epoch (which lets it advance
//! and free what has expired); it exits after about 50 ms with nothing outstanding, and is
//! started again by the next retirement. So retired memory is freed within a few
//! milliseconds of the last reader that could hold it leaving, even if no thread of the
//! process writes again (a read that never ends holds it, as a pin that never ends holds
//! crossbeam's epoch; a panic in user code the thread runs is dropped, and it carries on).
//! Where the thread cannot be spawned, collection happens in maintenance passes only.
//!
//! The same thread runs *chores* ([`Chore`]): work that moves along with grace periods and
//! would otherwise wait for the next write. A chore is registered (weakly) with a counter of
//! pending work; while the counter is not zero, the thread runs the chore every tick. (The
//! engine registers one per cache to finish growths that writes left half-way, see
//! `raw/maint`; this module knows nothing of what a chore does.)

#[cfg(not(loom))]
use crate::sync::{Arc, Weak};
use std::collections::VecDeque;

#[cfg(not(loom))]
use crate::sync::AtomicBool;
use crate::sync::epoch::{self, Guard};
use crate::sync::{AtomicU64, AtomicUsize, Mutex, Ordering, TryLockError};

use super::light;

/// A retired object's free function.
type Free = Box<dyn FnOnce() + Send>;

/// A queued function: its light token, the cache that retired it ([`owner`]), the function.
type Entry = (u64, u64, Free);

struct Queue {
    /// Functions waiting for their light grace period, in token order.
    waiting: Mutex<VecDeque<Entry>>,
    /// Functions retired and not run yet (waiting here, or deferred to crossbeam-epoch).
    outstanding: AtomicUsize,
    /// The next name for a cache ([`owner`]).
    owners: AtomicU64,
    /// Whether the reclaimer thread is running (or being started).
    #[cfg(not(loom))]
    reclaimer: AtomicBool,
    /// The registered chores (see [`Chore`]), each with its count of pending work, so that
    /// only those with work are run.
    #[cfg(not(loom))]
    chores: Mutex<Vec<Registered>>,
}

/// A registered chore: its count of pending work, and the chore.
#[cfg(not(loom))]
type Registered = (Arc<AtomicUsize>, Weak<dyn Chore>);

/// Work the reclaimer thread runs every tick while its count of pending work is not zero (see
/// the module documentation).
#[cfg(not(loom))]
pub(crate) trait Chore: Send + Sync {
    /// Does a step of the work (without waiting for anyone); returns whether work remains.
    fn run(&self) -> bool;
}

/// Registers `chore`, whose count of pending work is `pending` (whoever adds work increments
/// it with SeqCst and then calls [`wake`]). Dead registrations are dropped on the way.
#[cfg(not(loom))]
pub(crate) fn register(pending: Arc<AtomicUsize>, chore: Weak<dyn Chore>) {
    let mut chores = crate::sync::lock(&queue().chores);
    // Dead registrations are dropped when the list is about to double (amortised: registering
    // many stays linear), and by the reclaimer as it goes.
    if chores.len() == chores.capacity() {
        chores.retain(|(_, weak)| weak.strong_count() > 0);
    }
    chores.push((pending, chore));
}

/// Makes sure the reclaimer thread runs (a chore has work).
#[cfg(not(loom))]
pub(crate) fn wake() {
    reclaimer::ensure_running();
}

#[cfg(not(loom))]
fn queue() -> &'static Queue {
    static QUEUE: Queue = Queue {
        waiting: Mutex::new(VecDeque::new()),
        outstanding: AtomicUsize::new(0),
        owners: AtomicU64::new(0),
        reclaimer: AtomicBool::new(false),
        chores: Mutex::new(Vec::new()),
    };
    &QUEUE
}

#[cfg(loom)]
fn queue() -> &'static Queue {
    loom::lazy_static! {
        static ref QUEUE: Queue = Queue {
            waiting: Mutex::new(VecDeque::new()),
            outstanding: AtomicUsize::new(0),
            owners: AtomicU64::new(0),
        };
    }
    &QUEUE
}

/// A new name for a cache in the queue (see [`release_owner`]).
pub(crate) fn owner() -> u64 {
    // Relaxed: only distinctness matters.
    queue().owners.fetch_add(1, Ordering::Relaxed)
}

/// Queues `free` for the cache `owner`, to run once no thread can hold what it frees. The
/// caller has made that memory unreachable already (no new reference can be made).
pub(crate) fn retire(owner: u64, free: impl FnOnce() + Send + 'static) {
    let q = queue();
    // SeqCst: with the load of `reclaimer` in `ensure_running` and the reclaimer's store and
    // load when it exits (a Dekker pair): either the reclaimer sees this count, or this thread
    // sees it gone and starts another. The queue's mutex orders the entries themselves.
    q.outstanding.fetch_add(1, Ordering::SeqCst);
    let free: Free = Box::new(free);
    let mut waiting = crate::sync::lock(&q.waiting);
    // Taken after the memory became unreachable (see light.rs), and under the queue's lock, so
    // that the queue stays in token order (`started` only grows).
    let token = light::token();
    waiting.push_back((token, owner, free));
    drop(waiting);
    #[cfg(not(loom))]
    reclaimer::ensure_running();
}

/// Whether anything retired has not been freed yet.
pub(crate) fn outstanding() -> bool {
    // SeqCst: see `retire`.
    queue().outstanding.load(Ordering::SeqCst) != 0
}

/// Moves grace periods along and hands every function whose light grace period has passed to
/// crossbeam-epoch (starting a grace period at once with `force`). Never waits: if another
/// thread is collecting, it returns.
pub(crate) fn collect(guard: &Guard, force: bool) {
    let q = queue();
    // The newest token: the queue is not held while the grace period is moved along (that
    // may take a `membarrier`, and writers queue under their shard's lock).
    let Some(last) = try_lock(&q.waiting).and_then(|waiting| waiting.back().map(|e| e.0)) else {
        return;
    };
    light::advance(last, force);
    // Popped and deferred under the queue's lock, so that `release_owner` finds each function
    // either still queued or in crossbeam-epoch's hands. (Deferring runs no user code: a full
    // bag goes to the epoch's global queue; functions run at a later collection, the flush
    // below among them.)
    let deferred = match try_lock(&q.waiting) {
        Some(mut waiting) => {
            let mut deferred = false;
            while let Some(&(token, _, _)) = waiting.front() {
                if !light::passed(token) {
                    break;
                }
                let Some((_, _, free)) = waiting.pop_front() else {
                    break;
                };
                let done = Done::taken();
                // Threads pinned now may still hold the memory; the epoch runs this only after
                // they have all unpinned. No light read holds it any more (its grace period
                // passed).
                guard.defer(move || {
                    let _done = done;
                    free();
                });
                deferred = true;
            }
            deferred
        }
        None => false,
    };
    if deferred {
        // Hand them to the global queue now: left in this thread's local bag, they would wait
        // until this thread defers or pins many more times, which an idle thread never does.
        // From the queue, any thread's next collection frees them.
        guard.flush();
    }
}

/// A function taken from the queue: counted as run (`outstanding`) when this is dropped, after
/// the function, even if a key's or value's `Drop` panics in it. Under loom the count covers
/// the queue only, so it is counted when taken: the epoch's last deferred functions run while
/// loom tears its statics down, when the queue can no longer be reached.
struct Done;

impl Done {
    fn taken() -> Done {
        // Relaxed: only the count matters here (see `retire`).
        #[cfg(loom)]
        queue().outstanding.fetch_sub(1, Ordering::Relaxed);
        Done
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        // Relaxed: as in `taken`.
        #[cfg(not(loom))]
        queue().outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `try_lock` that ignores poisoning: nothing in the queue's critical sections panics but an
/// allocation failure (an abort), so the queue is consistent at every step.
fn try_lock<T>(m: &Mutex<T>) -> Option<crate::sync::MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// Runs, now, every function `owner` queued that still waits for its grace period: the cache
/// is being dropped, so no thread can reach what they free (its last handle is going, and no
/// operation on it is in flight). What was already handed to crossbeam-epoch goes with the
/// epoch, as before.
pub(crate) fn release_owner(owner: u64) {
    let q = queue();
    let mine: Vec<Free> = {
        let mut waiting = crate::sync::lock(&q.waiting);
        let mut mine = Vec::new();
        let mut kept = VecDeque::with_capacity(waiting.len());
        for (token, o, free) in waiting.drain(..) {
            if o == owner {
                mine.push(free);
            } else {
                kept.push_back((token, o, free));
            }
        }
        *waiting = kept;
        mine
    };
    for free in mine {
        let _done = Done::taken();
        free();
    }
}

/// For explicit maintenance (`run_pending_tasks`, `clear`): forces a light grace period,
/// waits a little for it (see `light::wait`), and hands what it covers to crossbeam-epoch.
pub(crate) fn settle(limit: std::time::Duration) {
    let token = light::token();
    if light::wait(token, limit) {
        collect(&epoch::pin(), false);
    }
}

/// The reclaimer thread (see the module documentation).
#[cfg(not(loom))]
mod reclaimer {
    use super::{Arc, Chore, Ordering, collect, outstanding, queue};
    use std::panic::AssertUnwindSafe;

    /// Runs `f`, turning a panic into `None` (the payload is dropped).
    fn catch_unwind<R>(f: impl FnOnce() -> R) -> Option<R> {
        std::panic::catch_unwind(AssertUnwindSafe(f)).ok()
    }
    use crate::sync::epoch;
    use std::time::Duration;

    /// Time between two collections.
    const TICK: Duration = Duration::from_millis(1);
    /// Ticks with nothing outstanding before the thread exits.
    const IDLE_TICKS: u32 = 50;

    pub(super) fn ensure_running() {
        let q = queue();
        // SeqCst: see `retire`.
        if q.reclaimer.load(Ordering::SeqCst) {
            return;
        }
        // Acquire/Relaxed: only one thread starts it; nothing is published through the flag.
        if q.reclaimer
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("evanesce-reclaimer".into())
            .spawn(run);
        if spawned.is_err() {
            // Collection happens in maintenance passes only; try again at a later retirement.
            // Release: pairs with the Acquire CAS above.
            q.reclaimer.store(false, Ordering::Release);
        }
    }

    fn run() {
        let q = queue();
        let mut idle = 0;
        loop {
            std::thread::sleep(TICK);
            // User code runs here (a hasher, `Eq`, a weigher, a listener, a key's or value's
            // `Drop`): a panic in it is this tick's loss, never the thread's.
            let busy = catch_unwind(run_chores).unwrap_or(true);
            let _ = catch_unwind(|| {
                let guard = epoch::pin();
                collect(&guard, false);
                // Lets crossbeam-epoch advance and free what has expired (the functions
                // deferred above among them, a few ticks later).
                guard.flush();
            });
            if busy || outstanding() {
                idle = 0;
                continue;
            }
            idle += 1;
            if idle < IDLE_TICKS {
                continue;
            }
            // SeqCst: see `retire`.
            q.reclaimer.store(false, Ordering::SeqCst);
            // A retirement between the check above and the store saw the thread running and
            // started none: look once more, and go on if there is something.
            if !(outstanding() || catch_unwind(run_chores).unwrap_or(true))
                || q.reclaimer
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
            {
                return;
            }
            idle = 0;
        }
    }

    /// Runs every registered chore with pending work; returns whether work remains.
    fn run_chores() -> bool {
        // Strong references taken under the lock, used after it: a chore may run user code
        // that registers another one.
        let chores: Vec<Arc<dyn Chore>> = {
            let mut chores = crate::sync::lock(&queue().chores);
            chores.retain(|(_, weak)| weak.strong_count() > 0);
            chores
                .iter()
                // SeqCst: with the increment when work is added and `ensure_running` (the
                // Dekker pair of `retire`, for chores).
                .filter(|(pending, _)| pending.load(Ordering::SeqCst) != 0)
                .filter_map(|(_, weak)| weak.upgrade())
                .collect()
        };
        let mut busy = false;
        for chore in chores {
            busy |= chore.run();
        }
        busy
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A chore (a cache's growth help, in the engine) that panics the first times it runs.
    struct Panicky(AtomicUsize);

    impl Chore for Panicky {
        fn run(&self) -> bool {
            // Relaxed: a test counter.
            if self.0.fetch_add(1, Ordering::Relaxed) < 3 {
                panic!("a listener panicked during a pass");
            }
            false
        }
    }

    /// The reclaimer thread runs user code (a chore: a growth's pass, with a listener and a
    /// hasher); a panic there must not stop it, or retired memory would wait for writes
    /// forever after.
    #[test]
    fn the_reclaimer_survives_a_panic_in_a_pass() {
        let panicky: Arc<dyn Chore> = Arc::new(Panicky(AtomicUsize::new(0)));
        let growing = Arc::new(AtomicUsize::new(1));
        register(growing.clone(), Arc::downgrade(&panicky));
        wake();
        // Let it tick into the panics.
        std::thread::sleep(Duration::from_millis(20));
        // Relaxed: test flags.
        growing.store(0, Ordering::Relaxed);
        let freed = Arc::new(AtomicBool::new(false));
        let flag = freed.clone();
        retire(owner(), move || flag.store(true, Ordering::Relaxed));
        // No call here collects: only the reclaimer can run it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !freed.load(Ordering::Relaxed) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(freed.load(Ordering::Relaxed), "the reclaimer stopped");
        drop(panicky);
    }
}
