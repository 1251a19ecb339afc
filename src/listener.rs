//! Why an entry left the cache, and the callback that hears about it.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

/// Why an entry was removed. Passed to the
/// [`eviction_listener`](crate::CacheBuilder::eviction_listener).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RemovalCause {
    /// Its deadline passed (time to live, time to idle, or a per-entry TTL).
    Expired,
    /// The cache was over its capacity and the eviction policy chose it.
    Size,
    /// [`remove`](crate::Cache::remove) (or another explicit removal) took it out.
    Explicit,
    /// An insert of the same key superseded it.
    Replaced,
    /// [`clear`](crate::Cache::clear) removed it.
    Cleared,
}

impl RemovalCause {
    /// Whether the cache removed the entry on its own (expiry or size), rather than because
    /// of a call that removed or replaced it.
    pub fn was_evicted(self) -> bool {
        matches!(self, RemovalCause::Expired | RemovalCause::Size)
    }
}

/// The listener as stored by the cache.
pub(crate) type ListenerFn<K, V> = dyn Fn(&K, &V, RemovalCause) + Send + Sync + 'static;

/// Calls `f` for each notification; if one panics, still calls the rest, then re-raises the
/// first panic. The cache's state is already consistent when notifications are delivered, so
/// a panicking listener loses no notification of other entries and corrupts nothing.
pub(crate) fn deliver_all<T>(items: impl IntoIterator<Item = T>, mut f: impl FnMut(T)) {
    let mut first_panic = None;
    for item in items {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(item))) {
            first_panic.get_or_insert(payload);
        }
    }
    if let Some(payload) = first_panic {
        resume_unwind(payload);
    }
}
