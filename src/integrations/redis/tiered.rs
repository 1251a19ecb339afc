//! [`Tiered`]: an in-memory near cache (a [`MemoryStore`]) in front of a [`RedisStore`] shared
//! by every server, for any session type; the tower-sessions and actix-session stores are
//! built on it.

use std::fmt;
use std::time::{Duration, SystemTime};

use super::{Condition, RedisStore};
use crate::session::{Error, MemoryStore, MemoryStoreBuilder, ONE_DAY, Serializer, SessionData};
use crate::sync::{Arc, AtomicU64, Ordering};

/// Two tiers: an in-memory near cache in front of a [`RedisStore`] shared by every server.
/// Reads are served from memory while the near cache holds the session; writes go to Redis
/// first, then to the near cache.
///
/// **Staleness.** A server serves a session from its near cache without asking Redis for at
/// most `bound` after it last read or wrote it there (plus one Redis round trip), so after
/// another server changes or destroys it, this server may go on seeing its copy that long.
/// A stale copy is never written back: updates are `SET XX` (a destroyed session stays
/// destroyed), and a failed write drops the near copy. Within the bound, two servers
/// updating one session can lose an update; `bound` = 0 caches nothing.
///
/// **When Redis is unreachable** (a lost or refused connection, a timeout, a cluster or
/// master that is down), reads fail with [`Error::Backend`] as the Redis store's do, unless
/// [`serve_stale_for`](TieredBuilder::serve_stale_for) is set: then a read of a session the
/// near cache still holds returns that copy, up to `bound + window` after it was read from
/// Redis (never past the session's own expiry), and [`stale_reads`](Self::stale_reads)
/// counts those. Such a copy may be as old as that: a destroy or a change made on another
/// server meanwhile is not seen. Writes still fail (nothing is queued). To keep the grace
/// window, near copies are kept `bound + window` and count as fresh only for their first
/// `bound`; a copy in its last `window` before its own expiry is read from Redis again.
///
/// **Fewer writes.** The Redis store's [`touch_after`](super::RedisStoreBuilder::touch_after),
/// [`disable_touch`](super::RedisStoreBuilder::disable_touch) and
/// [`disable_ttl`](super::RedisStoreBuilder::disable_ttl) apply: a skipped renewal leaves the
/// near copy (and its staleness window) as it was.
pub struct Tiered<Z: Serializer> {
    near: MemoryStore<Z>,
    far: RedisStore<Z>,
    /// How long past the bound a near copy may be served while Redis is unreachable.
    window: Duration,
    stale_reads: Arc<AtomicU64>,
    /// Removals that Redis has done (destroys, and writes or renewals that found the session
    /// gone): a read or write that began before one may not keep the copy it brought back
    /// (see [`keep`](Self::keep)).
    removals: Arc<AtomicU64>,
}

impl<Z: Serializer> Clone for Tiered<Z> {
    fn clone(&self) -> Self {
        Self {
            near: self.near.clone(),
            far: self.far.clone(),
            window: self.window,
            stale_reads: Arc::clone(&self.stale_reads),
            removals: Arc::clone(&self.removals),
        }
    }
}

impl<Z: Serializer> fmt::Debug for Tiered<Z> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tiered")
            .field("near", &self.near)
            .field("far", &self.far)
            .field("serve_stale_for", &self.window)
            .finish()
    }
}

/// Builds a [`Tiered`] store; see [`Tiered::builder`].
pub struct TieredBuilder<Z: Serializer> {
    far: RedisStore<Z>,
    bound: Duration,
    window: Duration,
    near: MemoryStoreBuilder<Z>,
}

impl<Z: Serializer> fmt::Debug for TieredBuilder<Z> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredBuilder")
            .field("far", &self.far)
            .field("bound", &self.bound)
            .field("serve_stale_for", &self.window)
            .field("near", &self.near)
            .finish()
    }
}

/// The default staleness bound of [`Tiered::builder`]: one second.
pub const DEFAULT_BOUND: Duration = Duration::from_secs(1);

impl<Z: Serializer + Clone> TieredBuilder<Z> {
    /// The staleness bound (default [`DEFAULT_BOUND`]): how long a server may serve its near
    /// copy of a session after another server changed or destroyed it. 0 caches nothing.
    pub fn bound(mut self, bound: Duration) -> Self {
        self.bound = bound;
        self
    }

    /// Bounds the near cache to `n` sessions (least useful first out; Redis still has them).
    pub fn max(mut self, n: u64) -> Self {
        self.near = self.near.max(n);
        self
    }

    /// Bounds the near cache to `n` bytes of ids plus serialized sessions.
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.near = self.near.max_bytes(n);
        self
    }

    /// While Redis is unreachable, serves reads of sessions the near cache holds for up to
    /// `window` past the bound (see [`Tiered`] for the staleness this allows). Default 0: no
    /// stale reads, a read fails when Redis does.
    pub fn serve_stale_for(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Sweeps the near cache every `period` in the background (see
    /// [`MemoryStoreBuilder::check_period`]; expired copies leave on their own anyway).
    pub fn check_period(mut self, period: Duration) -> Self {
        self.near = self.near.check_period(period);
        self
    }

    /// The near cache's clock (a mock in tests).
    pub fn clock(mut self, clock: quanta::Clock) -> Self {
        self.near = self.near.clock(clock);
        self
    }

    /// Makes the store. Invalid near-cache options are [`Error::Config`].
    pub fn build(self) -> Result<Tiered<Z>, Error> {
        let keep = self.bound.saturating_add(self.window);
        let near = self
            .near
            .ttl_fn(move |session: &Z::Session, _id: &str| near_lifetime(session, keep))
            .build()?;
        Ok(Tiered {
            near,
            far: self.far,
            window: self.window,
            stale_reads: Arc::new(AtomicU64::new(0)),
            removals: Arc::new(AtomicU64::new(0)),
        })
    }
}

/// A near copy's lifetime: the session's own, at most `keep`.
pub(crate) fn near_lifetime<T: SessionData>(session: &T, keep: Duration) -> Duration {
    session
        .cookie_ttl(SystemTime::now())
        .unwrap_or(ONE_DAY)
        .min(keep)
}

impl<Z: Serializer + Clone> Tiered<Z> {
    /// `far` with a near cache whose copies are fresh for at most `bound` (see [`Tiered`]).
    pub fn new(far: RedisStore<Z>, bound: Duration) -> Result<Self, Error> {
        Self::builder(far).bound(bound).build()
    }

    /// A builder for a store in front of `far` (bound [`DEFAULT_BOUND`], an unbounded near
    /// cache, no stale reads).
    pub fn builder(far: RedisStore<Z>) -> TieredBuilder<Z> {
        let near = MemoryStore::with_serializer(far.serializer().clone());
        TieredBuilder {
            far,
            bound: DEFAULT_BOUND,
            window: Duration::ZERO,
            near,
        }
    }
}

impl<Z: Serializer> Tiered<Z> {
    /// `far` with the given near cache, whose entries' lifetimes are the staleness bound
    /// (build it with a `ttl_fn` that caps them, as `near_cache` (tower-sessions) does;
    /// any other store keeps copies up to their sessions' expiry). No stale reads.
    pub fn with_near_cache(near: MemoryStore<Z>, far: RedisStore<Z>) -> Self {
        Self {
            near,
            far,
            window: Duration::ZERO,
            stale_reads: Arc::new(AtomicU64::new(0)),
            removals: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The near cache.
    pub fn near(&self) -> &MemoryStore<Z> {
        &self.near
    }

    /// The Redis store.
    pub fn far(&self) -> &RedisStore<Z> {
        &self.far
    }

    /// How many reads were served from a stale near copy because Redis was unreachable.
    pub fn stale_reads(&self) -> u64 {
        // Relaxed: a statistic; nothing is published through it.
        self.stale_reads.load(Ordering::Relaxed)
    }

    /// The session `id`: the near copy while it is fresh, else Redis's (cached on the way);
    /// see [`Tiered`] for reads while Redis is unreachable.
    pub async fn get(&self, id: &str) -> Result<Option<Z::Session>, Error> {
        // (A near copy that does not decode has been removed: then ask Redis.)
        let near = self.near.get(id).ok().flatten();
        if near.is_some() && self.fresh(id) {
            return Ok(near);
        }
        let since = self.removals_seen();
        match self.far.get(id).await {
            Ok(Some(session)) => {
                self.keep(id, &session, since);
                Ok(Some(session))
            }
            Ok(None) => {
                self.forget(id);
                Ok(None)
            }
            Err(e) if near.is_some() && !self.window.is_zero() && unreachable(&e) => {
                // Relaxed: a statistic.
                self.stale_reads.fetch_add(1, Ordering::Relaxed);
                Ok(near)
            }
            Err(e) => Err(e),
        }
    }

    /// Stores `session` as `id` in Redis, then in the near cache.
    pub async fn set(&self, id: &str, session: &Z::Session) -> Result<(), Error> {
        self.write(id, session, Condition::Always, None)
            .await
            .map(drop)
    }

    /// Stores `session` as `id` only if Redis has no session `id`; returns whether it did.
    pub async fn set_if_absent(&self, id: &str, session: &Z::Session) -> Result<bool, Error> {
        self.write(id, session, Condition::Absent, None).await
    }

    /// Stores `session` as `id` only if Redis has a session `id`; returns whether it did (a
    /// session destroyed on another server is not brought back, and the near copy is
    /// dropped).
    pub async fn set_if_present(&self, id: &str, session: &Z::Session) -> Result<bool, Error> {
        self.write(id, session, Condition::Present, None).await
    }

    pub(crate) async fn write(
        &self,
        id: &str,
        session: &Z::Session,
        condition: Condition,
        digest: Option<u128>,
    ) -> Result<bool, Error> {
        let since = self.removals_seen();
        match self.far.write(id, session, condition, digest).await {
            Ok(true) => {
                self.keep(id, session, since);
                Ok(true)
            }
            Ok(false) => {
                if condition != Condition::Absent {
                    // Destroyed or expired in Redis (or a zero lifetime deleted nothing):
                    // our copy is stale, forget it.
                    self.forget(id);
                }
                Ok(false)
            }
            Err(e) => {
                // Unknown outcome: do not keep serving a copy Redis may not have.
                self.forget(id);
                Err(e)
            }
        }
    }

    /// Removes one session or many, from Redis and then from the near cache; returns how
    /// many Redis held.
    ///
    /// In that order, and a read or write of this store that began before the removal and
    /// finishes after it does not keep its copy: once `destroy` returns, this server never
    /// serves the sessions from memory again (a logout is not undone by a request that was
    /// in flight). Other servers may serve their copies up to the staleness bound.
    pub async fn destroy(&self, ids: impl crate::session::Ids) -> Result<usize, Error> {
        let mut list = Vec::new();
        ids.for_each_id(&mut |id| list.push(id.to_string()));
        // Even when the outcome is unknown (an error), the near copies go.
        let destroyed = self.far.destroy(&list).await;
        self.forget(&list);
        destroyed
    }

    /// How many removals Redis has done so far (see [`keep`](Self::keep)).
    fn removals_seen(&self) -> u64 {
        // SeqCst: see `keep`.
        self.removals.load(Ordering::SeqCst)
    }

    /// Drops the near copies of `ids` after Redis removed them (or may have).
    fn forget(&self, ids: impl crate::session::Ids) {
        // SeqCst: with the load in `keep` (a Dekker pair, see there). The count moves before
        // the copies go.
        self.removals.fetch_add(1, Ordering::SeqCst);
        self.near.destroy(ids);
    }

    /// Keeps `session`, read from or written to Redis by an operation that began when
    /// [`removals_seen`](Self::removals_seen) was `since`, unless a removal happened since:
    /// its copy may be older than the removal. The copy is made first, then the count
    /// checked; `forget` moves the count, then drops copies. Both SeqCst: either this load
    /// sees the removal's count and drops the copy itself, or the removal's `near.destroy`
    /// comes after the copy was made and drops it. (A removal of another session costs this
    /// one its copy too: the next read goes to Redis.)
    fn keep(&self, id: &str, session: &Z::Session, since: u64) {
        self.cache(id, session);
        if self.removals_seen() != since {
            self.near.destroy(id);
        }
    }

    /// Renews `session`'s lifetime and cookie in Redis ([`RedisStore::touch`]) and drops the
    /// near copy (renewing that copy would restart its staleness window with data Redis may
    /// have replaced; the next read goes to Redis). A renewal skipped by the Redis store's
    /// options leaves the near copy alone. Returns false if Redis no longer has the session.
    pub async fn touch(&self, id: &str, session: &Z::Session) -> Result<bool, Error> {
        if self.far.skips_renewal(id) {
            return Ok(true);
        }
        let touched = self.far.touch(id, session).await;
        self.near.destroy(id);
        touched
    }

    /// Renews `session`'s lifetime in Redis only ([`RedisStore::renew`]); the near copy is
    /// left as it is (its data is unchanged).
    pub async fn renew(&self, id: &str, session: &Z::Session) -> Result<bool, Error> {
        let renewed = self.far.renew(id, session).await;
        if !matches!(renewed, Ok(true)) {
            self.forget(id);
        }
        renewed
    }

    /// Whether the near copy of `id` is within its staleness bound.
    fn fresh(&self, id: &str) -> bool {
        self.window.is_zero()
            || self
                .near
                .expires_in(id)
                .is_some_and(|left| left > self.window)
    }

    /// Keeps a copy in the near cache; a copy it refuses (too large) is simply not kept.
    pub(crate) fn cache(&self, id: &str, session: &Z::Session) {
        if self.near.set(id, session).is_err() {
            self.near.destroy(id);
        }
    }
}

/// Whether `e` says Redis could not be reached (rather than that it refused the command or
/// the data was bad).
fn unreachable(e: &Error) -> bool {
    let Error::Backend(source) = e else {
        return false;
    };
    let Some(e) = source.downcast_ref::<redis::RedisError>() else {
        return false;
    };
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.code(),
            Some("CLUSTERDOWN" | "MASTERDOWN" | "LOADING" | "TRYAGAIN")
        )
}
