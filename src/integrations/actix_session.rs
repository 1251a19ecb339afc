//! [`MemoryStore`] as an actix-session (0.11) storage backend, for actix-web.
//!
//! ```no_run
//! use actix_session::SessionMiddleware;
//! use actix_web::cookie::Key;
//! use evanesce::integrations::actix_session::{StateStore, state_store};
//!
//! let store: StateStore = state_store().max(100_000).build()?;
//! let key = Key::generate();
//! // App::new().wrap(SessionMiddleware::new(store.clone(), key.clone()))
//! # let _ = SessionMiddleware::new(store, key);
//! # Ok::<(), evanesce::session::Error>(())
//! ```
//!
//! Session keys are 64 random alphanumeric characters from a cryptographically secure
//! generator (`rand`'s thread RNG), as actix-session's own stores make them. The time to
//! live actix-session passes with each call is the session's lifetime (unless the store's
//! `ttl` or `ttl_fn` option says otherwise), and the engine reclaims the session when it
//! ends, read again or not.
//!
//! With the `redis` feature too, sessions can live in Redis, shared by every server:
//! [`RedisStateStore`](crate::integrations::redis::RedisStateStore) (a `RedisStore` of
//! [`State`]s) and [`TieredStateStore`](crate::integrations::redis::TieredStateStore) (an
//! in-memory near cache in front of it) are actix-session stores too.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_session::storage::{LoadError, SaveError, SessionKey, SessionStore, UpdateError};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};

use crate::session::{Error, JsonSerializer, MemoryStore, MemoryStoreBuilder, SessionData};

/// What the store keeps for an actix-web session: actix-session's state (a map of
/// JSON-encoded values) and when it expires.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// actix-session's session state.
    pub state: HashMap<String, String>,
    /// When the session expires, in milliseconds since the Unix epoch.
    pub expires_ms: u64,
}

impl State {
    pub(crate) fn new(state: HashMap<String, String>, now: SystemTime, ttl: Duration) -> Self {
        let expires = now.checked_add(ttl).unwrap_or(now);
        let expires_ms = expires
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self { state, expires_ms }
    }
}

impl SessionData for State {
    /// Until `expires_ms`.
    fn cookie_ttl(&self, now: SystemTime) -> Option<Duration> {
        let expires = UNIX_EPOCH.checked_add(Duration::from_millis(self.expires_ms))?;
        Some(expires.duration_since(now).unwrap_or(Duration::ZERO))
    }

    /// Takes `newer`'s expiry.
    fn touch_from(&mut self, newer: &Self) {
        self.expires_ms = newer.expires_ms;
    }

    /// The `expires_ms` field.
    fn touch_json(&self) -> Option<(&'static str, Option<Vec<u8>>)> {
        Some((
            "expires_ms",
            Some(serde_json::to_vec(&self.expires_ms).ok()?),
        ))
    }
}

/// A store of actix-web session states.
pub type StateStore = MemoryStore<JsonSerializer<State>>;

/// A builder for a [`StateStore`] (every [`MemoryStoreBuilder`] option applies).
pub fn state_store() -> MemoryStoreBuilder<JsonSerializer<State>> {
    MemoryStore::with_serializer(JsonSerializer::new())
}

/// actix-session's time to live (a `time` duration; negative means "already over").
pub(crate) fn std_ttl(ttl: &time::Duration) -> Duration {
    Duration::try_from(*ttl).unwrap_or(Duration::ZERO)
}

pub(crate) fn new_key() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(64)
        .map(char::from)
        .collect()
}

fn other(e: Error) -> anyhow::Error {
    anyhow::Error::new(e)
}

impl<Z> MemoryStore<Z>
where
    Z: crate::session::Serializer<Session = State>,
{
    /// Stores `state` under a fresh key (a new one on the astronomically unlikely
    /// collision).
    fn save_new(&self, state: &State) -> Result<SessionKey, Error> {
        loop {
            let key = new_key();
            if self.set_if_absent(&key, state)? {
                // A 64-character key is within actix-session's 4064-byte limit.
                return SessionKey::try_from(key)
                    .map_err(|e| Error::Config(format!("session key refused: {e}")));
            }
        }
    }
}

impl<Z> SessionStore for MemoryStore<Z>
where
    Z: crate::session::Serializer<Session = State>,
{
    async fn load(
        &self,
        session_key: &SessionKey,
    ) -> Result<Option<HashMap<String, String>>, LoadError> {
        match self.get(session_key.as_ref()) {
            Ok(found) => Ok(found.map(|s| s.state)),
            Err(e @ Error::Decode { .. }) => Err(LoadError::Deserialization(other(e))),
            Err(e) => Err(LoadError::Other(other(e))),
        }
    }

    async fn save(
        &self,
        session_state: HashMap<String, String>,
        ttl: &time::Duration,
    ) -> Result<SessionKey, SaveError> {
        let state = State::new(session_state, self.now(), std_ttl(ttl));
        self.save_new(&state).map_err(|e| match e {
            e @ Error::Encode(_) => SaveError::Serialization(other(e)),
            e => SaveError::Other(other(e)),
        })
    }

    /// Rewrites the session's state if the session is still live. A session that expired or
    /// was removed (a logout) while the request held it stays gone: nothing is stored, and
    /// the key returned is the old, dead one, so the client's next request starts a fresh
    /// session. (actix-session's Redis store saves the state under a new key instead; that
    /// would hand whoever had a request in flight at the logout, a thief with a stolen cookie
    /// included, a new key with the logged-out state.)
    async fn update(
        &self,
        session_key: SessionKey,
        session_state: HashMap<String, String>,
        ttl: &time::Duration,
    ) -> Result<SessionKey, UpdateError> {
        let state = State::new(session_state, self.now(), std_ttl(ttl));
        let to_update = |e: Error| match e {
            e @ Error::Encode(_) => UpdateError::Serialization(other(e)),
            e => UpdateError::Other(other(e)),
        };
        // Stored or not, the key stays: a dead key loads nothing.
        self.set_if_present(session_key.as_ref(), &state)
            .map_err(to_update)?;
        Ok(session_key)
    }

    async fn update_ttl(
        &self,
        session_key: &SessionKey,
        ttl: &time::Duration,
    ) -> Result<(), anyhow::Error> {
        let expiry = State::new(HashMap::new(), self.now(), std_ttl(ttl));
        self.touch(session_key.as_ref(), &expiry).map_err(other)?;
        Ok(())
    }

    async fn delete(&self, session_key: &SessionKey) -> Result<(), anyhow::Error> {
        self.destroy(session_key.as_ref());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Serializer;

    /// A touch splices the new `expires_ms` into the stored state (no decode of the state),
    /// and gives what decode, `touch_from` and encode give.
    #[test]
    fn a_spliced_touch_equals_a_decoded_one() {
        let mut state = HashMap::new();
        state.insert("user".to_string(), "\"ada\"".to_string());
        let stored = State {
            state,
            expires_ms: 1_800_000_000_000,
        };
        let newer = State {
            expires_ms: 1_800_003_600_000,
            ..stored.clone()
        };
        let z = JsonSerializer::<State>::new();
        let bytes = z.encode(&stored).unwrap();
        let spliced = z
            .decode(&z.touch(&bytes, &newer).unwrap().unwrap())
            .unwrap();
        let mut slow = z.decode(&bytes).unwrap();
        slow.touch_from(&newer);
        assert_eq!(spliced, slow);
    }
}
