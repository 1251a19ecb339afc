//! Delivering the engine's removals to the JS `dispose` hooks.
//!
//! The engine reports a removed session on whichever thread removed it: the JS thread of the
//! call that removed it (`destroy`, `set` over a session, `clear`, an eviction or expiry that
//! a write's maintenance pass ran), or one of the engine's own threads (the `checkPeriod`
//! sweeper, the reclaimer, a `prune` on the libuv pool). JS may only run on its own thread, so
//! there are two paths:
//!
//! - **In place.** While a JS store whose options have a `dispose` calls into the engine, its
//!   thread is marked ([`in_place`]); removals reported on that thread during the call are
//!   collected and returned by the call, and the JS layer calls `dispose` for each before the
//!   method's callback, in the order the engine reported them (memorystore calls `dispose`
//!   synchronously inside `set`, `destroy` and `clear`, too).
//! - **Queued.** Any other removal is appended to the engine's queue, and the first JS store
//!   subscribed to the engine is woken through a napi thread-safe function (non-blocking,
//!   unreferenced: it never blocks the engine's thread and never keeps the process alive). When
//!   its JS thread runs the wake-up, it takes the whole queue and calls `dispose` for each, in
//!   queue order. A wake-up is sent only when the queue goes from empty to not empty, so a
//!   burst of expiries is one JS task.
//!
//! Every removal takes exactly one of the two paths, so each is delivered once (to one store
//! when several stores share an engine through `name`). If no store with a `dispose` is open,
//! queued removals are dropped. The queue is unbounded: a JS thread that never yields lets it
//! grow.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use evanesce::RemovalCause;
use napi::bindgen_prelude::Buffer;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Either, Status};
use napi_derive::napi;

use crate::raw::{Kind, Raw};

/// A removal as JS sees it: `dispose(id, value, cause)`.
#[napi(object)]
pub struct Removal {
    /// The session id.
    pub id: String,
    /// The stored value as the serializer returned it (a string, or a Buffer), or undefined if
    /// the stored bytes were not a session of this addon.
    pub value: Option<Either<String, Buffer>>,
    /// `"expired"`, `"evicted"`, `"destroyed"`, `"replaced"` or `"cleared"`.
    pub cause: String,
}

impl Removal {
    fn new(id: &str, session: Option<Raw>, cause: RemovalCause) -> Self {
        let value = session.map(|raw| match raw.kind {
            Kind::Text => match String::from_utf8(raw.value) {
                Ok(text) => Either::A(text),
                // The serializer checked it when it decoded; keep the bytes if not.
                Err(e) => Either::B(e.into_bytes().into()),
            },
            Kind::Bytes => Either::B(raw.value.into()),
        });
        let cause = match cause {
            RemovalCause::Expired => "expired",
            RemovalCause::Size => "evicted",
            RemovalCause::Explicit => "destroyed",
            RemovalCause::Replaced => "replaced",
            RemovalCause::Cleared => "cleared",
        };
        Self {
            id: id.to_owned(),
            value,
            cause: cause.to_owned(),
        }
    }
}

/// Wakes a subscribed JS thread; its callback takes the queue (see [`Router::subscribe`]).
pub type Wake = ThreadsafeFunction<(), (), Vec<Removal>, Status, false, true>;

thread_local! {
    /// The engine whose removals this thread collects in place, and what it collected.
    static IN_PLACE: RefCell<Option<(u64, Vec<Removal>)>> = const { RefCell::new(None) };
}

/// Runs `f` (a call into engine `engine` from its JS thread) collecting in place the removals
/// the engine reports on this thread meanwhile; returns them with `f`'s result.
pub fn in_place<R>(engine: u64, f: impl FnOnce() -> R) -> (R, Vec<Removal>) {
    struct Restore(Option<(u64, Vec<Removal>)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            IN_PLACE.with(|slot| *slot.borrow_mut() = outer);
        }
    }
    let restore = Restore(IN_PLACE.with(|slot| slot.borrow_mut().replace((engine, Vec::new()))));
    let result = f();
    let collected = IN_PLACE
        .with(|slot| slot.borrow_mut().take())
        .map(|(_, removals)| removals)
        .unwrap_or_default();
    drop(restore);
    (result, collected)
}

/// One engine's dispose routing: its queue and the JS stores subscribed to it.
#[derive(Default)]
pub struct Router {
    id: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queue: Vec<Removal>,
    /// A wake-up was sent and its callback has not taken the queue yet.
    woken: bool,
    /// Subscribed JS stores, oldest first: (subscription id, wake-up).
    subscribers: Vec<(u64, Wake)>,
    next_subscription: u64,
}

impl Router {
    pub fn new(id: u64) -> Self {
        Self {
            id,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the queue consistent (every step is a push or
        // a take), so a poisoned lock is used as it is.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The engine's listener: a session left the store.
    pub fn removed(&self, id: &str, session: Option<Raw>, cause: RemovalCause) {
        let mut removal = Some((session, cause));
        IN_PLACE.with(|slot| {
            if let Some((engine, collected)) = slot.borrow_mut().as_mut()
                && *engine == self.id
                && let Some((session, cause)) = removal.take()
            {
                collected.push(Removal::new(id, session, cause));
            }
        });
        let Some((session, cause)) = removal else {
            return;
        };
        let mut state = self.state();
        if state.subscribers.is_empty() {
            return;
        }
        state.queue.push(Removal::new(id, session, cause));
        if !state.woken {
            wake(&mut state);
        }
    }

    /// Subscribes a JS store; `make_wake` builds its wake-up from the function that takes the
    /// queue. Returns the subscription id for [`unsubscribe`](Self::unsubscribe).
    pub fn subscribe(
        self: &Arc<Self>,
        make_wake: impl FnOnce(Weak<Router>) -> napi::Result<Wake>,
    ) -> napi::Result<u64> {
        let wake_fn = make_wake(Arc::downgrade(self))?;
        let mut state = self.state();
        state.next_subscription += 1;
        let id = state.next_subscription;
        state.subscribers.push((id, wake_fn));
        Ok(id)
    }

    /// Ends a subscription; if its store was woken and had not taken the queue yet, the next
    /// subscriber is woken instead.
    pub fn unsubscribe(&self, subscription: u64) {
        let mut state = self.state();
        let Some(at) = state
            .subscribers
            .iter()
            .position(|(id, _)| *id == subscription)
        else {
            return;
        };
        let (_, gone) = state.subscribers.remove(at);
        if state.subscribers.is_empty() {
            state.queue.clear();
            state.woken = false;
        } else if at == 0 && state.woken {
            wake(&mut state);
        }
        drop(state);
        drop(gone);
    }

    /// The wake-up's callback, on the woken JS thread: everything queued so far.
    pub fn take(&self) -> Vec<Removal> {
        let mut state = self.state();
        state.woken = false;
        std::mem::take(&mut state.queue)
    }
}

/// Wakes the oldest subscriber whose JS thread still runs (a wake-up that fails belongs to an
/// environment that is shutting down: that subscriber is dropped).
fn wake(state: &mut State) {
    while let Some((_, first)) = state.subscribers.first() {
        if first.call((), ThreadsafeFunctionCallMode::NonBlocking) == Status::Ok {
            state.woken = true;
            return;
        }
        state.subscribers.remove(0);
    }
    state.queue.clear();
    state.woken = false;
}
