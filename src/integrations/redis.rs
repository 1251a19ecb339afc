//! Sessions in Redis: [`RedisStore`], the session store's methods and semantics over one Redis
//! key per session, so that every server of an app sees the same sessions.
//!
//! ```no_run
//! # async fn demo() -> Result<(), evanesce::session::Error> {
//! use std::time::Duration;
//! use evanesce::integrations::redis::RedisStore;
//! use evanesce::session::{Cookie, Session};
//!
//! let store = RedisStore::builder("redis://127.0.0.1:6379/")
//!     .prefix("myapp:sess:")
//!     .build()
//!     .await?;
//! let mut session = Session::with_cookie(Cookie::expiring_in(
//!     Duration::from_secs(3600),
//!     std::time::SystemTime::now(),
//! ));
//! session.insert("views", 1);
//! store.set("sid-1", &session).await?;
//! assert_eq!(store.get("sid-1").await?, Some(session));
//! store.destroy("sid-1").await?;
//! # Ok(()) }
//! ```
//!
//! Semantics (those of [`MemoryStore`](crate::session::MemoryStore), with Redis doing the
//! expiring):
//! - **Keys**: the session `id` is kept under `prefix + id` (prefix `"sess:"` by default), as
//!   the serializer's bytes. `ids`, `all`, `length` and `clear` walk the keys with
//!   `SCAN MATCH prefix*` (never `KEYS`, which blocks the server) and touch nothing outside
//!   the prefix.
//! - **Lifetime**: `set` is `SET key bytes PX ttl`, the ttl by the store's precedence: the
//!   `ttl` option, else `ttl_fn`, else the cookie ([`SessionData::cookie_ttl`]), else one
//!   day. A lifetime of zero deletes the key. Redis removes expired keys itself.
//! - **`touch`** never brings back a missing session and never loses a concurrent write. It
//!   reads the session, takes the newer cookie into it ([`SessionData::touch_from`]), and
//!   writes it back with a compare-and-set done in one Lua script: the key is rewritten (or,
//!   if the cookie is unchanged, only its expiry moved with `PEXPIRE`) only if it still
//!   holds the bytes read. A plain `SET ... XX` would not resurrect a destroyed session
//!   either, but it would overwrite user data that another server `set` between the read
//!   and the write with the stale data read; a bare `PEXPIRE` cannot replace the cookie. If
//!   the bytes changed meanwhile, `touch` reads again (a few times).
//! - **Failures**: every round trip to Redis is bounded by the connection timeout plus the
//!   response timeout (1 s each by default): against a dead or unreachable Redis an
//!   operation returns [`Error::Backend`] within that time, never hangs. The underlying
//!   `ConnectionManager` reconnects by itself: once Redis is back, the same store works
//!   again.
//! - **Not found** is `Ok(None)`; stored bytes that do not decode give [`Error::Decode`] and
//!   are removed (only if they are still the key's value).
//!
//! The store needs a tokio runtime with its time driver on (as the `redis` crate does).
//!
//! **Credentials.** The URL's password (`redis://user:password@host/`, or a `pass` /
//! `password` query parameter) never appears in the store's or the builder's `Debug`, nor in
//! an error the store returns: URLs are shown through [`redact_url`], and an error of the
//! `redis` crate whose text would contain the password is replaced by its text with the
//! password masked. Use [`redact_url`] too wherever your own code shows the URL.
//!
//! With the `tower-sessions` feature, a store of tower-sessions [`Record`]s is a
//! `SessionStore` ([`redis_record_store`]), and [`TieredStore`] puts an in-memory near cache
//! in front of it: see [`near_cache`] for the staleness bound.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, FromRedisValue, RedisError, Script};

use crate::session::{Error, Ids, JsonSerializer, Serializer, SessionData, TtlFn};

/// The longest `PX` sent (about 31,700 years): Redis refuses an expiry whose absolute time
/// overflows, so longer lifetimes are clamped to this.
const MAX_PX_MILLIS: u64 = 1_000_000_000_000_000;

/// How many keys one `SCAN` step asks for.
const SCAN_COUNT: usize = 500;

/// How many times `touch` and `get` read again when the key changed under them.
const CAS_ATTEMPTS: usize = 8;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "sess:";

/// The default connection timeout (each connection attempt).
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(1);

/// The default response timeout (each command).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Compare-and-set of one key. `KEYS[1]`: the key; `ARGV[1]`: the bytes it must still hold;
/// `ARGV[2]`: the new lifetime in milliseconds (`0`: delete the key); `ARGV[3]`, if given:
/// the new bytes (else only the expiry moves). Returns 1 if done, 0 if the key is missing,
/// 2 if it holds other bytes (nothing changed then).
const CAS_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
if current ~= ARGV[1] then return 2 end
if ARGV[2] == '0' then
  redis.call('DEL', KEYS[1])
elseif ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
";

/// What the compare-and-set script did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cas {
    Done,
    Missing,
    Changed,
}

/// Builds a [`RedisStore`]; see [`RedisStore::builder`].
pub struct RedisStoreBuilder<Z: Serializer = JsonSerializer> {
    url: String,
    prefix: String,
    serializer: Z,
    ttl: Option<Duration>,
    ttl_fn: Option<Arc<TtlFn<Z::Session>>>,
    connection_timeout: Duration,
    response_timeout: Duration,
    discarded_ttl_fn: bool,
}

impl<Z: Serializer> fmt::Debug for RedisStoreBuilder<Z> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("ttl_fn", &self.ttl_fn.is_some())
            .field("connection_timeout", &self.connection_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

impl<Z: Serializer> RedisStoreBuilder<Z> {
    fn with(url: String, serializer: Z) -> Self {
        Self {
            url,
            prefix: DEFAULT_PREFIX.to_string(),
            serializer,
            ttl: None,
            ttl_fn: None,
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            discarded_ttl_fn: false,
        }
    }

    /// Keeps session `id` under the key `prefix + id` (default [`DEFAULT_PREFIX`]). Several
    /// apps (or tests) can share one Redis database with different prefixes: the store never
    /// reads, counts or removes keys outside its own.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Every session lives `ttl` from its last `set` or `touch`, whatever its cookie says.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self.ttl_fn = None;
        self
    }

    /// Every session lives what `f(session, id)` says from its last `set` or `touch`
    /// (`Duration::ZERO`: `set` deletes it).
    pub fn ttl_fn(
        mut self,
        f: impl Fn(&Z::Session, &str) -> Duration + Send + Sync + 'static,
    ) -> Self {
        self.ttl = None;
        self.ttl_fn = Some(Arc::new(f));
        self
    }

    /// Stores sessions through `serializer`. Call it before [`ttl_fn`](Self::ttl_fn) (which
    /// is typed by the session): a `ttl_fn` set before is reported by [`build`](Self::build).
    pub fn serializer<Z2: Serializer>(self, serializer: Z2) -> RedisStoreBuilder<Z2> {
        RedisStoreBuilder {
            url: self.url,
            prefix: self.prefix,
            serializer,
            ttl: self.ttl,
            ttl_fn: None,
            connection_timeout: self.connection_timeout,
            response_timeout: self.response_timeout,
            discarded_ttl_fn: self.discarded_ttl_fn || self.ttl_fn.is_some(),
        }
    }

    /// How long one attempt to connect to Redis may take (default 1 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// How long Redis may take to answer one command (default 1 s).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Connects to Redis (within the connection plus response timeouts) and makes the
    /// store. An invalid URL or a zero timeout is [`Error::Config`]; a Redis that cannot be
    /// reached is [`Error::Backend`].
    pub async fn build(self) -> Result<RedisStore<Z>, Error> {
        if self.discarded_ttl_fn {
            return Err(Error::Config(
                "ttl_fn was set before serializer, which discards it: call serializer first".into(),
            ));
        }
        if self.connection_timeout.is_zero() || self.response_timeout.is_zero() {
            return Err(Error::Config("the Redis timeouts must not be zero".into()));
        }
        let secrets = Secrets::of(&self.url);
        let client = Client::open(self.url.as_str()).map_err(|e| {
            Error::Config(secrets.mask(&format!(
                "invalid Redis URL {:?}: {e}",
                redact_url(&self.url)
            )))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            .set_response_timeout(Some(self.response_timeout))
            // Reconnection is retried on the next command anyway: keep each attempt short so
            // that a command waiting on one stays within its deadline.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(self.connection_timeout);
        let deadline = self
            .connection_timeout
            .saturating_add(self.response_timeout);
        let conn = match tokio::time::timeout(
            deadline,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        {
            Ok(conn) => conn.map_err(|e| secrets.backend(e))?,
            Err(_) => return Err(timed_out(deadline)),
        };
        let pattern = format!("{}*", escape_glob(&self.prefix));
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                url: redact_url(&self.url),
                secrets,
                prefix: self.prefix,
                pattern,
                serializer: self.serializer,
                ttl: self.ttl,
                ttl_fn: self.ttl_fn,
                deadline,
                cas: Script::new(CAS_SCRIPT),
            }),
        })
    }
}

/// Sessions in Redis, one key per session; see the [module documentation](self). Clones share
/// one connection (multiplexed: concurrent operations are pipelined on it).
pub struct RedisStore<Z: Serializer = JsonSerializer> {
    inner: Arc<Inner<Z>>,
}

struct Inner<Z: Serializer> {
    conn: ConnectionManager,
    /// The URL as shown: [`redact_url`]ed.
    url: String,
    /// What must never be shown of the URL.
    secrets: Secrets,
    prefix: String,
    /// `SCAN MATCH` pattern: the prefix with glob characters escaped, then `*`.
    pattern: String,
    serializer: Z,
    ttl: Option<Duration>,
    ttl_fn: Option<Arc<TtlFn<Z::Session>>>,
    /// The bound on one round trip (connection plus response timeout).
    deadline: Duration,
    cas: Script,
}

impl<Z: Serializer> Clone for RedisStore<Z> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<Z: Serializer> fmt::Debug for RedisStore<Z> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
            .field("ttl", &self.inner.ttl)
            .field("ttl_fn", &self.inner.ttl_fn.is_some())
            .field("deadline", &self.inner.deadline)
            .finish_non_exhaustive()
    }
}

impl RedisStore<JsonSerializer> {
    /// A builder for a store at `url` (`redis://host:port/db`) of express-session-shaped JSON
    /// [`Session`](crate::session::Session)s.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder<JsonSerializer> {
        RedisStoreBuilder::with(url.into(), JsonSerializer::new())
    }
}

impl<Z: Serializer> RedisStore<Z> {
    /// A builder for a store at `url` that keeps sessions through `serializer`.
    pub fn with_serializer(url: impl Into<String>, serializer: Z) -> RedisStoreBuilder<Z> {
        RedisStoreBuilder::with(url.into(), serializer)
    }

    /// The Redis URL, with its password masked ([`redact_url`]).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The session `id`, if Redis holds it. Not found is `Ok(None)`; bytes that do not decode
    /// are removed and reported once as [`Error::Decode`].
    pub async fn get(&self, id: &str) -> Result<Option<Z::Session>, Error> {
        let key = self.key(id);
        let mut failure = None;
        for _ in 0..CAS_ATTEMPTS {
            let Some(bytes) = self.query::<Option<Vec<u8>>>(&Cmd::get(&key)).await? else {
                return Ok(None);
            };
            match self.inner.serializer.decode(&bytes) {
                Ok(session) => return Ok(Some(session)),
                Err(source) => match self.cas(&key, &bytes, Duration::ZERO, None).await? {
                    Cas::Done => return Err(decode_error(id, source)),
                    // Removed by someone else, who reports it.
                    Cas::Missing => return Ok(None),
                    // Replaced meanwhile: read the new bytes.
                    Cas::Changed => failure = Some(source),
                },
            }
        }
        Err(decode_error(
            id,
            failure.unwrap_or_else(|| "the stored bytes did not decode".into()),
        ))
    }

    /// Stores `session` as `id` (`SET key bytes PX ttl`), replacing its previous session, with
    /// the lifetime the options give. A lifetime of zero deletes the key.
    pub async fn set(&self, id: &str, session: &Z::Session) -> Result<(), Error> {
        let (bytes, ttl) = self.prepare(id, session)?;
        let key = self.key(id);
        match ttl {
            None => self.query::<i64>(&Cmd::del(&key)).await.map(drop),
            Some(px) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(&key).arg(bytes).arg("PX").arg(px);
                self.query::<()>(&cmd).await
            }
        }
    }

    /// Stores `session` as `id` only if Redis has no session `id` (`SET ... NX`); returns
    /// whether it did. A lifetime of zero stores nothing and returns whether `id` was free.
    pub async fn set_if_absent(&self, id: &str, session: &Z::Session) -> Result<bool, Error> {
        self.set_conditionally(id, session, "NX").await
    }

    /// Stores `session` as `id` only if Redis has a session `id` (`SET ... XX`), which it
    /// replaces; returns whether it did. Never brings back a session that expired or was
    /// destroyed. A lifetime of zero deletes the key and returns whether it was there.
    pub async fn set_if_present(&self, id: &str, session: &Z::Session) -> Result<bool, Error> {
        self.set_conditionally(id, session, "XX").await
    }

    async fn set_conditionally(
        &self,
        id: &str,
        session: &Z::Session,
        condition: &str,
    ) -> Result<bool, Error> {
        let (bytes, ttl) = self.prepare(id, session)?;
        let key = self.key(id);
        let Some(px) = ttl else {
            return if condition == "NX" {
                Ok(!self.query::<bool>(&Cmd::exists(&key)).await?)
            } else {
                Ok(self.query::<i64>(&Cmd::del(&key)).await? > 0)
            };
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(bytes).arg("PX").arg(px).arg(condition);
        // `OK` when set, nil when the condition did not hold.
        Ok(self.query::<Option<String>>(&cmd).await?.is_some())
    }

    /// Removes one session or many (`"id"`, `["a", "b"]`, `&ids_vec`) in one `DEL`; returns
    /// how many Redis held.
    pub async fn destroy(&self, ids: impl Ids) -> Result<usize, Error> {
        let mut keys = Vec::new();
        ids.for_each_id(&mut |id| keys.push(self.key(id)));
        if keys.is_empty() {
            return Ok(0);
        }
        self.query::<usize>(redis::cmd("DEL").arg(&keys)).await
    }

    /// Restarts the lifetime of the session `id` (the lifetime the options give for
    /// `session`) and replaces its cookie with `session`'s, keeping the stored user data;
    /// returns false, and stores nothing, if Redis has no session `id`. See the
    /// [module documentation](self) for how it stays correct under concurrent writes.
    pub async fn touch(&self, id: &str, session: &Z::Session) -> Result<bool, Error> {
        let ttl = self.ttl_of(session, id);
        let key = self.key(id);
        for _ in 0..CAS_ATTEMPTS {
            let Some(current) = self.query::<Option<Vec<u8>>>(&Cmd::get(&key)).await? else {
                return Ok(false);
            };
            let mut stored = match self.inner.serializer.decode(&current) {
                Ok(stored) => stored,
                Err(source) => {
                    return match self.cas(&key, &current, Duration::ZERO, None).await? {
                        Cas::Done => Err(decode_error(id, source)),
                        Cas::Missing => Ok(false),
                        // Replaced meanwhile by a `set`, which restarted its lifetime.
                        Cas::Changed => Ok(true),
                    };
                }
            };
            stored.touch_from(session);
            let bytes = self
                .inner
                .serializer
                .encode(&stored)
                .map_err(Error::Encode)?;
            let new_bytes = (bytes != current).then_some(bytes.as_slice());
            match self.cas(&key, &current, ttl, new_bytes).await? {
                Cas::Done => return Ok(true),
                Cas::Missing => return Ok(false),
                Cas::Changed => continue,
            }
        }
        // The session was rewritten by concurrent `set`s every time we looked: it is live,
        // and each of those writes restarted its lifetime.
        Ok(true)
    }

    /// Every session under the prefix, by id (`SCAN` then `MGET`, batch by batch). Bytes
    /// that do not decode give one [`Error::Decode`] (that session is removed; the next call
    /// succeeds).
    pub async fn all(&self) -> Result<HashMap<String, Z::Session>, Error> {
        let mut sessions = HashMap::new();
        let mut cursor = 0u64;
        loop {
            let (next, keys) = self.scan(cursor).await?;
            if !keys.is_empty() {
                let values: Vec<Option<Vec<u8>>> =
                    self.query(redis::cmd("MGET").arg(&keys)).await?;
                for (key, value) in keys.iter().zip(values) {
                    // Expired or destroyed since the scan.
                    let Some(bytes) = value else { continue };
                    let Some(id) = self.id_of(key) else { continue };
                    match self.inner.serializer.decode(&bytes) {
                        Ok(session) => {
                            sessions.insert(id.to_string(), session);
                        }
                        Err(source) => {
                            let key = self.key(id);
                            if self.cas(&key, &bytes, Duration::ZERO, None).await? == Cas::Done {
                                return Err(decode_error(id, source));
                            }
                        }
                    }
                }
            }
            if next == 0 {
                return Ok(sessions);
            }
            cursor = next;
        }
    }

    /// The ids of the sessions under the prefix.
    pub async fn ids(&self) -> Result<Vec<String>, Error> {
        let mut ids = HashSet::new();
        let mut cursor = 0u64;
        loop {
            let (next, keys) = self.scan(cursor).await?;
            ids.extend(
                keys.iter()
                    .filter_map(|key| self.id_of(key))
                    .map(str::to_string),
            );
            if next == 0 {
                return Ok(ids.into_iter().collect());
            }
            cursor = next;
        }
    }

    /// The number of sessions under the prefix (exact when no write is in flight).
    pub async fn length(&self) -> Result<usize, Error> {
        Ok(self.ids().await?.len())
    }

    /// Removes every session under the prefix (and nothing else); returns how many Redis
    /// held.
    pub async fn clear(&self) -> Result<usize, Error> {
        let mut removed = 0;
        let mut cursor = 0u64;
        loop {
            let (next, keys) = self.scan(cursor).await?;
            if !keys.is_empty() {
                removed += self.query::<usize>(redis::cmd("UNLINK").arg(&keys)).await?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// The remaining lifetime of the session `id` (Redis's `PTTL`): `None` if Redis does not
    /// hold it, `Some(Duration::MAX)` if its key has no expiry.
    pub async fn expires_in(&self, id: &str) -> Result<Option<Duration>, Error> {
        let millis: i64 = self.query(redis::cmd("PTTL").arg(self.key(id))).await?;
        Ok(match millis {
            -1 => Some(Duration::MAX),
            ms if ms >= 0 => Some(Duration::from_millis(ms.unsigned_abs())),
            _ => None,
        })
    }

    fn key(&self, id: &str) -> String {
        let mut key = String::with_capacity(self.inner.prefix.len() + id.len());
        key.push_str(&self.inner.prefix);
        key.push_str(id);
        key
    }

    /// The session id of a key from `SCAN`, if it is one of ours (`SCAN MATCH` already
    /// filters; this also drops keys that are not UTF-8, which no `&str` id can make).
    fn id_of<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        let rest = key.strip_prefix(self.inner.prefix.as_bytes())?;
        std::str::from_utf8(rest).ok()
    }

    /// Encodes `session` and works out its `PX` in milliseconds (`None`: a zero lifetime).
    fn prepare(&self, id: &str, session: &Z::Session) -> Result<(Vec<u8>, Option<u64>), Error> {
        let bytes = self
            .inner
            .serializer
            .encode(session)
            .map_err(Error::Encode)?;
        Ok((bytes, px(self.ttl_of(session, id))))
    }

    /// The lifetime by memorystore's precedence: `ttl`, `ttl_fn`, the cookie, one day.
    fn ttl_of(&self, session: &Z::Session, id: &str) -> Duration {
        crate::session::lifetime(
            self.inner.ttl,
            self.inner.ttl_fn.as_deref(),
            session,
            id,
            std::time::SystemTime::now(),
        )
    }

    /// One `SCAN` step over the prefix: the next cursor and the keys of this store.
    async fn scan(&self, cursor: u64) -> Result<(u64, Vec<Vec<u8>>), Error> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(&self.inner.pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        let (next, keys): (u64, Vec<Vec<u8>>) = self.query(&cmd).await?;
        // MATCH is a glob: keep only the keys that really start with the literal prefix.
        let keys = keys
            .into_iter()
            .filter(|key| self.id_of(key).is_some())
            .collect();
        Ok((next, keys))
    }

    /// Runs the compare-and-set script on `key` (see [`CAS_SCRIPT`]).
    async fn cas(
        &self,
        key: &str,
        expected: &[u8],
        ttl: Duration,
        new: Option<&[u8]>,
    ) -> Result<Cas, Error> {
        let mut invocation = self.inner.cas.key(key);
        invocation.arg(expected).arg(px(ttl).unwrap_or(0));
        if let Some(new) = new {
            invocation.arg(new);
        }
        let mut conn = self.inner.conn.clone();
        let deadline = self.inner.deadline;
        let outcome: i64 =
            match tokio::time::timeout(deadline, invocation.invoke_async(&mut conn)).await {
                Ok(result) => result.map_err(|e| self.inner.secrets.backend(e))?,
                Err(_) => return Err(timed_out(deadline)),
            };
        Ok(match outcome {
            1 => Cas::Done,
            0 => Cas::Missing,
            _ => Cas::Changed,
        })
    }

    /// One command, bounded by the store's deadline.
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, Error> {
        let mut conn = self.inner.conn.clone();
        let deadline = self.inner.deadline;
        match tokio::time::timeout(deadline, cmd.query_async::<T>(&mut conn)).await {
            Ok(result) => result.map_err(|e| self.inner.secrets.backend(e)),
            Err(_) => Err(timed_out(deadline)),
        }
    }
}

/// A lifetime as Redis's `PX`: `None` for zero, at least 1 ms otherwise, clamped to
/// [`MAX_PX_MILLIS`].
fn px(ttl: Duration) -> Option<u64> {
    if ttl.is_zero() {
        return None;
    }
    let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    Some(millis.clamp(1, MAX_PX_MILLIS))
}

/// `s` with the glob characters of `SCAN MATCH` escaped.
fn escape_glob(s: &str) -> String {
    let mut escaped = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn backend(e: RedisError) -> Error {
    Error::Backend(Box::new(e))
}

/// `url` with its credentials masked, for display and logs: the password of
/// `scheme://user:password@host` becomes `***` (`scheme://user:***@host`), a user part
/// without a colon (which some clients read as a password) is masked whole
/// (`scheme://***@host`), and the values of `pass` and `password` query parameters (redis-rs's
/// `redis+unix:///path?pass=...`) too. The rest is kept, so the URL still says where it
/// points. Conservative on malformed input: everything between `://` and the last `@` is
/// masked, and a string that is not a URL at all is returned with nothing removed but such
/// parts.
///
/// ```
/// use evanesce::integrations::redis::redact_url;
///
/// assert_eq!(redact_url("redis://:hunter2@db:6379/0"), "redis://:***@db:6379/0");
/// assert_eq!(redact_url("rediss://app:hunter2@db/"), "rediss://app:***@db/");
/// assert_eq!(redact_url("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
/// assert_eq!(
///     redact_url("redis+unix:///run/redis.sock?db=1&pass=hunter2"),
///     "redis+unix:///run/redis.sock?db=1&pass=***"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => ("", url),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    // The user part ends at the last '@' (a password may hold an unescaped '@' or '/').
    let rest = match rest.rfind('@') {
        Some(at) => {
            let (userinfo, host) = rest.split_at(at);
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str("***"),
            }
            host
        }
        None => rest,
    };
    match rest.find('?') {
        Some(q) => {
            out.push_str(&rest[..=q]);
            let (query, fragment) = match rest[q + 1..].find('#') {
                Some(h) => rest[q + 1..].split_at(h),
                None => (&rest[q + 1..], ""),
            };
            for (i, pair) in query.split('&').enumerate() {
                if i > 0 {
                    out.push('&');
                }
                match pair.split_once('=') {
                    Some((name, _)) if is_secret_param(name) => {
                        out.push_str(name);
                        out.push_str("=***");
                    }
                    _ => out.push_str(pair),
                }
            }
            out.push_str(fragment);
        }
        None => out.push_str(rest),
    }
    out
}

fn is_secret_param(name: &str) -> bool {
    name.eq_ignore_ascii_case("pass") || name.eq_ignore_ascii_case("password")
}

/// The secret parts of a URL (the password, as written and percent-decoded, and secret query
/// values), to mask in text that might contain them.
#[derive(Clone, Default)]
struct Secrets(Vec<String>);

impl Secrets {
    fn of(url: &str) -> Self {
        let mut found = Vec::new();
        let rest = url.find("://").map_or(url, |at| &url[at + 3..]);
        if let Some(at) = rest.rfind('@') {
            let userinfo = &rest[..at];
            // The password, or the whole user part when it has no colon.
            let password = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
            found.push(password.to_string());
        }
        if let Some(q) = rest.find('?') {
            for pair in rest[q + 1..].split(['&', '#']) {
                if let Some((name, value)) = pair.split_once('=')
                    && is_secret_param(name)
                {
                    found.push(value.to_string());
                }
            }
        }
        let decoded: Vec<String> = found.iter().map(|s| percent_decode(s)).collect();
        found.extend(decoded);
        // Too short to mask without masking everything: a one-character password is not
        // worth hiding from an error message (and "*" would mangle it).
        found.retain(|s| s.len() >= 2);
        found.sort_by_key(|s| std::cmp::Reverse(s.len()));
        found.dedup();
        Self(found)
    }

    /// `text` with every secret replaced by `***`.
    fn mask(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in &self.0 {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "***");
            }
        }
        text
    }

    /// A backend error; if the `redis` crate's error would show a secret (in its `Display`
    /// or `Debug`), it is replaced by its masked text.
    fn backend(&self, e: RedisError) -> Error {
        let shows = |text: String| self.0.iter().any(|s| text.contains(s.as_str()));
        if shows(e.to_string()) || shows(format!("{e:?}")) {
            return Error::Backend(Box::new(Masked(self.mask(&e.to_string()))));
        }
        backend(e)
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} masked)", self.0.len())
    }
}

/// `%XX` escapes decoded (invalid ones kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (
                (bytes[i + 1] as char).to_digit(16),
                (bytes[i + 2] as char).to_digit(16),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A backend error whose text had to be masked (see [`redact_url`]).
#[derive(Debug)]
struct Masked(String);

impl fmt::Display for Masked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Masked {}

fn timed_out(deadline: Duration) -> Error {
    let io = std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("Redis did not answer within {deadline:?}"),
    );
    backend(RedisError::from(io))
}

fn decode_error(id: &str, source: crate::session::BoxError) -> Error {
    Error::Decode {
        id: id.to_string(),
        source,
    }
}

#[cfg(feature = "tower-sessions")]
mod tower;

#[cfg(feature = "tower-sessions")]
pub use tower::{RedisRecordStore, TieredStore, near_cache, redis_record_store};

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn px_rounds_up_and_clamps() {
        assert_eq!(px(Duration::ZERO), None);
        assert_eq!(px(Duration::from_micros(10)), Some(1));
        assert_eq!(px(Duration::from_millis(1500)), Some(1500));
        assert_eq!(px(Duration::MAX), Some(MAX_PX_MILLIS));
    }

    #[test]
    fn urls_are_redacted() {
        for (url, shown) in [
            ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
            ("redis://u:p%40ss@h/", "redis://u:***@h/"),
            ("redis://u:p@ss/w@h/1", "redis://u:***@h/1"),
            ("redis://secretonly@h", "redis://***@h"),
            ("redis://h:6379", "redis://h:6379"),
            (
                "unix:///s.sock?pass=pw&db=2",
                "unix:///s.sock?pass=***&db=2",
            ),
            (
                "redis://h/?PASSWORD=pw#frag",
                "redis://h/?PASSWORD=***#frag",
            ),
            ("not a url @ all", "***@ all"),
            ("", ""),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn secrets_are_masked_decoded_too() {
        let secrets = Secrets::of("redis://u:p%40ssword@h/?pass=other");
        let masked = secrets.mask("p%40ssword p@ssword other u h");
        assert_eq!(masked, "*** *** *** u h");
        assert!(!format!("{secrets:?}").contains("ssword"));
    }

    #[test]
    fn glob_characters_of_the_prefix_are_escaped() {
        assert_eq!(escape_glob("sess:"), "sess:");
        assert_eq!(escape_glob(r"a*b?[c]\d"), r"a\*b\?\[c\]\\d");
    }
}
