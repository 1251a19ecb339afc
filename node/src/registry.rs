//! Engine stores, and the process-wide registry of the named ones.
//!
//! A Node process loads this addon once, whatever number of `worker_threads` require it, so a
//! `static` here is shared by every JS thread of the process. Stores opened with the same
//! `name` get the same [`Engine`] from [`REGISTRY`]; it lives until the last store of that name
//! is closed or collected (the registry holds it weakly).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use evanesce::session::MemoryStore;
use napi::Status;

use crate::EngineOptions;
use crate::dispose::Router;
use crate::raw::RawSerializer;

/// One engine store and the dispose routing of the JS stores that use it.
pub struct Engine {
    /// Tells this engine's removals apart from another's on a thread that collects in place.
    pub id: u64,
    pub store: MemoryStore<RawSerializer>,
    pub router: Arc<Router>,
    pub options: EngineOptions,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

static REGISTRY: LazyLock<Mutex<HashMap<String, Weak<Engine>>>> = LazyLock::new(Mutex::default);

/// The engine store for `options`: the one already open under `options.name`, or a new one.
pub fn open(options: EngineOptions, dispose: bool) -> napi::Result<Arc<Engine>> {
    let Some(name) = options.name.clone() else {
        return build(options, dispose).map(Arc::new);
    };
    // Held while building, so that two threads opening one name at once get one engine.
    let mut registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(engine) = registry.get(&name).and_then(Weak::upgrade) {
        return Ok(engine);
    }
    let engine = Arc::new(build(options, true)?);
    registry.insert(name, Arc::downgrade(&engine));
    Ok(engine)
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(name) = &self.options.name {
            let mut registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
            // Only our own entry: a store of the same name opened since has its own.
            if registry
                .get(name)
                .is_some_and(|weak| weak.strong_count() == 0)
            {
                registry.remove(name);
            }
        }
    }
}

/// A bound from JS: absent, zero and infinity mean none (memorystore's `max` of 0 is
/// lru-cache's "no limit").
fn bound(n: Option<f64>) -> Option<u64> {
    n.filter(|n| n.is_finite() && *n >= 1.0).map(|n| n as u64)
}

/// `hook`: whether removals are reported at all (a named engine always reports them: a store
/// with a `dispose` may join it later).
fn build(options: EngineOptions, hook: bool) -> napi::Result<Engine> {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let router = Arc::new(Router::new(id));
    let mut builder = MemoryStore::with_serializer(RawSerializer::default());
    if let Some(max) = bound(options.max) {
        builder = builder.max(max);
    }
    if let Some(max_bytes) = bound(options.max_bytes) {
        builder = builder.max_bytes(max_bytes);
    }
    if let Some(ms) = options
        .check_period
        .filter(|ms| ms.is_finite() && *ms > 0.0)
    {
        let period = Duration::from_secs_f64(ms.max(1.0) / 1000.0);
        builder = builder.check_period(period);
    }
    // A Node.js server makes a few thousand calls a second, each costing far more than a
    // clock reading: the engine's millisecond ticker thread would cost more than it saves.
    builder = builder
        .precise_clock(true)
        .stale(options.stale.unwrap_or(false))
        .no_dispose_on_set(options.no_dispose_on_set.unwrap_or(false));
    if let Some(path) = &options.snapshot_file {
        builder = builder.snapshot_file(path);
    }
    if hook {
        let router = router.clone();
        builder = builder.dispose(move |id, session, cause| router.removed(id, session, cause));
    }
    let store = builder.build().map_err(|e| {
        let status = match e {
            evanesce::session::Error::Config(_) => Status::InvalidArg,
            _ => Status::GenericFailure,
        };
        napi::Error::new(status, e.to_string())
    })?;
    Ok(Engine {
        id,
        store,
        router,
        options,
    })
}
