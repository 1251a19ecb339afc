//! [`Expiry`]: per-entry lifetimes derived from the entry, decided when it is created, read
//! or updated.

use std::time::Duration;

/// Decides each entry's lifetime from the entry itself: set one with
/// [`CacheBuilder::expire_after`](crate::CacheBuilder::expire_after).
///
/// Each hook returns the entry's remaining lifetime from now: `Some(duration)` (zero: it
/// expires at once), or `None` for "no expiry". The defaults leave the entry as it is: no
/// expiry on creation, the remaining lifetime (`remaining`) on reads and updates.
///
/// [`time_to_live`](crate::CacheBuilder::time_to_live) and
/// [`time_to_idle`](crate::CacheBuilder::time_to_idle) are the two simple cases: a time to
/// live `d` is `expire_after_create` and `expire_after_update` returning `Some(d)`; a time to
/// idle `d` is all three returning `Some(d)`. The cache implements those two itself, without
/// a call per access. With an `Expiry`, a [`time_to_live`](crate::CacheBuilder::time_to_live)
/// caps every lifetime a hook gives, counted from when it is given (`None` then means "the
/// time to live"); a [`time_to_idle`](crate::CacheBuilder::time_to_idle) cannot be combined
/// with it (express it in `expire_after_read`).
///
/// Hooks run on the thread of the operation (inside a read for `expire_after_read`: keep them
/// short, and do not use the cache from them). A lifetime set by `expire_after_read` is
/// written at most once per tick of the cache's coarse clock (about a millisecond) and
/// changes of less than a tick are not written, so a hot entry is not rewritten on every
/// read.
///
/// ```
/// use std::time::Duration;
/// use evanesce::{Cache, Expiry};
///
/// /// Sessions of admins live 5 minutes, others an hour; a read gives an admin 5 more.
/// struct ByRole;
/// impl Expiry<String, (bool, u64)> for ByRole {
///     fn expire_after_create(&self, _: &String, v: &(bool, u64)) -> Option<Duration> {
///         Some(Duration::from_secs(if v.0 { 300 } else { 3600 }))
///     }
///     fn expire_after_read(
///         &self,
///         _: &String,
///         v: &(bool, u64),
///         remaining: Option<Duration>,
///     ) -> Option<Duration> {
///         if v.0 { Some(Duration::from_secs(300)) } else { remaining }
///     }
/// }
///
/// let cache: Cache<String, (bool, u64)> = Cache::builder().expire_after(ByRole).build()?;
/// cache.insert("alice".into(), (true, 1));
/// assert!(cache.ttl("alice").unwrap() <= Duration::from_secs(300));
/// # Ok::<(), evanesce::BuildError>(())
/// ```
pub trait Expiry<K, V> {
    /// The lifetime of an entry inserted for a key that had no live value.
    fn expire_after_create(&self, key: &K, value: &V) -> Option<Duration> {
        let _ = (key, value);
        None
    }

    /// The lifetime of an entry after a read (a hit of `get`, `get_with`, a loader, …; not
    /// `contains_key` or `iter`). `remaining` is its lifetime before the read (`None`: no
    /// expiry).
    fn expire_after_read(
        &self,
        key: &K,
        value: &V,
        remaining: Option<Duration>,
    ) -> Option<Duration> {
        let _ = (key, value);
        remaining
    }

    /// The lifetime of a value that replaces a live value of its key (`value` is the new
    /// one); `remaining` is the replaced value's lifetime.
    fn expire_after_update(
        &self,
        key: &K,
        value: &V,
        remaining: Option<Duration>,
    ) -> Option<Duration> {
        let _ = (key, value);
        remaining
    }
}

/// The expiry as stored by the cache.
pub(crate) type ExpiryFn<K, V> = dyn Expiry<K, V> + Send + Sync + 'static;
