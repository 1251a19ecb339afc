//! A session store that cannot leak: memorystore's options and methods on the engine.
//!
//! express-session's default `MemoryStore` never forgets a session nobody reads again; the
//! npm package `memorystore` fixed that with an LRU cache and a pruning timer you must
//! remember to turn on. [`MemoryStore`] has memorystore's options and methods, and expired
//! sessions leave on their own (the engine's timer wheel reclaims them within a
//! millisecond tick of their expiry, with or without reads and with or without the
//! optional sweeper).
//!
//! | memorystore | evanesce |
//! |---|---|
//! | `checkPeriod` | [`check_period`](MemoryStoreBuilder::check_period): a background sweeper (expiry is proactive anyway) |
//! | `max` | [`max`](MemoryStoreBuilder::max) sessions, or [`max_bytes`](MemoryStoreBuilder::max_bytes) of id plus serialized session |
//! | `ttl` (number or function) | [`ttl`](MemoryStoreBuilder::ttl) / [`ttl_fn`](MemoryStoreBuilder::ttl_fn) |
//! | `dispose(key, value)` | [`dispose`](MemoryStoreBuilder::dispose)`(|id, session, cause|)` |
//! | `stale` | [`stale`](MemoryStoreBuilder::stale): an expired session not yet reclaimed is returned once, then removed |
//! | `noDisposeOnSet` | [`no_dispose_on_set`](MemoryStoreBuilder::no_dispose_on_set) |
//! | `serializer` (`stringify`, `parse`) | [`serializer`](MemoryStoreBuilder::serializer): any [`Serializer`]; JSON by default |
//! | `get`, `set`, `destroy`, `touch`, `all`, `ids`, `length`, `clear`, `prune`, `startInterval`, `stopInterval` | the same names in snake_case; `destroy` takes one id or many |
//!
//! ```
//! use std::time::Duration;
//! use evanesce::session::{Cookie, MemoryStore, Session, id_tag};
//!
//! let store = MemoryStore::builder()
//!     .max(10_000)
//!     // An id is a login: logs get its tag, never the id.
//!     .dispose(|id: &str, _session: Option<Session>, cause| println!("{} left: {cause:?}", id_tag(id)))
//!     .build()?;
//!
//! let mut session = Session::with_cookie(Cookie::expiring_in(Duration::from_secs(3600), store.now()));
//! session.insert("views", 1);
//! store.set("sid-1", &session)?;
//! assert_eq!(store.get("sid-1")?.and_then(|s| s.get("views").cloned()), Some(1.into()));
//! assert_eq!(store.get("never-set")?, None); // not found is not an error
//! store.destroy("sid-1");
//! # Ok::<(), evanesce::session::Error>(())
//! ```
//!
//! Semantics (memorystore's, with the differences marked):
//! - **Lifetime**: the `ttl` option (fixed or a function of the session and its id) if set,
//!   else the cookie's remaining lifetime ([`SessionData::cookie_ttl`]: `expires`, else
//!   `maxAge`), else one day. A lifetime of zero (an `expires` in the past) on `set` stores
//!   nothing and removes the id's previous session.
//! - **Values are stored serialized**: the store never hands out a shared mutable object.
//! - **`touch`** restarts the lifetime and replaces only the cookie; it never rewrites user
//!   data and never brings back a missing or expired session.
//! - **Not found** is `Ok(None)`; stored bytes that do not decode are one
//!   [`Error::Decode`] (the session is then removed; never a panic, never a second report).
//! - **`length`, `ids`, `all`** count live sessions only (memorystore's `length` counted
//!   expired sessions not yet pruned).
//! - **Concurrency**: every method is safe under concurrent requests for the same id. Reads
//!   are lock-free; `set`, `touch` and `destroy` of one id are serialized by a striped lock
//!   (so a `touch` can never undo a concurrent `destroy` or lose a concurrent `set`).

mod data;
pub(crate) mod json;
mod key;
mod seal;
mod serializer;
mod snapshot;
mod splice;
mod store;

use std::fmt;

pub use data::{Cookie, Session, SessionData};
pub use seal::{KeyError, SealError, Sealed, SealingKey};
pub use serializer::{JsonSerializer, Serializer};
pub use snapshot::{MAX_SNAPSHOT_LEN, SNAPSHOT_VERSION, STALE_TEMP_AGE, SnapshotError};
pub use store::{
    DisposeFn, Ids, MIN_CHECK_PERIOD, MemoryStore, MemoryStoreBuilder, Options, TtlFn,
};

pub use crate::RemovalCause;

/// memorystore's lifetime for a session whose cookie does not give one.
pub(crate) const ONE_DAY: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// A session's lifetime by memorystore's precedence (every store uses it): the `ttl`
/// option, else `ttl_fn`, else the cookie's remaining lifetime at `now`, else one day.
pub(crate) fn lifetime<T: SessionData>(
    ttl: Option<std::time::Duration>,
    ttl_fn: Option<&TtlFn<T>>,
    session: &T,
    id: &str,
    now: std::time::SystemTime,
) -> std::time::Duration {
    if let Some(ttl) = ttl {
        return ttl;
    }
    if let Some(f) = ttl_fn {
        return f(session, id);
    }
    session.cookie_ttl(now).unwrap_or(ONE_DAY)
}

/// A session id as errors and logs may show it: a tag, never the id (ids work like
/// passwords: whoever reads one in a log can log in with it). See [`id_tag`].
#[derive(Clone, Copy)]
pub struct IdTag<'a>(&'a str);

/// The tag of the session id `id`, for logs and messages: `#` and 8 hex digits of a keyed hash
/// of the id (SipHash with a key drawn at random once per process), then its length, as in
/// `#3f09a1c2 (22 bytes)`. The same id gives the same tag within a process, so log lines about
/// one session can be matched; the tag does not give the id back, and means nothing to
/// another process. Errors of this crate ([`Error::Decode`], [`SnapshotError::Decode`],
/// [`SnapshotError::TooLarge`]) show ids this way; their `id` field keeps the id.
pub fn id_tag(id: &str) -> IdTag<'_> {
    IdTag(id)
}

impl fmt::Display for IdTag<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use std::hash::BuildHasher;
        static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        let hash = KEY.get_or_init(Default::default).hash_one(self.0);
        write!(f, "#{:08x} ({} bytes)", hash >> 32, self.0.len())
    }
}

impl fmt::Debug for IdTag<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A boxed error from a [`Serializer`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong in the session store.
///
/// `Display` and `Debug` never show a session id (see [`id_tag`]).
#[non_exhaustive]
pub enum Error {
    /// The serializer could not encode the session; nothing was stored or changed.
    Encode(BoxError),
    /// The bytes stored for `id` did not decode. The session has been removed (its dispose
    /// hook, if any, heard about it with no session), so this is reported once.
    Decode {
        /// The session's id (shown as its [`id_tag`] by `Display` and `Debug`).
        id: String,
        /// The serializer's error.
        source: BoxError,
    },
    /// The session (its id plus its serialized bytes, `size`) is larger than
    /// [`max_bytes`](MemoryStoreBuilder::max_bytes) allows (`max`); nothing was stored or
    /// changed.
    TooLarge {
        /// The session's weight in bytes.
        size: u64,
        /// The store's `max_bytes`.
        max: u64,
    },
    /// The builder's options do not make a store (for example `max(0)`).
    Config(String),
    /// The background sweeper (or snapshot saver) thread could not be started.
    Sweeper(std::io::Error),
    /// A snapshot could not be saved or loaded (nothing was loaded).
    Snapshot(SnapshotError),
    /// A remote store (such as the `redis` feature's `RedisStore`) failed: the server could
    /// not be reached, did not answer in time, or refused the command. The source is the
    /// backend's own error (a `redis::RedisError` for Redis; a timeout is one of kind `Io`
    /// whose `is_timeout()` is true). Whether the operation took effect is unknown.
    Backend(BoxError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Encode(e) => write!(f, "the session could not be encoded: {e}"),
            Error::Decode { id, source } => write!(
                f,
                "the stored session {} could not be decoded: {source}",
                id_tag(id)
            ),
            Error::TooLarge { size, max } => write!(
                f,
                "the session weighs {size} bytes, more than the store's max_bytes of {max}"
            ),
            Error::Config(why) => write!(f, "invalid session store options: {why}"),
            Error::Sweeper(e) => write!(f, "the sweeper thread could not be started: {e}"),
            Error::Snapshot(e) => write!(f, "{e}"),
            Error::Backend(e) => write!(f, "the session backend failed: {e}"),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Encode(e) => f.debug_tuple("Encode").field(e).finish(),
            Error::Decode { id, source } => f
                .debug_struct("Decode")
                .field("id", &id_tag(id))
                .field("source", source)
                .finish(),
            Error::TooLarge { size, max } => f
                .debug_struct("TooLarge")
                .field("size", size)
                .field("max", max)
                .finish(),
            Error::Config(why) => f.debug_tuple("Config").field(why).finish(),
            Error::Sweeper(e) => f.debug_tuple("Sweeper").field(e).finish(),
            Error::Snapshot(e) => f.debug_tuple("Snapshot").field(e).finish(),
            Error::Backend(e) => f.debug_tuple("Backend").field(e).finish(),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Encode(e) | Error::Decode { source: e, .. } | Error::Backend(e) => Some(&**e),
            Error::Sweeper(e) => Some(e),
            Error::Snapshot(e) => Some(e),
            Error::TooLarge { .. } | Error::Config(_) => None,
        }
    }
}
