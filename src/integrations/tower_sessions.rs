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
//! As the cache half of tower-sessions' `CachingSessionStore`, in front of a database
//! store: `CachingSessionStore::new(record_store().max(10_000).build()?, database_store)`.
//! Loads are then served from memory while the session is held, and the bound keeps the
//! cache's footprint fixed.
//!
//! (The examples use the `tower-sessions` and `time` crates, which an axum app has anyway.)

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, ExpiredDeletion, SessionStore};

use crate::session::{Error, JsonSerializer, MemoryStore, MemoryStoreBuilder, SessionData};

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
    Z: crate::session::Serializer<Session = Record>,
{
    /// Stores a new record; on an id collision with a live session, the record gets a fresh
    /// id instead (so a session can never be taken over by a colliding id).
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        loop {
            if self
                .set_if_absent(&record.id.to_string(), record)
                .map_err(backend)?
            {
                return Ok(());
            }
            record.id = Id::default();
        }
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.set(&record.id.to_string(), record).map_err(backend)
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        self.get(&session_id.to_string()).map_err(backend)
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        self.destroy(session_id.to_string());
        Ok(())
    }
}

#[async_trait]
impl<Z> ExpiredDeletion for MemoryStore<Z>
where
    Z: crate::session::Serializer<Session = Record>,
{
    /// Removes expired records now (the engine does so on its own as writes happen, so
    /// running `continuously_delete_expired` is optional).
    async fn delete_expired(&self) -> session_store::Result<()> {
        self.prune();
        Ok(())
    }
}
