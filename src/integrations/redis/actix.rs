//! [`RedisStore`] and [`Tiered`] as actix-session (0.11) storage backends, for actix-web.
//!
//! Keys are 64 random alphanumeric characters (as actix-session's own stores make them),
//! stored under the store's prefix. The time to live actix-session passes is the session's
//! lifetime in Redis (unless the store's `ttl` or `ttl_fn` option says otherwise):
//! - `save` (a new session) is `SET NX` under a fresh key;
//! - `update` (changed state) is `SET XX`: a session that expired or was destroyed meanwhile
//!   (a logout that ran while this request held it) stays gone. Nothing is stored and the
//!   old, dead key is returned, so the client's next request starts a fresh session (as the
//!   in-memory store does; actix-session's own Redis store saves the state under a new key
//!   instead, which would hand a request in flight at the logout, a thief's included, a new
//!   key with the logged-out state);
//! - `update_ttl` (unchanged state: actix-session calls it on every request under
//!   `TtlExtensionPolicy::OnEveryRequest`) is one `PEXPIRE` ([`RedisStore::renew`]),
//!   skipped under the store's
//!   [`touch_after`](super::RedisStoreBuilder::touch_after), `disable_touch` and
//!   `disable_ttl`. The stored `expires_ms` keeps the value of the last write (Redis's own
//!   expiry is what ends the session).

use std::collections::HashMap;

use actix_session::storage::{LoadError, SaveError, SessionKey, SessionStore, UpdateError};

use super::tiered::Tiered;
use super::{Condition, RedisStore, RedisStoreBuilder, Target};
use crate::integrations::actix_session::{State, new_key, std_ttl};
use crate::session::{Error, JsonSerializer, Serializer};

/// A Redis store of actix-web session states.
pub type RedisStateStore = RedisStore<JsonSerializer<State>>;

/// The two-tier store of actix-web session states: an in-memory near cache in front of a
/// [`RedisStateStore`]; see [`Tiered`] for its staleness bound and options.
pub type TieredStateStore = Tiered<JsonSerializer<State>>;

/// A builder for a [`RedisStateStore`] at `target` (a URL, or a [`Target`]).
///
/// ```no_run
/// # async fn demo() -> Result<(), evanesce::session::Error> {
/// use actix_session::SessionMiddleware;
/// use actix_web::cookie::Key;
/// use evanesce::integrations::redis::redis_state_store;
///
/// let store = redis_state_store("redis://127.0.0.1:6379/").build().await?;
/// let middleware = SessionMiddleware::new(store, Key::generate());
/// // App::new().wrap(middleware)
/// # Ok(()) }
/// ```
pub fn redis_state_store(target: impl Into<Target>) -> RedisStoreBuilder<JsonSerializer<State>> {
    RedisStore::with_serializer(target, JsonSerializer::new())
}

/// How many fresh keys `save` tries after collisions before it gives up.
const SAVE_ATTEMPTS: usize = 16;

fn other(e: Error) -> anyhow::Error {
    anyhow::Error::new(e)
}

fn to_save_error(e: Error) -> SaveError {
    match e {
        e @ Error::Encode(_) => SaveError::Serialization(other(e)),
        e => SaveError::Other(other(e)),
    }
}

fn to_update_error(e: Error) -> UpdateError {
    match e {
        e @ Error::Encode(_) => UpdateError::Serialization(other(e)),
        e => UpdateError::Other(other(e)),
    }
}

fn to_load_error(e: Error) -> LoadError {
    match e {
        e @ Error::Decode { .. } => LoadError::Deserialization(other(e)),
        e => LoadError::Other(other(e)),
    }
}

/// The operations the two stores share, so that the trait is implemented once for both.
trait Backend {
    async fn get_state(&self, key: &str) -> Result<Option<State>, Error>;
    async fn write_state(
        &self,
        key: &str,
        state: &State,
        condition: Condition,
    ) -> Result<bool, Error>;
    async fn renew_state(&self, key: &str, state: &State) -> Result<bool, Error>;
    async fn destroy_key(&self, key: &str) -> Result<usize, Error>;
}

impl<Z: Serializer<Session = State>> Backend for RedisStore<Z> {
    async fn get_state(&self, key: &str) -> Result<Option<State>, Error> {
        self.get(key).await
    }
    async fn write_state(
        &self,
        key: &str,
        state: &State,
        condition: Condition,
    ) -> Result<bool, Error> {
        self.write(key, state, condition, None).await
    }
    async fn renew_state(&self, key: &str, state: &State) -> Result<bool, Error> {
        self.renew(key, state).await
    }
    async fn destroy_key(&self, key: &str) -> Result<usize, Error> {
        self.destroy(key).await
    }
}

impl<Z: Serializer<Session = State>> Backend for Tiered<Z> {
    async fn get_state(&self, key: &str) -> Result<Option<State>, Error> {
        self.get(key).await
    }
    async fn write_state(
        &self,
        key: &str,
        state: &State,
        condition: Condition,
    ) -> Result<bool, Error> {
        self.write(key, state, condition, None).await
    }
    async fn renew_state(&self, key: &str, state: &State) -> Result<bool, Error> {
        self.renew(key, state).await
    }
    async fn destroy_key(&self, key: &str) -> Result<usize, Error> {
        self.destroy(key).await
    }
}

/// Stores `state` under a fresh key (a new one on the astronomically unlikely collision).
async fn save_new(store: &impl Backend, state: &State) -> Result<SessionKey, Error> {
    for _ in 0..SAVE_ATTEMPTS {
        let key = new_key();
        if store.write_state(&key, state, Condition::Absent).await? {
            // A 64-character key is within actix-session's 4064-byte limit.
            return SessionKey::try_from(key)
                .map_err(|e| Error::Config(format!("session key refused: {e}")));
        }
    }
    Err(Error::Backend(
        format!("{SAVE_ATTEMPTS} random session keys in a row were taken").into(),
    ))
}

async fn load(
    store: &impl Backend,
    key: &SessionKey,
) -> Result<Option<HashMap<String, String>>, LoadError> {
    store
        .get_state(key.as_ref())
        .await
        .map(|found| found.map(|s| s.state))
        .map_err(to_load_error)
}

async fn save(
    store: &impl Backend,
    state: HashMap<String, String>,
    ttl: &time::Duration,
) -> Result<SessionKey, SaveError> {
    let state = State::new(state, std::time::SystemTime::now(), std_ttl(ttl));
    save_new(store, &state).await.map_err(to_save_error)
}

async fn update(
    store: &impl Backend,
    key: SessionKey,
    state: HashMap<String, String>,
    ttl: &time::Duration,
) -> Result<SessionKey, UpdateError> {
    let state = State::new(state, std::time::SystemTime::now(), std_ttl(ttl));
    // Stored or not, the key stays: a dead key loads nothing.
    store
        .write_state(key.as_ref(), &state, Condition::Present)
        .await
        .map_err(to_update_error)?;
    Ok(key)
}

async fn update_ttl(
    store: &impl Backend,
    key: &SessionKey,
    ttl: &time::Duration,
) -> Result<(), anyhow::Error> {
    let expiry = State::new(HashMap::new(), std::time::SystemTime::now(), std_ttl(ttl));
    store
        .renew_state(key.as_ref(), &expiry)
        .await
        .map(drop)
        .map_err(other)
}

async fn delete(store: &impl Backend, key: &SessionKey) -> Result<(), anyhow::Error> {
    store
        .destroy_key(key.as_ref())
        .await
        .map(drop)
        .map_err(other)
}

impl<Z: Serializer<Session = State>> SessionStore for RedisStore<Z> {
    async fn load(
        &self,
        session_key: &SessionKey,
    ) -> Result<Option<HashMap<String, String>>, LoadError> {
        load(self, session_key).await
    }

    async fn save(
        &self,
        session_state: HashMap<String, String>,
        ttl: &time::Duration,
    ) -> Result<SessionKey, SaveError> {
        save(self, session_state, ttl).await
    }

    async fn update(
        &self,
        session_key: SessionKey,
        session_state: HashMap<String, String>,
        ttl: &time::Duration,
    ) -> Result<SessionKey, UpdateError> {
        update(self, session_key, session_state, ttl).await
    }

    async fn update_ttl(
        &self,
        session_key: &SessionKey,
        ttl: &time::Duration,
    ) -> Result<(), anyhow::Error> {
        update_ttl(self, session_key, ttl).await
    }

    async fn delete(&self, session_key: &SessionKey) -> Result<(), anyhow::Error> {
        delete(self, session_key).await
    }
}

impl<Z: Serializer<Session = State>> SessionStore for Tiered<Z> {
    async fn load(
        &self,
        session_key: &SessionKey,
    ) -> Result<Option<HashMap<String, String>>, LoadError> {
        load(self, session_key).await
    }

    async fn save(
        &self,
        session_state: HashMap<String, String>,
        ttl: &time::Duration,
    ) -> Result<SessionKey, SaveError> {
        save(self, session_state, ttl).await
    }

    async fn update(
        &self,
        session_key: SessionKey,
        session_state: HashMap<String, String>,
        ttl: &time::Duration,
    ) -> Result<SessionKey, UpdateError> {
        update(self, session_key, session_state, ttl).await
    }

    async fn update_ttl(
        &self,
        session_key: &SessionKey,
        ttl: &time::Duration,
    ) -> Result<(), anyhow::Error> {
        update_ttl(self, session_key, ttl).await
    }

    async fn delete(&self, session_key: &SessionKey) -> Result<(), anyhow::Error> {
        delete(self, session_key).await
    }
}
