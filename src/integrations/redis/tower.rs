//! [`RedisStore`] and [`Tiered`] as tower-sessions (0.15) session stores.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, ExpiredDeletion, SessionStore};

use super::tiered::{Tiered, near_lifetime};
use super::{Condition, RedisStore, RedisStoreBuilder, Target};
use crate::integrations::tower_sessions::record_store;
use crate::session::{Error, JsonSerializer, MemoryStoreBuilder, Serializer};

/// A Redis store of tower-sessions records (JSON through serde_json).
pub type RedisRecordStore = RedisStore<JsonSerializer<Record>>;

/// The two-tier store of tower-sessions records: an in-memory near cache in front of a
/// [`RedisRecordStore`]; see [`Tiered`] for its staleness bound and options.
pub type TieredStore = Tiered<JsonSerializer<Record>>;

/// A builder for a [`RedisRecordStore`] at `target` (a URL, or a [`Target`]): a record lives
/// in Redis until its `expiry_date` (unless `ttl` or `ttl_fn` say otherwise).
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
pub fn redis_record_store(target: impl Into<Target>) -> RedisStoreBuilder<JsonSerializer<Record>> {
    RedisStore::with_serializer(target, JsonSerializer::new())
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

/// The record's data, encoded in a stable order (a `HashMap` iterates in a per-instance
/// order), for the digest that tells an unchanged record from a changed one.
fn data_bytes(record: &Record) -> Vec<u8> {
    let sorted: BTreeMap<&String, &serde_json::Value> = record.data.iter().collect();
    serde_json::to_vec(&sorted).unwrap_or_default()
}

/// What `save` does with a record, given the store's memory of its own writes.
enum Save {
    /// The same data was written (or renewed) recently enough: nothing to send.
    Skip,
    /// Write it (`SET XX`), remembering this digest of its data.
    Write(Option<u128>),
}

fn plan_save<Z>(store: &RedisStore<Z>, record: &Record) -> Save
where
    Z: Serializer<Session = Record>,
{
    let digest = store.digest(&data_bytes(record));
    if store.unchanged_recently(&record.id.to_string(), digest) {
        Save::Skip
    } else {
        Save::Write(digest)
    }
}

/// `SET NX` with fresh ids until one is free.
async fn create_in<Z>(store: &RedisStore<Z>, record: &mut Record) -> Result<(), Error>
where
    Z: Serializer<Session = Record>,
{
    for _ in 0..CREATE_ATTEMPTS {
        let digest = store.digest(&data_bytes(record));
        if store
            .write(&record.id.to_string(), record, Condition::Absent, digest)
            .await?
        {
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
    /// find through `create`, so `save` is only ever an update). With
    /// [`touch_after`](RedisStoreBuilder::touch_after) (or `disable_touch`, `disable_ttl`),
    /// a record whose data this store wrote identically less than that period ago is not
    /// written again (tower-sessions' `with_always_save(true)` saves on every request to
    /// renew the expiry).
    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let Save::Write(digest) = plan_save(self, record) else {
            return Ok(());
        };
        self.write(&record.id.to_string(), record, Condition::Present, digest)
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

/// A builder for the near cache of a [`TieredStore`]: a record store whose entries live at
/// most `min(the record's lifetime, bound)` from when they were cached (its `ttl_fn`). Add a
/// bound on its size with [`max`](MemoryStoreBuilder::max) if you like, and pass the store
/// to [`Tiered::with_near_cache`]; [`Tiered::builder`] does all of this, and can serve
/// stale reads while Redis is unreachable.
///
/// It also works as the cache half of tower-sessions' `CachingSessionStore`, wrapped as
/// `RecordCache::new(near_cache(bound).build()?)` (the built store is a [`MemoryStore`],
/// which as a primary store only updates live records; [`RecordCache`] stores what the
/// caching store hands it). The bound caps how long a record deleted elsewhere stays in that
/// cache; `CachingSessionStore` itself fills the cache after a load without the ordering
/// [`Tiered`] keeps, so prefer [`Tiered`].
///
/// [`MemoryStore`]: crate::session::MemoryStore
/// [`RecordCache`]: crate::integrations::tower_sessions::RecordCache
pub fn near_cache(bound: Duration) -> MemoryStoreBuilder<JsonSerializer<Record>> {
    record_store().ttl_fn(move |record: &Record, _id: &str| near_lifetime(record, bound))
}

#[async_trait]
impl<Z> SessionStore for Tiered<Z>
where
    Z: Serializer<Session = Record>,
{
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        create_in(self.far(), record)
            .await
            .map_err(to_store_error)?;
        self.cache(&record.id.to_string(), record);
        Ok(())
    }

    /// As [`RedisStore`]'s `save` (skipped for unchanged data under `touch_after`; a
    /// skipped save leaves the near copy as it was), then the near copy.
    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let Save::Write(digest) = plan_save(self.far(), record) else {
            return Ok(());
        };
        self.write(&record.id.to_string(), record, Condition::Present, digest)
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
impl<Z> ExpiredDeletion for Tiered<Z>
where
    Z: Serializer<Session = Record>,
{
    /// Prunes the near cache (Redis removes expired keys itself).
    async fn delete_expired(&self) -> session_store::Result<()> {
        self.near().prune();
        Ok(())
    }
}
