//! Light read-side protection: a lookup announces itself with plain stores, and the thread
//! that reclaims memory pays for the ordering instead, with one process-wide barrier.
//!
//! # Why
//!
//! crossbeam-epoch's `pin` executes a full barrier (a `lock cmpxchg` on x86) on every pin.
//! A lookup in a large table is two dependent cache misses (bucket, node); behind a full
//! barrier the next lookup's loads cannot start early, so consecutive reads overlap little,
//! and crossbeam's pin and unpin cost about a quarter of a hit. Reads here do no
//! read-modify-write and, on Linux, no fence: the processor runs consecutive lookups' misses
//! in parallel. Writers, the maintainer and iterators keep crossbeam's pin; memory that
//! readers can reach is freed only after *both* a crossbeam grace period and one of this
//! module's (retire.rs).
//!
//! # Protocol
//!
//! Each thread that reads owns a [`Slot`], whose `seq` is odd while the thread is inside a
//! read (nested reads change nothing). Entering: `seq + 1` with a plain store (only the owner
//! writes `seq`) and a compiler fence. Leaving: `seq + 1` with a Release store.
//!
//! A *grace period* is the reclaimer's side, one at a time for the process, run by whoever
//! polls ([`advance`]):
//! 1. `started += 1` (a SeqCst store);
//! 2. the heavy barrier: `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, after which every
//!    thread of the process has executed a full barrier at some point during the call (a
//!    running thread through an interrupt, a descheduled one at its last context switch),
//!    then a SeqCst fence;
//! 3. a snapshot (Acquire loads) of every slot whose `seq` is odd. The grace period is
//!    complete (`completed = started`, Release) once each of those slots has moved on from the
//!    value in the snapshot (Acquire loads).
//!
//! To retire an object, a writer first makes it unreachable, then takes a [`token`]: a
//! SeqCst fence, then `started + 1`. The object may be freed once `completed >= token`
//! ([`passed`], an Acquire load).
//!
//! **Why that is enough.** Let `U` be the unlink, `F` the retirer's fence after it, and `G`
//! the grace period numbered `token = s + 1` (`s` is what the retirer read after `F`). `G`
//! stores `s + 1` into `started` before its barrier `H`. The retirer read `s`, not `s + 1`,
//! so `F` precedes `H`'s fence in the single total order of SeqCst operations (C++
//! \[atomics.order\]: had `H`'s fence come first, a load after `F` would see the store made
//! before it). So whatever any thread loads after its point of `H` is ordered after `U`: it
//! cannot find the object. Now take a reader `R` holding a reference to the object, in a read
//! session entered with store `E`, which precedes every load `L` of that session. If `E` comes
//! before `R`'s point of `H`, `E` is visible to the snapshot taken after `H` returned: the
//! snapshot holds `R`'s odd `seq`, and `G` completes only once `R` has left (its Release store
//! pairs with the Acquire load that sees it, so every read of the session happens before the
//! free). If `E` comes after `R`'s point of `H`, so do the `L`: they cannot have found the
//! object. The same holds for the session's later reads, for sessions entered later, and for
//! a slot registered after the snapshot read the registry (its registration, and so its
//! first read, comes after its point of `H`). A slot the snapshot saw outside a read may have
//! just left one: the snapshot's Acquire load orders that read before the free as well.
//!
//! In this form the argument rests on the kernel's guarantee for `membarrier` (a Relaxed
//! store and a compiler fence are outside what the language's memory model can order on its
//! own). Where `membarrier` is not available (another OS, an old kernel, a seccomp filter that
//! refuses it), readers execute a SeqCst fence after entering instead (so reads do pay a
//! barrier there), and the heavy barrier is the SeqCst fence alone: the same argument, with
//! `R`'s own fence as its point of `H`, entirely within the language's model. Under loom the
//! fences are used, so the models check that form of the protocol.
//!
//! If `membarrier` fails after the process registered for it (a seccomp filter installed
//! later), the grace period falls back to `MEMBARRIER_CMD_GLOBAL` (slow, but it needs no
//! registration); if that fails too, the grace period does not complete: memory is kept,
//! never freed early.
//!
//! A grace period starts only when a token needs it, and at most once per [`MIN_INTERVAL`]
//! unless forced (explicit maintenance forces one): the other cores take at most a few
//! thousand barrier interrupts per second from ordinary retirements. One `membarrier`
//! measured 115 ns on the 2-core machine of the README (its cost grows with the number of
//! cores running the process).
//!
//! Slots are allocated on a thread's first read, given back when the thread exits and reused
//! by later threads, and never freed (a process holds at most as many as it ever had threads
//! at once). A read made after its thread's slot was given back (from another thread-local's
//! destructor) runs under a crossbeam pin instead, which the freeing also waits for.
//!
//! After `fork`, a thread of the parent that was inside a read (or polling a grace period, or
//! the reclaimer thread holding the retirement queue) leaves the child's grace periods stuck,
//! so the child keeps what it retires (or blocks on its first retirement); crossbeam-epoch has
//! the same limitation with a thread pinned at the fork. Fork before building caches, or exec
//! after forking.

use std::cell::Cell;
use std::ptr;

use crossbeam_utils::CachePadded;

use crate::sync::epoch::{self, Guard};
use crate::sync::{AtomicBool, AtomicPtr, AtomicU64, Mutex, Ordering, TryLockError, fence};

/// Shortest time between two grace periods that nobody forced.
#[cfg(not(loom))]
const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_micros(200);

/// Proof that the calling thread is protected from reclamation: pinned to crossbeam-epoch,
/// or inside a light read. A node or table reached while one is held is not freed before it
/// is dropped: memory readers can reach is freed after a grace period of both kinds.
///
/// # Safety
/// Only a type whose live values guarantee that may implement it: the lookups' `// SAFETY:`
/// arguments (`Table::current`, `Table::find`, ...) rely on it.
pub(crate) unsafe trait Protected {}

// SAFETY: a crossbeam guard pins the thread; retired memory is freed through
// `Guard::defer` after every pinned thread has unpinned (retire.rs).
unsafe impl Protected for Guard {}

// SAFETY: a `ReadGuard` is made only by `read`, inside a light read (or a nested one, or
// under a crossbeam pin), and the read ends when it is dropped; retired memory waits for a
// light grace period (retire.rs).
unsafe impl Protected for ReadGuard {}

/// One thread's announcement.
struct Slot {
    /// Odd while the owning thread is inside a read. Written only by the owner.
    seq: AtomicU64,
    /// Whether a thread owns the slot.
    owned: AtomicBool,
    /// The next slot of the registry; written before the slot is published, then immutable.
    next: *const CachePadded<Slot>,
}

// SAFETY: `next` is written only before the slot is published (by the Release CAS that links
// it into the registry) and read only after an Acquire load that saw it published; the other
// fields are atomics.
unsafe impl Sync for Slot {}
// SAFETY: as above; a slot is never freed (outside loom), so the pointer stays valid.
unsafe impl Send for Slot {}

/// How readers and grace periods order themselves (decided once, before any light read).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Barrier {
    /// Readers need no fence: grace periods use `membarrier`.
    Membarrier,
    /// Readers execute a SeqCst fence; grace periods a SeqCst fence.
    Fence,
}

/// The process-wide state: the registry of slots and the grace periods.
struct Domain {
    /// Head of the registry, a push-only list of slots.
    head: AtomicPtr<CachePadded<Slot>>,
    /// Grace periods started.
    started: AtomicU64,
    /// Grace periods completed (`completed == started` when none is in flight).
    completed: AtomicU64,
    /// Whether readers need their own fence (set once by [`init`], before the first slot is
    /// handed out; `true` until then, which is always safe).
    readers_fence: AtomicBool,
    /// The grace period in flight; whoever polls takes the lock with `try_lock`.
    gp: Mutex<GracePeriod>,
}

#[derive(Default)]
struct GracePeriod {
    phase: Phase,
    /// The slots that were inside a read at the barrier, with their `seq` then.
    waiting: Vec<(&'static Slot, u64)>,
    /// When the last grace period started.
    #[cfg(not(loom))]
    last_start: Option<std::time::Instant>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No grace period in flight (`completed == started`).
    #[default]
    Idle,
    /// `started` was incremented; the barrier is still to be executed.
    Barrier,
    /// The barrier was executed and `waiting` taken; waiting for those readers to leave.
    Waiting,
}

#[cfg(not(loom))]
impl Domain {
    const fn new() -> Self {
        Self {
            head: AtomicPtr::new(ptr::null_mut()),
            started: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            readers_fence: AtomicBool::new(true),
            gp: Mutex::new(GracePeriod {
                phase: Phase::Idle,
                waiting: Vec::new(),
                last_start: None,
            }),
        }
    }
}

/// A plain static: no initialisation check on access.
#[cfg(not(loom))]
fn domain() -> &'static Domain {
    static DOMAIN: Domain = Domain::new();
    &DOMAIN
}

#[cfg(loom)]
fn domain() -> &'static Domain {
    loom::lazy_static! {
        static ref DOMAIN: Domain = Domain {
            head: AtomicPtr::new(ptr::null_mut()),
            started: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            readers_fence: AtomicBool::new(true),
            gp: Mutex::new(GracePeriod::default()),
        };
    }
    &DOMAIN
}

/// Set in a thread's slot word when its reads must execute a fence (see [`Barrier`]).
const FENCE_TAG: usize = 1;

#[cfg(not(loom))]
std::thread_local! {
    /// This thread's slot, as an address tagged with [`FENCE_TAG`] (slots are aligned to a
    /// cache line, so the low bit is free); 0 before the thread's first read, and again once
    /// [`OWNER`] gave the slot back. No destructor, so a read is one plain load of it.
    static SLOT: Cell<usize> = const { Cell::new(0) };
    /// Gives the slot back when the thread exits (its destructor is registered by the first
    /// read).
    static OWNER: Owner = const { Owner };
}

#[cfg(loom)]
loom::thread_local! {
    static SLOT: Cell<usize> = Cell::new(0);
    static OWNER: Owner = Owner;
}

/// See [`OWNER`].
struct Owner;

impl Drop for Owner {
    fn drop(&mut self) {
        // Under loom, thread-locals are destroyed in an unspecified order (a hash map's), so
        // an atomic access here would make the models nondeterministic: the slot is kept.
        #[cfg(not(loom))]
        {
            let word = SLOT.try_with(|s| s.replace(0)).unwrap_or(0);
            if word != 0 {
                let slot = slot_of(word);
                // Relaxed: only this thread writes `seq`.
                debug_assert!(slot.seq.load(Ordering::Relaxed) & 1 == 0);
                // Release: pairs with the Acquire CAS of the next owner, which continues from
                // this `seq` (a grace period may still hold the slot in its snapshot, and must
                // see it move on only when a read session really ends).
                slot.owned.store(false, Ordering::Release);
            }
        }
    }
}

/// The slot a slot word names.
#[inline]
fn slot_of(word: usize) -> &'static Slot {
    // SAFETY: a non-zero slot word is the address of a published slot (plus a tag), and
    // published slots are never freed (outside loom, where they live as long as the model).
    unsafe { &*((word & !FENCE_TAG) as *const Slot) }
}

/// A light read in progress; leaving it is dropping it. It stays on its thread.
pub(crate) struct ReadGuard {
    /// The slot this guard entered; null for a read nested in another (or under a crossbeam
    /// pin, see [`read`]), which has nothing to leave.
    slot: *const Slot,
    /// The `seq` to store when leaving.
    leave: u64,
}

impl ReadGuard {
    const NESTED: ReadGuard = ReadGuard {
        slot: ptr::null(),
        leave: 0,
    };
}

impl Drop for ReadGuard {
    #[inline]
    fn drop(&mut self) {
        if !self.slot.is_null() {
            // SAFETY: slots are never freed; this thread owns it while a read is in progress.
            let slot = unsafe { &*self.slot };
            // Release: every read of the session happens before this store; pairs with the
            // Acquire loads in `GracePeriod` that see the slot move on.
            slot.seq.store(self.leave, Ordering::Release);
        }
    }
}

/// Runs `f` inside a light read on this thread. Nested reads share the outermost one.
///
/// A thread's first read registers it (takes a slot); a read made after the thread gave its
/// slot back (from another thread-local's destructor) runs under a crossbeam pin instead,
/// which the freeing of memory also waits for.
#[inline]
pub(crate) fn read<R>(f: impl FnOnce(&ReadGuard) -> R) -> R {
    let word = SLOT.try_with(Cell::get).unwrap_or(0);
    if word == 0 {
        return read_slow(f);
    }
    let guard = enter(word);
    f(&guard)
}

#[inline]
fn enter(word: usize) -> ReadGuard {
    let slot = slot_of(word);
    // Relaxed: only this thread writes `seq`.
    let seq = slot.seq.load(Ordering::Relaxed);
    if seq & 1 == 1 {
        // Nested inside a read of this thread: the outer one protects both.
        return ReadGuard::NESTED;
    }
    // Relaxed: ordered by what follows (see the module documentation).
    slot.seq.store(seq + 1, Ordering::Relaxed);
    if word & FENCE_TAG != 0 {
        fence(Ordering::SeqCst);
    } else {
        // Grace periods use `membarrier`: the loads of the read only must not be moved before
        // the announcement by the compiler (the processor may run them early; the barrier
        // covers that).
        #[cfg(not(loom))]
        crate::sync::compiler_fence(Ordering::SeqCst);
    }
    ReadGuard {
        slot,
        leave: seq + 2,
    }
}

#[cold]
#[inline(never)]
fn read_slow<R>(f: impl FnOnce(&ReadGuard) -> R) -> R {
    match register() {
        Some(word) => {
            let guard = enter(word);
            f(&guard)
        }
        None => {
            let _pin = epoch::pin();
            f(&ReadGuard::NESTED)
        }
    }
}

/// Gives this thread a slot; `None` if it is exiting (its [`OWNER`] is gone).
fn register() -> Option<usize> {
    let barrier = barrier();
    OWNER.try_with(|_| ()).ok()?;
    let word = claim() as usize
        | match barrier {
            Barrier::Fence => FENCE_TAG,
            Barrier::Membarrier => 0,
        };
    SLOT.try_with(|s| s.set(word)).ok()?;
    Some(word)
}

/// Takes a free slot of the registry, or adds one.
fn claim() -> *const Slot {
    let d = domain();
    // Acquire: pairs with the Release CAS that published the head slot (its `next`).
    let mut cur = d.head.load(Ordering::Acquire);
    while !cur.is_null() {
        // SAFETY: published slots are never freed (outside loom, see `Domain`).
        let slot: &Slot = unsafe { &*cur };
        // Acquire: pairs with the Release store of the previous owner (its last `seq`).
        if slot
            .owned
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return slot;
        }
        cur = slot.next.cast_mut();
    }
    let mut fresh = Box::new(CachePadded::new(Slot {
        seq: AtomicU64::new(0),
        owned: AtomicBool::new(true),
        next: ptr::null(),
    }));
    // Relaxed: the Release CAS below publishes what `next` points to as well.
    let mut head = d.head.load(Ordering::Relaxed);
    loop {
        fresh.next = head;
        let raw = Box::into_raw(fresh);
        // Release: publishes the slot (its `next`); pairs with the Acquire loads of `head`.
        match d
            .head
            .compare_exchange(head, raw, Ordering::Release, Ordering::Relaxed)
        {
            // SAFETY: `raw` is a valid allocation, published now and never freed.
            Ok(_) => return unsafe { &**raw },
            Err(actual) => {
                // SAFETY: the CAS failed, so `raw` was not published: it is still ours.
                fresh = unsafe { Box::from_raw(raw) };
                head = actual;
            }
        }
    }
}

/// Decides, once per process, how readers and grace periods order themselves (and registers
/// for `membarrier`, which can take a while on some kernels: caches call it when they are
/// built, so that the first read does not).
pub(crate) fn init() {
    #[cfg(not(loom))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if membarrier::register() {
                // Relaxed: published by the `Once`, which every thread passes before its
                // first light read.
                domain().readers_fence.store(false, Ordering::Relaxed);
            }
        });
    }
}

/// How grace periods order themselves with readers. Decided by [`init`], which this thread
/// passes first: a grace period run by a thread that never read must not use a stale answer.
fn barrier() -> Barrier {
    init();
    // Relaxed: written once under the `Once` that `init` just synchronised with.
    if domain().readers_fence.load(Ordering::Relaxed) {
        Barrier::Fence
    } else {
        Barrier::Membarrier
    }
}

/// The token a retirer takes after making an object unreachable: the object may be freed
/// once [`passed`] says so.
pub(crate) fn token() -> u64 {
    // SeqCst: orders the unlink before the load (see "Why that is enough").
    fence(Ordering::SeqCst);
    // Relaxed: ordered by the fence.
    domain().started.load(Ordering::Relaxed) + 1
}

/// Whether the grace period `token` stands for has completed.
#[inline]
pub(crate) fn passed(token: u64) -> bool {
    // Acquire: pairs with the Release store that completed the grace period, so the readers'
    // last reads happen before whatever the caller frees.
    domain().completed.load(Ordering::Acquire) >= token
}

/// Moves grace periods along towards `token` (completes the one in flight if its readers have
/// left, starts the next if `token` needs it and the last one started long enough ago, or
/// at once with `force`). Never waits: if another thread is polling, it returns. Returns
/// whether `token` has passed.
pub(crate) fn advance(token: u64, force: bool) -> bool {
    if passed(token) {
        return true;
    }
    let d = domain();
    let mut gp = match d.gp.try_lock() {
        Ok(gp) => gp,
        // Nothing in a grace period's critical section panics on purpose (an allocation
        // failure aborts); its state is consistent at every step.
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => return false,
    };
    gp.poll(d, token, force);
    passed(token)
}

/// Waits a little for `token` to pass, forcing a grace period: for explicit maintenance
/// (`run_pending_tasks`, `clear`). Gives up after `limit` (a reader that stays inside a read,
/// such as a `get_with` closure that blocks, must not make the caller wait), and at once if
/// this thread is itself inside a read (it would wait for itself). Returns whether it passed.
pub(crate) fn wait(token: u64, limit: std::time::Duration) -> bool {
    if advance(token, true) {
        return true;
    }
    let word = SLOT.try_with(Cell::get).unwrap_or(0);
    // Relaxed: only this thread writes `seq`.
    if word != 0 && slot_of(word).seq.load(Ordering::Relaxed) & 1 == 1 {
        return false;
    }
    #[cfg(not(loom))]
    {
        let until = std::time::Instant::now() + limit;
        while std::time::Instant::now() < until {
            std::thread::yield_now();
            if advance(token, true) {
                return true;
            }
        }
        false
    }
    #[cfg(loom)]
    {
        let _ = limit;
        for _ in 0..3 {
            loom::thread::yield_now();
            if advance(token, true) {
                return true;
            }
        }
        false
    }
}

impl GracePeriod {
    fn poll(&mut self, d: &Domain, token: u64, force: bool) {
        loop {
            match self.phase {
                Phase::Idle => {
                    // Relaxed: `started` is written only under this lock.
                    let started = d.started.load(Ordering::Relaxed);
                    if started >= token || !self.may_start(force) {
                        return;
                    }
                    // SeqCst: the store `token`'s fence and load are ordered against, before the
                    // barrier (see "Why that is enough").
                    d.started.store(started + 1, Ordering::SeqCst);
                    self.phase = Phase::Barrier;
                }
                Phase::Barrier => {
                    if barrier() == Barrier::Membarrier && !membarrier::run() {
                        // Both kinds of barrier were refused (see the module documentation):
                        // the grace period waits (memory is kept, never freed early) and the
                        // next poll retries.
                        return;
                    }
                    // SeqCst: `H`'s fence in "Why that is enough": after the store to `started`
                    // above, before the snapshot; ordered with `token`'s fence (and, in the
                    // fence mode, with the readers' fences in `enter`).
                    fence(Ordering::SeqCst);
                    self.snapshot(d);
                    self.phase = Phase::Waiting;
                }
                Phase::Waiting => {
                    // Acquire: pairs with the Release store of a reader leaving its read.
                    self.waiting
                        .retain(|(slot, seq)| slot.seq.load(Ordering::Acquire) == *seq);
                    if !self.waiting.is_empty() {
                        return;
                    }
                    // Relaxed: `started` is written only under this lock.
                    let started = d.started.load(Ordering::Relaxed);
                    // Release: pairs with the Acquire in `passed` (the readers' last reads,
                    // acquired above, happen before any free that follows).
                    d.completed.store(started, Ordering::Release);
                    self.phase = Phase::Idle;
                }
            }
        }
    }

    /// Whether a grace period may start now (rate limit, see [`MIN_INTERVAL`]).
    fn may_start(&mut self, force: bool) -> bool {
        #[cfg(not(loom))]
        {
            let now = std::time::Instant::now();
            if !force
                && self
                    .last_start
                    .is_some_and(|last| now.duration_since(last) < MIN_INTERVAL)
            {
                return false;
            }
            self.last_start = Some(now);
        }
        let _ = force;
        true
    }

    /// Records every slot that is inside a read now.
    fn snapshot(&mut self, d: &Domain) {
        self.waiting.clear();
        // Acquire: pairs with the Release CAS that published the head slot.
        let mut cur = d.head.load(Ordering::Acquire);
        while !cur.is_null() {
            // SAFETY: published slots are never freed (outside loom).
            let slot: &'static Slot = unsafe { &*cur };
            // Acquire: a slot seen outside a read may have just left one, whose reads must
            // happen before whatever this grace period lets be freed (pairs with the Release
            // store of the reader leaving). Ordered after the barrier by the fence that follows
            // the barrier (see "Why that is enough").
            let seq = slot.seq.load(Ordering::Acquire);
            if seq & 1 == 1 {
                self.waiting.push((slot, seq));
            }
            cur = slot.next.cast_mut();
        }
    }
}

/// Linux's `membarrier(2)`.
#[cfg(not(loom))]
mod membarrier {
    #[cfg(target_os = "linux")]
    const CMD_QUERY: libc::c_int = 0;
    #[cfg(target_os = "linux")]
    const CMD_GLOBAL: libc::c_int = 1;
    #[cfg(target_os = "linux")]
    const CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
    #[cfg(target_os = "linux")]
    const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

    #[cfg(target_os = "linux")]
    fn call(cmd: libc::c_int) -> libc::c_long {
        // SAFETY: membarrier takes two integer arguments and touches no memory of ours.
        unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                cmd,
                0 as libc::c_uint,
                0 as libc::c_int,
            )
        }
    }

    /// Registers the process for expedited private barriers; false if the kernel does not
    /// offer them (or refuses).
    pub(super) fn register() -> bool {
        // Miri cannot run the system call: readers take their fence form there.
        if cfg!(miri) {
            return false;
        }
        #[cfg(target_os = "linux")]
        {
            let supported = call(CMD_QUERY);
            supported >= 0
                && supported & libc::c_long::from(CMD_PRIVATE_EXPEDITED) != 0
                && call(CMD_REGISTER_PRIVATE_EXPEDITED) == 0
        }
        #[cfg(not(target_os = "linux"))]
        false
    }

    /// Executes a full barrier on every running thread of the process; if the expedited
    /// command is refused (a seccomp filter installed after registration), the global one,
    /// which waits for every processor to pass a context switch.
    pub(super) fn run() -> bool {
        #[cfg(target_os = "linux")]
        {
            call(CMD_PRIVATE_EXPEDITED) == 0 || call(CMD_GLOBAL) == 0
        }
        #[cfg(not(target_os = "linux"))]
        false
    }
}

#[cfg(loom)]
mod membarrier {
    pub(super) fn run() -> bool {
        false
    }
}

/// loom models of the protocol itself (the engine's use of it is modelled in
/// `tests/loom.rs`). Run with
/// `RUSTFLAGS="--cfg loom --cfg crossbeam_loom" cargo test --release --lib light`.
#[cfg(all(test, loom))]
mod tests {
    use super::*;
    use crate::sync::{Arc, AtomicUsize, UnsafeCell};
    use loom::thread;

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(2);
        builder.check(f);
    }

    /// An object reachable through a link, read by light readers and freed by a retirer
    /// after a grace period. The free is a write to the object: loom reports it if it is not
    /// ordered after every read that found the object.
    struct Shared {
        link: AtomicUsize,
        object: UnsafeCell<u64>,
    }

    impl Shared {
        /// An object of value 7, reachable.
        fn reachable() -> Arc<Shared> {
            Arc::new(Shared {
                link: AtomicUsize::new(1),
                object: UnsafeCell::new(7),
            })
        }
    }

    fn read_object(shared: &Shared) -> Option<u64> {
        read(|_| {
            // Acquire: pairs with the Release that published the object.
            (shared.link.load(Ordering::Acquire) == 1)
                // SAFETY: the object was reachable, and this thread is inside a read.
                .then(|| shared.object.with(|p| unsafe { *p }))
        })
    }

    fn retire(shared: &Shared) {
        // Unlink, then wait out a grace period, then "free" (overwrite) the object.
        shared.link.store(0, Ordering::Release);
        let token = token();
        while !advance(token, true) {
            thread::yield_now();
        }
        // SAFETY: unreachable, and every read that found it has ended (the claim under test).
        shared.object.with_mut(|p| unsafe { *p = 0 });
    }

    #[test]
    fn a_grace_period_waits_for_every_read_that_found_the_object() {
        model(|| {
            let shared = Shared::reachable();
            let reader = {
                let shared = shared.clone();
                thread::spawn(move || read_object(&shared))
            };
            retire(&shared);
            let seen = reader.join().unwrap();
            assert!(seen.is_none() || seen == Some(7), "{seen:?}");
        });
    }

    #[test]
    fn nested_reads_and_a_second_reader() {
        model(|| {
            let shared = Shared::reachable();
            let reader = {
                let shared = shared.clone();
                thread::spawn(move || {
                    read(|_| {
                        // The inner read's end must not end the outer one.
                        let first = read_object(&shared);
                        // SAFETY: as in `read_object`: still inside the outer read.
                        let again = first
                            .is_some()
                            .then(|| shared.object.with(|p| unsafe { *p }));
                        (first, again)
                    })
                })
            };
            let retirer = {
                let shared = shared.clone();
                thread::spawn(move || retire(&shared))
            };
            let seen = read_object(&shared);
            assert!(seen.is_none() || seen == Some(7));
            retirer.join().unwrap();
            let (first, again) = reader.join().unwrap();
            assert_eq!(first, again);
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    fn slots() -> usize {
        let mut n = 0;
        let mut cur = domain().head.load(Ordering::Acquire);
        while !cur.is_null() {
            n += 1;
            // SAFETY: published slots are never freed.
            cur = unsafe { (&*cur).next.cast_mut() };
        }
        n
    }

    #[test]
    fn a_grace_period_waits_for_a_read_in_progress() {
        let (entered, wait_entered) = mpsc::channel();
        let (leave, wait_leave) = mpsc::channel::<()>();
        let reader = thread::spawn(move || {
            read(|_| {
                entered.send(()).unwrap();
                wait_leave.recv().unwrap();
            })
        });
        wait_entered.recv().unwrap();
        let token = token();
        assert!(
            !wait(token, Duration::from_millis(20)),
            "passed during a read"
        );
        assert!(!passed(token));
        leave.send(()).unwrap();
        reader.join().unwrap();
        assert!(
            wait(token, Duration::from_secs(10)),
            "never passed after the read ended"
        );
    }

    #[test]
    fn nested_reads_end_with_the_outer_one() {
        let token = read(|_| {
            read(|_| ());
            let token = token();
            // This thread is inside a read: `wait` must not wait for itself.
            assert!(!wait(token, Duration::from_secs(10)));
            let other = thread::spawn(move || wait(token, Duration::from_millis(20)));
            assert!(
                !other.join().unwrap(),
                "the inner read's end ended the outer one"
            );
            token
        });
        assert!(wait(token, Duration::from_secs(10)));
    }

    #[test]
    fn slots_are_reused_by_later_threads() {
        read(|_| ());
        let before = slots();
        for _ in 0..200 {
            thread::spawn(|| read(|_| ())).join().unwrap();
        }
        // Without reuse, 200 more; with it, at most as many as threads of other tests that
        // were reading at the same time.
        assert!(slots() < before + 50, "{} slots after {before}", slots());
    }
}
