//! [`RedisStore`] as a tower-sessions (0.15) session store, and [`TieredStore`]: an in-memory
//! near cache ([`RecordStore`]) in front of it.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, ExpiredDeletion, SessionStore};

use super::{RedisStore, RedisStoreBuilder};
use crate::integrations::tower_sessions::{RecordStore, record_store};
use crate::session::ONE_DAY;
use crate::session::{Error, JsonSerializer, MemoryStoreBuilder, Serializer, SessionData};

/// A Redis store of tower-sessions records (JSON through serde_json).
pub type RedisRecordStore = RedisStore<JsonSerializer<Record>>;

/// A builder for a [`RedisRecordStore`] at `url`: a record lives in Redis until its
/// `expiry_date` (unless `ttl` or `ttl_fn` say otherwise).
///
/// ```no_run
/// # async fn demo() -> Result<(), evanesce::session::Error> {
/// use evanesce::integrations::redis::redis_record_store;
/// use tower_sessions::SessionManagerLayer;
///
/// let store = redis_record_store("redis://127.0.0.1:6379/").build().await?;
/// let layer = SessionManagerLayer::new(store);
/// # Ok(()) }
/// ```
pub fn redis_record_store(url: impl Into<String>) -> RedisStoreBuilder<JsonSerializer<Record>> {
    RedisStore::with_serializer(url, JsonSerializer::new())
}

/// How many fresh ids `create` tries after collisions before it gives up.
const CREATE_ATTEMPTS: usize = 16;

fn to_store_error(e: Error) -> session_store::Error {
    match e {
        Error::Encode(e) => session_store::Error::Encode(e.to_string()),
        Error::Decode { source, .. } => session_store::Error::Decode(source.to_string()),
        other => session_store::Error::Backend(other.to_string()),
    }
}

/// `SET NX` with fresh ids until one is free.
async fn create_in<Z>(store: &RedisStore<Z>, record: &mut Record) -> Result<(), Error>
where
    Z: Serializer<Session = Record>,
{
    for _ in 0..CREATE_ATTEMPTS {
        if store.set_if_absent(&record.id.to_string(), record).await? {
            return Ok(());
        }
        record.id = Id::default();
    }
    Err(Error::Backend(
        format!("{CREATE_ATTEMPTS} random session ids in a row were taken").into(),
    ))
}

#[async_trait]
impl<Z> SessionStore for RedisStore<Z>
where
    Z: Serializer<Session = Record>,
{
    /// Stores a new record with `SET NX`; on an id collision the record gets a fresh id
    /// (a session can never be taken over by a colliding id).
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        create_in(self, record).await.map_err(to_store_error)
    }

    /// Updates an existing record with `SET XX`: a record destroyed (or expired) since this
    /// request loaded it is not brought back (tower-sessions saves a session it did not
    /// find through `create`, so `save` is only ever an update).
    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.set_if_present(&record.id.to_string(), record)
            .await
            .map(drop)
            .map_err(to_store_error)
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        self.get(&session_id.to_string())
            .await
            .map_err(to_store_error)
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        self.destroy(session_id.to_string())
            .await
            .map(drop)
            .map_err(to_store_error)
    }
}

#[async_trait]
impl<Z> ExpiredDeletion for RedisStore<Z>
where
    Z: Serializer<Session = Record>,
{
    /// Nothing to do: Redis removes expired keys itself.
    async fn delete_expired(&self) -> session_store::Result<()> {
        Ok(())
    }
}

/// A builder for the near cache of a [`TieredStore`]: a [`RecordStore`] whose entries live at
/// most `min(the record's lifetime, bound)` from when they were cached (its `ttl_fn`). Add a
/// bound on its size with [`max`](MemoryStoreBuilder::max) if you like.
///
/// **The staleness bound.** A server serves a session from its near cache without asking
/// Redis, so after another server destroys or changes that session, this server may go on
/// serving its cached copy for at most `bound` (plus one Redis round trip: the copy is cached
/// just after it was read or written). `bound` = 0 caches nothing (every load goes to Redis).
/// With a [`TieredStore`] a stale copy is never written back: its `save` is `SET XX`, and a
/// failed one drops the cached copy, so the destroy wins as soon as this server next writes.
///
/// It also works as the cache half of tower-sessions' `CachingSessionStore` (same bound on
/// reads, but that store's `save` writes back whatever it holds).
pub fn near_cache(bound: Duration) -> MemoryStoreBuilder<JsonSerializer<Record>> {
    record_store().ttl_fn(move |record: &Record, _id: &str| {
        record
            .cookie_ttl(SystemTime::now())
            .unwrap_or(ONE_DAY)
            .min(bound)
    })
}

/// Two tiers: an in-memory near cache (a [`RecordStore`] from [`near_cache`]) in front of a
/// [`RedisRecordStore`] shared by every server. Loads are served from memory while the near
/// cache holds the session; writes go to Redis first, then to the near cache. See
/// [`near_cache`] for how stale a read can be.
#[derive(Clone, Debug)]
pub struct TieredStore {
    near: RecordStore,
    far: RedisRecordStore,
}

impl TieredStore {
    /// `far` with a near cache whose entries live at most `bound` (see [`near_cache`]).
    pub fn new(far: RedisRecordStore, bound: Duration) -> Result<Self, Error> {
        Ok(Self::with_near_cache(near_cache(bound).build()?, far))
    }

    /// `far` with the given near cache (build it with [`near_cache`] for a staleness bound;
    /// any other [`RecordStore`] keeps records up to their own expiry).
    pub fn with_near_cache(near: RecordStore, far: RedisRecordStore) -> Self {
        Self { near, far }
    }

    /// The near cache.
    pub fn near(&self) -> &RecordStore {
        &self.near
    }

    /// The Redis store.
    pub fn far(&self) -> &RedisRecordStore {
        &self.far
    }

    /// Renews `record`'s expiry without rewriting its data ([`RedisStore::touch`] in Redis)
    /// and drops the near cache's copy (renewing that copy would restart its staleness
    /// window with data Redis may have replaced; the next load reads Redis). Returns false
    /// if Redis no longer has the session.
    pub async fn touch(&self, record: &Record) -> Result<bool, Error> {
        let id = record.id.to_string();
        let touched = self.far.touch(&id, record).await;
        self.near.destroy(id);
        touched
    }

    fn cache(&self, record: &Record) -> session_store::Result<()> {
        self.near
            .set(&record.id.to_string(), record)
            .map_err(to_store_error)
    }
}

#[async_trait]
impl SessionStore for TieredStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        create_in(&self.far, record).await.map_err(to_store_error)?;
        self.cache(record)
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let id = record.id.to_string();
        let stored = self.far.set_if_present(&id, record).await;
        match stored {
            Ok(true) => self.cache(record),
            Ok(false) => {
                // Destroyed or expired in Redis: our copy is stale, forget it.
                self.near.destroy(id);
                Ok(())
            }
            Err(e) => {
                // Unknown outcome: do not keep serving a copy Redis may not have.
                self.near.destroy(id);
                Err(to_store_error(e))
            }
        }
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        let id = session_id.to_string();
        // (A near-cache entry that does not decode has been removed: then ask Redis.)
        if let Ok(Some(record)) = self.near.get(&id) {
            return Ok(Some(record));
        }
        let record = self.far.get(&id).await.map_err(to_store_error)?;
        if let Some(record) = &record {
            self.cache(record)?;
        }
        Ok(record)
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        let id = session_id.to_string();
        self.near.destroy(id.as_str());
        self.far.destroy(id).await.map(drop).map_err(to_store_error)
    }
}

#[async_trait]
impl ExpiredDeletion for TieredStore {
    /// Prunes the near cache (Redis removes expired keys itself).
    async fn delete_expired(&self) -> session_store::Result<()> {
        self.near.prune();
        Ok(())
    }
}
