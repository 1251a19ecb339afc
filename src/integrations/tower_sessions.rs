//! [`MemoryStore`] as a tower-sessions (0.15) session store, for axum and other tower
//! stacks.
//!
//! The store keeps tower-sessions' [`Record`]s (JSON through serde_json); a record lives until
//! its `expiry_date` (unless the store's `ttl` or `ttl_fn` option says otherwise), and the
//! engine reclaims it then, read again or not. Unlike tower-sessions' own `MemoryStore`,
//! nothing expired stays in memory, and the store can be bounded (`max`, `max_bytes`).
//!
//! ```no_run
//! use evanesce::integrations::tower_sessions::{RecordStore, record_store};
//! use tower_sessions::{Expiry, SessionManagerLayer};
//!
//! let store: RecordStore = record_store().max(100_000).build()?;
//! let layer = SessionManagerLayer::new(store)
//!     .with_expiry(Expiry::OnInactivity(time::Duration::minutes(30)));
//! // axum::Router::new().route(...).layer(layer)
//! # Ok::<(), evanesce::session::Error>(())
//! ```
//!
//! As the primary store, `save` only updates a live record: a request that loaded the
//! session before another one logged out (deleted it) cannot bring it back by saving
//! afterwards (tower-sessions creates sessions through `create`, never through `save`).
//!
//! As the cache half of tower-sessions' `CachingSessionStore`, in front of a database
//! store, wrap it in a [`RecordCache`], whose `save` fills the cache:
//! `CachingSessionStore::new(RecordCache::new(record_store().max(10_000).build()?), database_store)`.
//! Loads are then served from memory while the session is held, and the bound keeps the
//! cache's footprint fixed.
//!
//! (The examples use the `tower-sessions` and `time` crates, which an axum app has anyway.)

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use arrayvec::ArrayString;
use async_trait::async_trait;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, ExpiredDeletion, SessionStore};

use crate::session::{
    Error, JsonSerializer, MemoryStore, MemoryStoreBuilder, Serializer, SessionData,
};

/// The stack buffer of an id's text (22 bytes today; room for a longer encoding).
type IdText = ArrayString<48>;

/// Calls `f` with the text of `id` (its `Display`: 22 base64 characters), written on the
/// stack: every load and save is keyed by it, and `to_string` cost a heap allocation each
/// (should the text ever outgrow the buffer, it falls back to `to_string`).
fn with_id<R>(id: &Id, f: impl FnOnce(&str) -> R) -> R {
    let mut text = IdText::new();
    if write!(text, "{id}").is_ok() {
        f(&text)
    } else {
        f(&id.to_string())
    }
}

/// A store of tower-sessions records.
pub type RecordStore = MemoryStore<JsonSerializer<Record>>;

/// A builder for a [`RecordStore`] (every [`MemoryStoreBuilder`] option applies).
pub fn record_store() -> MemoryStoreBuilder<JsonSerializer<Record>> {
    MemoryStore::with_serializer(JsonSerializer::new())
}

impl SessionData for Record {
    /// Until `expiry_date`.
    fn cookie_ttl(&self, now: SystemTime) -> Option<Duration> {
        let now = time::OffsetDateTime::from(now);
        let left = self.expiry_date - now;
        Some(left.try_into().unwrap_or(Duration::ZERO))
    }

    /// Takes `newer`'s `expiry_date`.
    fn touch_from(&mut self, newer: &Self) {
        self.expiry_date = newer.expiry_date;
    }

    /// The `expiry_date` field.
    fn touch_json(&self) -> Option<(&'static str, Option<Vec<u8>>)> {
        Some((
            "expiry_date",
            Some(serde_json::to_vec(&self.expiry_date).ok()?),
        ))
    }

    /// serde's bytes for a `Record` (its derived field order), with the data map written by
    /// the session writer and the id and expiry date by serde_json.
    fn write_json(&self, out: &mut Vec<u8>) -> bool {
        out.extend_from_slice(b"{\"id\":");
        if serde_json::to_writer(&mut *out, &self.id).is_err() {
            return false;
        }
        out.extend_from_slice(b",\"data\":");
        crate::session::json::write_object(out, &self.data);
        out.extend_from_slice(b",\"expiry_date\":");
        if serde_json::to_writer(&mut *out, &self.expiry_date).is_err() {
            return false;
        }
        out.push(b'}');
        true
    }
}

fn backend(e: Error) -> session_store::Error {
    match e {
        Error::Encode(e) => session_store::Error::Encode(e.to_string()),
        Error::Decode { source, .. } => session_store::Error::Decode(source.to_string()),
        other => session_store::Error::Backend(other.to_string()),
    }
}

#[async_trait]
impl<Z> SessionStore for MemoryStore<Z>
where
    Z: Serializer<Session = Record>,
{
    /// Stores a new record; on an id collision with a live session, the record gets a fresh
    /// id instead (so a session can never be taken over by a colliding id).
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        loop {
            if with_id(&record.id, |id| self.set_if_absent(id, record)).map_err(backend)? {
                return Ok(());
            }
            record.id = Id::default();
        }
    }

    /// Rewrites a live record; a record that has expired or was deleted meanwhile (a
    /// `/logout` that ran while this request held the session) stays gone: `save` is an
    /// update only ([`set_if_present`](MemoryStore::set_if_present), Redis's `SET XX`), never
    /// a create. tower-sessions creates through [`create`](SessionStore::create).
    async fn save(&self, record: &Record) -> session_store::Result<()> {
        with_id(&record.id, |id| self.set_if_present(id, record))
            .map(drop)
            .map_err(backend)
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        with_id(session_id, |id| self.get(id)).map_err(backend)
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        with_id(session_id, |id| self.destroy(id));
        Ok(())
    }
}

#[async_trait]
impl<Z> ExpiredDeletion for MemoryStore<Z>
where
    Z: Serializer<Session = Record>,
{
    /// Removes expired records now (the engine does so on its own as writes happen, so
    /// running `continuously_delete_expired` is optional).
    async fn delete_expired(&self) -> session_store::Result<()> {
        self.prune();
        Ok(())
    }
}

/// A [`MemoryStore`] of records in the cache role of tower-sessions' `CachingSessionStore`
/// (`CachingSessionStore::new(RecordCache::new(store), database_store)`).
///
/// The database store is the authority there, and `CachingSessionStore` fills its cache with
/// `save` (after a load from the database, and on every save): so here `save` and `create`
/// store the record whatever the cache holds (create or replace, under the id the database
/// gave), where the [`MemoryStore`] itself, as a primary store, only updates a live record.
///
/// **Staleness.** `CachingSessionStore` loads a record from the database and then fills the
/// cache; a delete (a logout) that runs between the two leaves the deleted record in the
/// cache, where later loads find it, until it expires or the bound evicts it. That is
/// `CachingSessionStore`'s design, not this cache's; bound the window with a `ttl_fn` that caps
/// each record's life in the cache (as the Redis integration's `near_cache` does), or use the
/// [`MemoryStore`] alone.
pub struct RecordCache<Z: Serializer<Session = Record> = JsonSerializer<Record>> {
    store: MemoryStore<Z>,
}

impl<Z: Serializer<Session = Record>> RecordCache<Z> {
    /// `store` in the cache role.
    pub fn new(store: MemoryStore<Z>) -> Self {
        Self { store }
    }

    /// The store (for its counters, `length`, `clear`, ...).
    pub fn store(&self) -> &MemoryStore<Z> {
        &self.store
    }
}

impl<Z: Serializer<Session = Record>> Clone for RecordCache<Z> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
        }
    }
}

impl<Z: Serializer<Session = Record>> std::fmt::Debug for RecordCache<Z> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RecordCache").field(&self.store).finish()
    }
}

#[async_trait]
impl<Z> SessionStore for RecordCache<Z>
where
    Z: Serializer<Session = Record>,
{
    /// Caches the record the database store just created, under its id.
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        with_id(&record.id, |id| self.store.set(id, record)).map_err(backend)
    }

    /// Caches the record (create or replace).
    async fn save(&self, record: &Record) -> session_store::Result<()> {
        with_id(&record.id, |id| self.store.set(id, record)).map_err(backend)
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        with_id(session_id, |id| self.store.get(id)).map_err(backend)
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        with_id(session_id, |id| self.store.destroy(id));
        Ok(())
    }
}

#[async_trait]
impl<Z> ExpiredDeletion for RecordCache<Z>
where
    Z: Serializer<Session = Record>,
{
    async fn delete_expired(&self) -> session_store::Result<()> {
        self.store.prune();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stores are keyed by an id's text made on the stack: it must be the id's
    /// `Display`, as tower-sessions and its cookie write it.
    #[test]
    fn an_ids_text_is_its_display() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut ids = vec![Id(0), Id(-1), Id(i128::MIN), Id(i128::MAX), Id::default()];
        for _ in 0..64 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ids.push(Id((i128::from(x) << 64) ^ i128::from(x.rotate_left(17))));
        }
        for id in ids {
            // On the stack, not through the fallback.
            let mut text = IdText::new();
            assert!(write!(text, "{id}").is_ok(), "{id} outgrows the buffer");
            with_id(&id, |text| assert_eq!(text, id.to_string()));
        }
    }

    /// A touch splices the new `expiry_date` into the stored record (no decode of its data),
    /// and gives what decode, `touch_from` and encode give.
    #[test]
    fn a_spliced_touch_equals_a_decoded_one() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let mut data = std::collections::HashMap::new();
        data.insert("views".to_string(), serde_json::json!(3));
        data.insert(
            "user".to_string(),
            serde_json::json!({"id": 7, "name": "a\"b"}),
        );
        let stored = Record {
            id: Id(42),
            data,
            expiry_date: now + time::Duration::hours(1),
        };
        let newer = Record {
            expiry_date: now + time::Duration::hours(2),
            ..stored.clone()
        };
        let z = JsonSerializer::<Record>::new();
        let bytes = z.encode(&stored).unwrap();
        let spliced = z
            .decode(&z.touch(&bytes, &newer).unwrap().unwrap())
            .unwrap();
        let mut slow = z.decode(&bytes).unwrap();
        slow.touch_from(&newer);
        assert_eq!(spliced, slow);
        assert_eq!(spliced.expiry_date, newer.expiry_date);
    }

    /// The session writer's bytes for a record are serde_json's, whatever the id, the data
    /// and the date.
    #[test]
    fn records_are_written_as_serde_json_writes_them() {
        let base = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        for (i, id) in [0i128, -1, 42, i128::MAX, i128::MIN, 0x5eed << 64]
            .into_iter()
            .enumerate()
        {
            let mut data = std::collections::HashMap::new();
            for k in 0..i * 3 {
                data.insert(
                    format!("key \"{k}\" \u{1}"),
                    serde_json::json!({"n": k, "f": 0.5, "s": ["x\ny", null, true]}),
                );
            }
            let record = Record {
                id: Id(id),
                data,
                expiry_date: base + time::Duration::nanoseconds(i as i64 * 123_456_789),
            };
            let mut ours = Vec::new();
            assert!(record.write_json(&mut ours));
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(&record).unwrap()
            );
        }
    }
}
