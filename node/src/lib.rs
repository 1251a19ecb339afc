//! The native half of the npm package `evanesce-session`: express-session's sessions held in
//! the evanesce engine, off the JS heap.
//!
//! The JS layer (`lib/evanesce-session.js`) is memorystore's `Store` subclass: it validates
//! options, serializes sessions with the `serializer` option and computes their lifetimes
//! (memorystore's `getTTL`), and calls this module's [`NativeStore`] with the serialized value
//! and the lifetime. Here they go into an [`evanesce::session::MemoryStore`] whose session type
//! is that opaque value ([`raw`]), so expiry, the `checkPeriod` sweeper, eviction, snapshots and
//! every count run in Rust; `dispose` notifications come back through [`dispose`].
//!
//! Stores created with the same `name` share one engine store across the `worker_threads` of a
//! process ([`registry`]).

#![deny(unsafe_code)]

mod dispose;
mod raw;
mod registry;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use evanesce::session::{Error as StoreError, MemoryStore};
use napi::bindgen_prelude::{AsyncTask, Buffer, BufferSlice, Function};
use napi::{Either, Env, Status, Task};
use napi_derive::napi;

use crate::dispose::{Removal, Router, Wake};
use crate::raw::{Kind, Raw, RawSerializer, header_only};

pub use crate::registry::Engine;

/// The engine store's options: what the JS layer validated. Stores that share a `name` must
/// agree on them (the JS layer compares them with [`NativeStore::engine_options`]).
#[napi(object)]
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineOptions {
    /// At most this many sessions (absent: unbounded).
    pub max: Option<f64>,
    /// At most this many bytes of ids plus serialized sessions (absent: unbounded).
    pub max_bytes: Option<f64>,
    /// The sweeper's period in milliseconds (absent: no sweeper).
    pub check_period: Option<f64>,
    /// memorystore's `stale`.
    pub stale: Option<bool>,
    /// memorystore's `noDisposeOnSet`.
    pub no_dispose_on_set: Option<bool>,
    /// Loaded when the engine store is built, saved by `saveSnapshot` and when it is dropped.
    pub snapshot_file: Option<String>,
    /// Shares the engine store with every store of this name in the process.
    pub name: Option<String>,
}

/// What `getForTouch` returns: the stored value and its write sequence number.
#[napi(object)]
pub struct Stored {
    pub value: Either<String, Buffer>,
    pub seq: f64,
}

/// What `all` returns: ids and values, latest written first.
#[napi(object)]
pub struct Listing {
    pub ids: Vec<String>,
    pub values: Vec<Either<String, Buffer>>,
}

/// The engine's counters.
#[napi(object)]
pub struct StoreStats {
    pub hits: f64,
    pub misses: f64,
    pub inserts: f64,
    pub removals: f64,
    pub evictions: f64,
    pub expirations: f64,
}

/// One JS store's handle on an engine store (shared with other handles of the same name).
#[napi]
pub struct NativeStore {
    engine: Option<Arc<Engine>>,
    /// Whether this store has a `dispose`: its calls then collect removals in place.
    collects: bool,
    subscription: Option<u64>,
}

fn closed() -> napi::Error {
    napi::Error::new(Status::Closing, "the session store is closed")
}

fn store_error(e: StoreError) -> napi::Error {
    let status = match e {
        StoreError::Config(_) => Status::InvalidArg,
        _ => Status::GenericFailure,
    };
    napi::Error::new(status, e.to_string())
}

/// A lifetime in milliseconds from JS (already checked to be positive and not NaN).
fn ttl_from_ms(ms: f64) -> napi::Result<Duration> {
    if ms.is_nan() || ms <= 0.0 {
        return Err(napi::Error::new(
            Status::InvalidArg,
            format!("a session lifetime must be a positive number of milliseconds, got {ms}"),
        ));
    }
    Ok(Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(Duration::MAX))
}

fn incoming(value: Either<String, BufferSlice<'_>>, ttl: Duration) -> Raw {
    match value {
        Either::A(text) => Raw::incoming(Kind::Text, text.into_bytes(), ttl),
        Either::B(bytes) => Raw::incoming(Kind::Bytes, bytes.to_vec(), ttl),
    }
}

fn outgoing(raw: Raw) -> Either<String, Buffer> {
    match raw.kind {
        Kind::Text => match String::from_utf8(raw.value) {
            Ok(text) => Either::A(text),
            Err(e) => Either::B(e.into_bytes().into()),
        },
        Kind::Bytes => Either::B(raw.value.into()),
    }
}

/// Removals collected in place, or null when there are none (the common case).
fn collected(removals: Vec<Removal>) -> Option<Vec<Removal>> {
    (!removals.is_empty()).then_some(removals)
}

#[napi]
impl NativeStore {
    /// Opens the engine store for `options` (or joins the one of the same `name`). `dispose`:
    /// whether the JS store has a `dispose` hook.
    #[napi(constructor)]
    pub fn new(options: EngineOptions, dispose: bool) -> napi::Result<Self> {
        let engine = registry::open(options, dispose)?;
        Ok(Self {
            engine: Some(engine),
            collects: dispose,
            subscription: None,
        })
    }

    fn engine(&self) -> napi::Result<&Arc<Engine>> {
        self.engine.as_ref().ok_or_else(closed)
    }

    fn store(&self) -> napi::Result<&MemoryStore<RawSerializer>> {
        Ok(&self.engine()?.store)
    }

    /// Runs a call into the engine, collecting removals in place if this store has a dispose.
    fn call<R>(
        &self,
        f: impl FnOnce(&MemoryStore<RawSerializer>) -> napi::Result<R>,
    ) -> napi::Result<(R, Option<Vec<Removal>>)> {
        let engine = self.engine()?;
        if !self.collects {
            return Ok((f(&engine.store)?, None));
        }
        let (result, removals) = dispose::in_place(engine.id, || f(&engine.store));
        Ok((result?, collected(removals)))
    }

    /// The options of the engine store this handle uses (those of the first store of its
    /// name).
    #[napi(getter)]
    pub fn engine_options(&self) -> napi::Result<EngineOptions> {
        Ok(self.engine()?.options.clone())
    }

    /// Whether `close` was called.
    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.engine.is_none()
    }

    /// Delivers removals from other threads to `deliver(removals)` on this JS thread.
    #[napi]
    pub fn subscribe(&mut self, deliver: Function<Vec<Removal>, ()>) -> napi::Result<()> {
        let engine = self.engine()?.clone();
        if let Some(old) = self.subscription.take() {
            engine.router.unsubscribe(old);
        }
        let id = engine.router.subscribe(|router| -> napi::Result<Wake> {
            deliver
                .build_threadsafe_function::<()>()
                .weak::<true>()
                .callee_handled::<false>()
                .build_callback(move |_| {
                    Ok(router
                        .upgrade()
                        .map(|router: Arc<Router>| router.take())
                        .unwrap_or_default())
                })
        })?;
        self.subscription = Some(id);
        Ok(())
    }

    /// Stores a serialized session for `ttl_ms` milliseconds; returns the removals it caused
    /// (for this store's dispose), or null.
    #[napi]
    pub fn set(
        &self,
        id: String,
        value: Either<String, BufferSlice<'_>>,
        ttl_ms: f64,
    ) -> napi::Result<Option<Vec<Removal>>> {
        let session = incoming(value, ttl_from_ms(ttl_ms)?);
        let ((), removals) = self.call(|store| store.set(&id, &session).map_err(store_error))?;
        Ok(removals)
    }

    /// The stored value of `id`, or null.
    #[napi]
    pub fn get(&self, id: String) -> napi::Result<Option<Either<String, Buffer>>> {
        let found = self.store()?.get(&id).map_err(store_error)?;
        Ok(found.map(outgoing))
    }

    /// The stored value of `id` and its write sequence number (for `touch`), or null.
    #[napi]
    pub fn get_for_touch(&self, id: String) -> napi::Result<Option<Stored>> {
        let found = self.store()?.get(&id).map_err(store_error)?;
        Ok(found.map(|raw| {
            let seq = raw.seq as f64;
            Stored {
                value: outgoing(raw),
                seq,
            }
        }))
    }

    /// Restarts the lifetime of `id` (`ttl_ms`, 0 to expire it now) and stores `value` (the
    /// session read with sequence number `based_on`, with its new cookie) if the session has
    /// not been written since; never brings back a missing session.
    #[napi]
    pub fn touch(
        &self,
        id: String,
        value: Either<String, BufferSlice<'_>>,
        ttl_ms: f64,
        based_on: f64,
    ) -> napi::Result<Option<Vec<Removal>>> {
        let ttl = if ttl_ms <= 0.0 {
            Duration::ZERO
        } else {
            ttl_from_ms(ttl_ms)?
        };
        let mut session = incoming(value, ttl);
        session.based_on = Some(based_on as u64);
        let (_, removals) = self.call(|store| store.touch(&id, &session).map_err(store_error))?;
        Ok(removals)
    }

    /// Removes sessions; returns the removals (for this store's dispose), or null.
    #[napi]
    pub fn destroy(&self, ids: Either<String, Vec<String>>) -> napi::Result<Option<Vec<Removal>>> {
        let (_, removals) = self.call(|store| {
            Ok(match &ids {
                Either::A(id) => store.destroy(id.as_str()),
                Either::B(ids) => store.destroy(ids),
            })
        })?;
        Ok(removals)
    }

    /// The number of live sessions (counted by the engine, not by walking them).
    #[napi]
    pub fn length(&self) -> napi::Result<f64> {
        Ok(self.store()?.length() as f64)
    }

    /// Removes every session; returns the removals (for this store's dispose), or null.
    #[napi]
    pub fn clear(&self) -> napi::Result<Option<Vec<Removal>>> {
        let ((), removals) = self.call(|store| {
            store.clear();
            Ok(())
        })?;
        Ok(removals)
    }

    /// The ids of the live sessions, latest written first, listed on the libuv pool.
    #[napi(ts_return_type = "Promise<string[]>")]
    pub fn ids(&self) -> napi::Result<AsyncTask<Ids>> {
        Ok(AsyncTask::new(Ids(self.engine()?.clone())))
    }

    /// Every live session, latest written first, listed on the libuv pool.
    #[napi(ts_return_type = "Promise<Listing>")]
    pub fn all(&self) -> napi::Result<AsyncTask<All>> {
        Ok(AsyncTask::new(All(self.engine()?.clone())))
    }

    /// Removes the expired sessions now, on the libuv pool (the engine does so on its own).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn prune(&self) -> napi::Result<AsyncTask<Prune>> {
        Ok(AsyncTask::new(Prune(self.engine()?.clone())))
    }

    /// (Re)starts the sweeper with the `checkPeriod` option; false if there is none.
    #[napi]
    pub fn start_interval(&self) -> napi::Result<bool> {
        self.store()?.start_interval().map_err(store_error)
    }

    /// Stops the sweeper.
    #[napi]
    pub fn stop_interval(&self) -> napi::Result<()> {
        self.store()?.stop_interval();
        Ok(())
    }

    /// Saves the snapshot to `path` (default: the `snapshotFile` option) on the libuv pool;
    /// resolves with the number of sessions saved.
    #[napi(ts_return_type = "Promise<number>")]
    pub fn save_snapshot(&self, path: Option<String>) -> napi::Result<AsyncTask<Save>> {
        let engine = self.engine()?.clone();
        // Checked here, so that a store without the option fails at once.
        snapshot_path(&engine, path.clone())?;
        Ok(AsyncTask::new(Save(engine, path.map(PathBuf::from))))
    }

    /// Saves the snapshot now, on this thread (for `process.on('exit')`).
    #[napi]
    pub fn save_snapshot_sync(&self, path: Option<String>) -> napi::Result<f64> {
        let engine = self.engine()?;
        let saved = match path {
            Some(path) => engine.store.save_snapshot(path),
            None => engine.store.save_now(),
        };
        Ok(saved.map_err(store_error)? as f64)
    }

    /// The engine's counters.
    #[napi]
    pub fn stats(&self) -> napi::Result<StoreStats> {
        let stats = self.store()?.stats();
        Ok(StoreStats {
            hits: stats.hits as f64,
            misses: stats.misses as f64,
            inserts: stats.inserts as f64,
            removals: stats.removals as f64,
            evictions: stats.evictions as f64,
            expirations: stats.expirations as f64,
        })
    }

    /// Lets go of the engine store, on the libuv pool: saves the snapshot first if the
    /// `snapshotFile` option is set (resolving with the number of sessions saved; null
    /// without the option or when already closed). Other stores of its name keep using the
    /// engine store; the last one to let go drops it, and with it the sweeper.
    #[napi(ts_return_type = "Promise<number | null>")]
    pub fn close(&mut self) -> AsyncTask<Close> {
        AsyncTask::new(Close(self.release()))
    }

    /// Lets go of the engine store at once, without saving a snapshot (for a store whose
    /// construction failed). Idempotent.
    #[napi]
    pub fn detach(&mut self) {
        drop(self.release());
    }

    fn release(&mut self) -> Option<Arc<Engine>> {
        if let (Some(engine), Some(subscription)) = (&self.engine, self.subscription.take()) {
            engine.router.unsubscribe(subscription);
        }
        self.engine.take()
    }
}

impl Drop for NativeStore {
    fn drop(&mut self) {
        drop(self.release());
    }
}

fn snapshot_path(engine: &Engine, path: Option<String>) -> napi::Result<PathBuf> {
    path.or_else(|| engine.options.snapshot_file.clone())
        .map(PathBuf::from)
        .ok_or_else(|| {
            napi::Error::new(
                Status::InvalidArg,
                "no snapshot file: pass a path or set the snapshotFile option",
            )
        })
}

/// Lists ids, latest written first.
pub struct Ids(Arc<Engine>);

impl Task for Ids {
    type Output = Vec<String>;
    type JsValue = Vec<String>;

    fn compute(&mut self) -> napi::Result<Vec<String>> {
        let all = header_only(|| self.0.store.all()).map_err(store_error)?;
        let mut listed: Vec<(u64, String)> =
            all.into_iter().map(|(id, raw)| (raw.seq, id)).collect();
        listed.sort_unstable_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        Ok(listed.into_iter().map(|(_, id)| id).collect())
    }

    fn resolve(&mut self, _env: Env, ids: Vec<String>) -> napi::Result<Vec<String>> {
        Ok(ids)
    }
}

/// Lists sessions, latest written first.
pub struct All(Arc<Engine>);

impl Task for All {
    type Output = Vec<(String, Raw)>;
    type JsValue = Listing;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let all = self.0.store.all().map_err(store_error)?;
        let mut listed: Vec<(String, Raw)> = all.into_iter().collect();
        listed.sort_unstable_by_key(|(_, raw)| std::cmp::Reverse(raw.seq));
        Ok(listed)
    }

    fn resolve(&mut self, _env: Env, listed: Self::Output) -> napi::Result<Listing> {
        let mut ids = Vec::with_capacity(listed.len());
        let mut values = Vec::with_capacity(listed.len());
        for (id, raw) in listed {
            ids.push(id);
            values.push(outgoing(raw));
        }
        Ok(Listing { ids, values })
    }
}

/// Runs the engine's pending maintenance (expiry included).
pub struct Prune(Arc<Engine>);

impl Task for Prune {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<()> {
        self.0.store.prune();
        Ok(())
    }

    fn resolve(&mut self, _env: Env, (): ()) -> napi::Result<()> {
        Ok(())
    }
}

/// Saves a snapshot (to the `snapshotFile` option's file when no path is given).
pub struct Save(Arc<Engine>, Option<PathBuf>);

impl Task for Save {
    type Output = usize;
    type JsValue = f64;

    fn compute(&mut self) -> napi::Result<usize> {
        match &self.1 {
            Some(path) => self.0.store.save_snapshot(path),
            None => self.0.store.save_now(),
        }
        .map_err(store_error)
    }

    fn resolve(&mut self, _env: Env, saved: usize) -> napi::Result<f64> {
        Ok(saved as f64)
    }
}

/// Saves the snapshot (if the engine has a snapshot file) and drops a handle, off the JS
/// thread (dropping the last handle stops the sweeper).
pub struct Close(Option<Arc<Engine>>);

impl Task for Close {
    type Output = Option<usize>;
    type JsValue = Option<f64>;

    fn compute(&mut self) -> napi::Result<Option<usize>> {
        let Some(engine) = self.0.take() else {
            return Ok(None);
        };
        if engine.options.snapshot_file.is_none() {
            return Ok(None);
        }
        let saved = match Arc::try_unwrap(engine) {
            // The last handle: the store's own `close` saves once and turns off the save when
            // it is dropped (just after).
            Ok(engine) => engine.store.close(),
            // Other stores of its name go on with it: save now; the last to let go saves
            // again when it drops it.
            Err(engine) => engine.store.save_now(),
        };
        saved.map(Some).map_err(store_error)
    }

    fn resolve(&mut self, _env: Env, saved: Option<usize>) -> napi::Result<Option<f64>> {
        Ok(saved.map(|n| n as f64))
    }
}
