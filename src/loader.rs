//! Single-flight loading: one load per missing key at a time, whoever asks, from threads or
//! from async tasks on any executor.
//!
//! # Protocol
//!
//! A caller that misses looks for a *flight* (a load in progress) of its key in a small
//! registry ([`Registry`]: stripes of `(hash, key, flight)` under a mutex each, matched by
//! `Eq`, never by hash alone). It finds one and waits for it, or registers its own and loads
//! (it *leads*). Before it registers, still holding the stripe's mutex, it looks in the cache
//! once more: a leader removes its flight only after it has stored its value, so a caller
//! that finds neither a flight nor a value knows that no load of its key has finished in
//! between (the value may have been removed again, which is a miss like any other).
//!
//! A leader runs the load with no lock held, then takes its key back out of the registry (the
//! flight stays registered, *publishing*, while the value is stored: callers of the same key
//! keep waiting for it instead of starting a second load; callers of another key with the
//! same hash cannot compare keys with it then, and wait too, a moment, then look again),
//! stores the value (unless the key got a live value meanwhile, which it then takes instead),
//! removes the flight and hands the result to every waiter: the value, `None` for an optional
//! load, or the error (one `Arc`, shared).
//!
//! # Cancellation and panics
//!
//! Everything a leader must undo is in its [`Lead`] ticket, whose `Drop` does it: if the
//! leader's future is dropped mid-load (a timeout, a cancelled task), or its load panics, the
//! flight is removed and its waiters woken with [`Outcome::Abandoned`]; each of them starts
//! over, and one becomes the next leader. A waiter's future that is dropped takes its waker
//! out of the flight. No key is ever left with a flight that nobody runs.
//!
//! # Waiting
//!
//! A waiting thread sleeps on the flight's condition variable; a waiting task returns
//! `Pending` and is woken through its `Waker` (so a task never blocks its executor's thread).
//! Nothing here depends on a runtime.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::sync::{Arc, Condvar, Mutex, lock};

/// A load's error, shared by its leader and every waiter. `std`'s `Arc` (also under loom):
/// it is handed to the caller as `Arc<E>`, and is not a synchronisation primitive.
pub(crate) type SharedError = std::sync::Arc<dyn Any + Send + Sync>;

/// What a load produced.
pub(crate) enum Loaded<V> {
    Value(V),
    /// An optional load found nothing.
    Nothing,
    Error(SharedError),
}

/// How a flight ended, as its waiters see it.
#[derive(Clone)]
pub(crate) enum Outcome<V> {
    /// The value stored (or the live value found instead).
    Ready(V),
    Nothing,
    Error(SharedError),
    /// The leader was dropped or panicked: start over.
    Abandoned,
}

struct FlightState<V> {
    outcome: Option<Outcome<V>>,
    /// Wakers of the tasks waiting; a dropped waiter empties its slot.
    wakers: Vec<Option<Waker>>,
}

/// One load in progress.
pub(crate) struct Flight<V> {
    state: Mutex<FlightState<V>>,
    /// Threads waiting.
    cv: Condvar,
    /// The thread that registered the flight: a synchronous load that asks for a key whose
    /// flight it leads itself (its own key, in a load or a listener) must not wait for itself.
    leader: LeaderId,
}

#[cfg(not(loom))]
type LeaderId = std::thread::ThreadId;
#[cfg(loom)]
type LeaderId = loom::thread::ThreadId;

impl<V: Clone> Flight<V> {
    fn new() -> Self {
        Self {
            state: Mutex::new(FlightState {
                outcome: None,
                wakers: Vec::new(),
            }),
            cv: Condvar::new(),
            leader: crate::sync::thread_id(),
        }
    }

    /// Waits (blocking the thread) for the flight to end.
    pub(crate) fn wait(&self) -> Outcome<V> {
        let mut state = lock(&self.state);
        loop {
            if let Some(outcome) = &state.outcome {
                return outcome.clone();
            }
            state = match self.cv.wait(state) {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
    }

    /// Ends the flight: every waiter, thread or task, gets `outcome`.
    fn end(&self, outcome: Outcome<V>) {
        let wakers = {
            let mut state = lock(&self.state);
            state.outcome = Some(outcome);
            std::mem::take(&mut state.wakers)
        };
        self.cv.notify_all();
        for waker in wakers.into_iter().flatten() {
            waker.wake();
        }
    }
}

/// A task waiting for a flight to end (see [`Flight::wait`] for threads).
pub(crate) struct Wait<V: Clone> {
    flight: Arc<Flight<V>>,
    /// The slot of this task's waker in the flight's list.
    slot: Option<usize>,
}

impl<V: Clone> Wait<V> {
    pub(crate) fn new(flight: Arc<Flight<V>>) -> Self {
        Self { flight, slot: None }
    }
}

impl<V: Clone> Future for Wait<V> {
    type Output = Outcome<V>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<V>> {
        let this = &mut *self;
        let mut state = lock(&this.flight.state);
        if let Some(outcome) = &state.outcome {
            return Poll::Ready(outcome.clone());
        }
        match this.slot {
            Some(i) => match &mut state.wakers[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            },
            None => {
                state.wakers.push(Some(cx.waker().clone()));
                this.slot = Some(state.wakers.len() - 1);
            }
        }
        Poll::Pending
    }
}

impl<V: Clone> Drop for Wait<V> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let mut state = lock(&self.flight.state);
            // The list is emptied when the flight ends; until then the slot is ours.
            if let Some(slot) = state.wakers.get_mut(i) {
                *slot = None;
            }
        }
    }
}

/// A registered flight: its hash, its key (taken back by its leader while it publishes) and
/// the flight.
struct Slot<K, V> {
    hash: u64,
    key: Option<K>,
    flight: Arc<Flight<V>>,
}

type Stripe<K, V> = Mutex<Vec<Slot<K, V>>>;

/// The flights in progress of one cache.
pub(crate) struct Registry<K, V> {
    stripes: Box<[Stripe<K, V>]>,
}

/// What [`Registry::join`] decided.
pub(crate) enum Joined<'r, K, V: Clone> {
    /// The key had a live value after all.
    Hit(V),
    /// Wait for this flight. With `exact`, it loads this key and its outcome is the caller's;
    /// otherwise it is another key's flight of the same hash, publishing: wait, then look
    /// again. The key comes back.
    Wait {
        flight: Arc<Flight<V>>,
        exact: bool,
        key: K,
    },
    /// The flight of this key is led by this very thread (synchronous loads only): load
    /// without single-flight rather than wait for oneself.
    Reentrant(K),
    /// Load: the caller leads the key's flight.
    Lead(Lead<'r, K, V>),
}

impl<K: Eq, V: Clone> Registry<K, V> {
    pub(crate) fn new(stripes: usize) -> Self {
        Self {
            stripes: (0..stripes.max(1))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
        }
    }

    fn stripe(&self, hash: u64) -> &Stripe<K, V> {
        // The low bits: the shard takes the high ones.
        &self.stripes[hash as usize % self.stripes.len()]
    }

    /// Finds `key`'s flight, or (if `hit` finds no value either) registers one led by the
    /// caller. `sync` says whether the caller is a thread that would block (then a flight
    /// this thread leads is not waited for).
    pub(crate) fn join(
        &self,
        hash: u64,
        key: K,
        sync: bool,
        hit: impl FnOnce(&K) -> Option<V>,
    ) -> Joined<'_, K, V> {
        let stripe = self.stripe(hash);
        let mut slots = lock(stripe);
        let found = slots.iter().find_map(|s| {
            if s.hash != hash {
                return None;
            }
            match &s.key {
                Some(k) if *k == key => Some((s.flight.clone(), true)),
                Some(_) => None,
                // Publishing: its key is out, it may be ours.
                None => Some((s.flight.clone(), false)),
            }
        });
        if let Some((flight, exact)) = found {
            drop(slots);
            if sync && flight.leader == crate::sync::thread_id() {
                return Joined::Reentrant(key);
            }
            return Joined::Wait { flight, exact, key };
        }
        // A flight that finished stored its value before it left: look once more, with the
        // stripe held, so that a load that just finished is not repeated.
        if let Some(v) = hit(&key) {
            return Joined::Hit(v);
        }
        let flight = Arc::new(Flight::new());
        slots.push(Slot {
            hash,
            key: Some(key),
            flight: flight.clone(),
        });
        Joined::Lead(Lead {
            stripe,
            flight,
            ended: false,
        })
    }
}

/// The ticket of a flight's leader. Dropped without [`finish`](Self::finish) (the leader's
/// future dropped, or a panic), it removes the flight and wakes its waiters with
/// [`Outcome::Abandoned`].
pub(crate) struct Lead<'r, K, V: Clone> {
    stripe: &'r Stripe<K, V>,
    flight: Arc<Flight<V>>,
    ended: bool,
}

impl<K, V: Clone> Lead<'_, K, V> {
    /// Takes the key back out of the registry to store the value (the flight stays
    /// registered, publishing, until [`finish`](Self::finish)).
    pub(crate) fn take_key(&mut self) -> K {
        let mut slots = lock(self.stripe);
        let slot = slots
            .iter_mut()
            .find(|s| Arc::ptr_eq(&s.flight, &self.flight));
        match slot.and_then(|s| s.key.take()) {
            Some(key) => key,
            None => unreachable!("a flight's key is taken once, by its leader"),
        }
    }

    fn unregister(&self) {
        let mut slots = lock(self.stripe);
        let slot = slots
            .iter()
            .position(|s| Arc::ptr_eq(&s.flight, &self.flight))
            .map(|i| slots.swap_remove(i));
        drop(slots);
        // The key, if still there (the load failed or was abandoned), is dropped here, outside
        // the stripe's lock: its `Drop` may use the cache.
        drop(slot);
    }

    /// Ends the flight: removes it from the registry, then hands `outcome` to the waiters.
    pub(crate) fn finish(mut self, outcome: Outcome<V>) {
        self.ended = true;
        self.unregister();
        self.flight.end(outcome);
    }
}

impl<K, V: Clone> Drop for Lead<'_, K, V> {
    fn drop(&mut self) {
        if !self.ended {
            self.unregister();
            self.flight.end(Outcome::Abandoned);
        }
    }
}
