//! Sessions in Redis: [`RedisStore`], the session store's methods and semantics over one Redis
//! key per session, so that every server of an app sees the same sessions; one server,
//! Sentinel or Cluster, over TLS or not, with passwords and ACL users.
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
//!   the bytes changed meanwhile, `touch` reads again (a few times). [`renew`](RedisStore::renew)
//!   is the one-round-trip alternative (`PEXPIRE` only, the stored cookie left as it was).
//! - **Failures**: every operation is bounded by the connection timeout plus the response
//!   timeout (1 s each by default): against a dead or unreachable Redis an operation
//!   returns [`Error::Backend`] within that time, never hangs. The connection is made again
//!   by itself: once Redis is back, the same store works again.
//! - **Not found** is `Ok(None)`; stored bytes that do not decode give [`Error::Decode`] and
//!   are removed (only if they are still the key's value).
//!
//! The store needs a tokio runtime with its time driver on (as the `redis` crate does).
//!
//! # Where: one server, Sentinel, Cluster, or your own connection
//!
//! [`RedisStore::builder`] takes a URL or a [`Target`]:
//! - `RedisStore::builder("redis://host:6379/0")`: one server, through the `redis` crate's
//!   auto-reconnecting `ConnectionManager`.
//! - `RedisStore::builder(Target::sentinel(["redis://s1:26379", "redis://s2:26379"], "mymaster"))`:
//!   the master the Sentinels name. After a command fails in a way that says the master may
//!   have changed (a lost connection, a timeout, `READONLY`), the Sentinels are asked again,
//!   so the store follows a failover: commands during the switch fail promptly, the ones after
//!   it reach the new master.
//! - `RedisStore::builder(Target::cluster(["redis://n1:7000", "redis://n2:7000"]))`: a Redis
//!   Cluster. Every command of a session names its one key, so it stays on that key's slot
//!   (a prefix with a `{hash tag}` puts every session on one slot, which is allowed but
//!   defeats the sharding); the multi-key `DEL` of `destroy` and the `MGET` of `all` are split
//!   by slot; `ids`, `all`, `length` and `clear` `SCAN` every primary.
//! - `RedisStore::builder(connection_manager)` or `RedisStore::builder(cluster_connection)`:
//!   a connection you already have (configured as you like; the store's deadline still
//!   bounds every operation).
//!
//! # TLS and credentials
//!
//! `rediss://` URLs connect with TLS (feature `redis-tls`: rustls with the `ring` provider).
//! Certificates are verified (chain and host name) against the system's roots, or against
//! the CAs given with `tls_ca_pem`; a client certificate
//! is presented with `tls_client_cert_pem`. A
//! certificate that does not verify fails the handshake: [`Error::Backend`], promptly.
//! Turning verification off takes
//! `danger_accept_invalid_certs(true)`;
//! a URL's `#insecure` alone is refused.
//!
//! Passwords and ACL users come from the URL (`redis://user:password@host/`) or from the
//! builder ([`username`](RedisStoreBuilder::username),
//! [`password`](RedisStoreBuilder::password)), which wins. Wrong credentials are
//! [`Error::Backend`] (a `redis::RedisError` of kind `AuthenticationFailed`). An ACL user
//! needs the commands `GET SET DEL UNLINK EXISTS MGET PTTL PEXPIRE SCAN EVALSHA EVAL` (and
//! `SENTINEL`, `ROLE` for Sentinel, `CLUSTER` for Cluster) on the keys `prefix*`.
//!
//! **Credentials are never shown.** The URL's password (or the whole user part without a
//! colon, or a `pass` / `password` query parameter) and the builder's password never appear
//! in the store's or the builder's `Debug`, in [`RedisStore::url`], nor in an error the
//! store returns: URLs are shown through [`redact_url`], and an error of the `redis` crate
//! whose text would contain a password is replaced by its text with the password masked.
//! Use [`redact_url`] too wherever your own code shows the URL.
//!
//! # Fewer writes
//!
//! A session that is read but not changed still has its lifetime renewed on every request
//! (express-session's `touch`, actix-session's `update_ttl`, tower-sessions'
//! `with_always_save(true)` saves). Three options, as in connect-mongo and connect-redis,
//! spare those writes; each changes what "lifetime" means, as said:
//!
//! | option | what is skipped | the session's lifetime in Redis |
//! |---|---|---|
//! | [`touch_after(period)`](RedisStoreBuilder::touch_after) (connect-mongo's `touchAfter`) | a renewal of a session this store wrote or renewed less than `period` ago with the same data | may end up to `period` earlier than the cookie says (it runs from the last renewal sent) |
//! | [`disable_touch(true)`](RedisStoreBuilder::disable_touch) (connect-redis's `disableTouch`) | every renewal of unchanged data | runs from the last write only |
//! | [`disable_ttl(true)`](RedisStoreBuilder::disable_ttl) (connect-redis's `disableTTL`) | every renewal (there is no expiry) | none: keys stay until destroyed or evicted by Redis's `maxmemory` policy |
//!
//! What counts as a renewal: [`touch`](RedisStore::touch), [`renew`](RedisStore::renew),
//! actix-session's `update_ttl`, and tower-sessions' `save` of a record whose data (not its
//! expiry) is what this store last wrote for that id. Writes of changed data are never
//! skipped. The memory of recent writes is per store (per server): with `n` servers a
//! session is renewed at most `n` times per period, and a session this server has not
//! written (or no longer remembers: [`renewal_memory`](RedisStoreBuilder::renewal_memory))
//! is renewed as usual. A skipped renewal sends nothing and reports the session as present
//! (it was when this store last wrote it; another server may have destroyed it since). The
//! two-tier store honours the options the same way.
//!
//! With the `tower-sessions` feature, a store of tower-sessions records is a `SessionStore`
//! (`redis_record_store`), and `TieredStore` puts an in-memory near cache in front of it
//! (see [`Tiered`] for the staleness bound and the optional stale reads while Redis is
//! unreachable); with `actix-session`, `redis_state_store` and `TieredStateStore` are
//! actix-session stores.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisError, Script};

use crate::Cache;
use crate::session::{Error, Ids, JsonSerializer, Serializer, SessionData, TtlFn};

mod conn;
mod sentinel;

use conn::{Conn, Node, Settings};

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

/// The default bound on the renewals a store remembers for
/// [`touch_after`](RedisStoreBuilder::touch_after) (sessions renewed within one period).
pub const DEFAULT_RENEWAL_MEMORY: u64 = 100_000;

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

/// Where a [`RedisStore`] keeps its sessions: one server (a URL), the master of a Sentinel
/// service, a Redis Cluster, or a connection you already have.
///
/// A URL (`&str` or `String`) converts into a target, and so do the `redis` crate's
/// `ConnectionManager` and `cluster_async::ClusterConnection`, so that
/// `RedisStore::builder("redis://127.0.0.1/")` and `RedisStore::builder(manager)` both work.
///
/// | target | what the store talks to |
/// |---|---|
/// | [`Target::url`] (`redis://`, `rediss://`, `redis+unix://`) | one server, through an auto-reconnecting `ConnectionManager` |
/// | [`Target::sentinel`] | the master that the Sentinels name for a service; asked again after a failure, so a failover is followed |
/// | [`Target::cluster`] | a Redis Cluster (any of its nodes: the others are discovered); `ids`, `all`, `length` and `clear` scan every primary |
/// | `ConnectionManager`, `ClusterConnection` | your own connection (its settings are yours: the store's credentials, TLS and timeouts options do not apply, but every operation is still bounded by the store's connection plus response timeout) |
pub struct Target(Kind);

enum Kind {
    Url(String),
    Sentinel {
        sentinels: Vec<String>,
        service: String,
    },
    Cluster(Vec<String>),
    Manager(ConnectionManager),
    ClusterConnection(ClusterConnection),
}

impl Target {
    /// One server at `url`: `redis://[user:password@]host[:port][/db]`,
    /// `rediss://...` for TLS (feature `redis-tls`), or `redis+unix:///path?db=..&pass=..`.
    pub fn url(url: impl Into<String>) -> Self {
        Self(Kind::Url(url.into()))
    }

    /// The master that the Sentinels at `sentinels` (URLs such as `redis://host:26379`, with
    /// the Sentinels' own password if they have one, `rediss://` if they speak TLS) name for
    /// `service`. The master is reached with the builder's
    /// [`username`](RedisStoreBuilder::username), [`password`](RedisStoreBuilder::password)
    /// and [`database`](RedisStoreBuilder::database), with TLS if the Sentinel URLs are
    /// `rediss://` (and the same TLS options).
    pub fn sentinel<S: Into<String>>(
        sentinels: impl IntoIterator<Item = S>,
        service: impl Into<String>,
    ) -> Self {
        Self(Kind::Sentinel {
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            service: service.into(),
        })
    }

    /// The Redis Cluster that `nodes` (URLs such as `redis://[user:password@]host:7000`,
    /// `rediss://` for TLS) belong to; one reachable node is enough to discover the rest.
    pub fn cluster<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> Self {
        Self(Kind::Cluster(nodes.into_iter().map(Into::into).collect()))
    }

    /// What the target is, for display: URLs redacted ([`redact_url`]).
    fn shown(&self) -> String {
        let list = |urls: &[String]| {
            urls.iter()
                .map(|url| redact_url(url))
                .collect::<Vec<_>>()
                .join(",")
        };
        match &self.0 {
            Kind::Url(url) => redact_url(url),
            Kind::Sentinel { sentinels, service } => {
                format!("sentinel:{service}@{}", list(sentinels))
            }
            Kind::Cluster(nodes) => format!("cluster:{}", list(nodes)),
            Kind::Manager(_) => "(a ConnectionManager given to the builder)".to_string(),
            Kind::ClusterConnection(_) => "(a ClusterConnection given to the builder)".to_string(),
        }
    }

    /// The secrets of every URL.
    fn secrets(&self) -> Secrets {
        let mut secrets = Secrets::default();
        match &self.0 {
            Kind::Url(url) => secrets.extend(Secrets::of(url)),
            Kind::Sentinel {
                sentinels: urls, ..
            }
            | Kind::Cluster(urls) => {
                for url in urls {
                    secrets.extend(Secrets::of(url));
                }
            }
            Kind::Manager(_) | Kind::ClusterConnection(_) => {}
        }
        secrets
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Target").field(&self.shown()).finish()
    }
}

impl From<String> for Target {
    fn from(url: String) -> Self {
        Self::url(url)
    }
}

impl From<&str> for Target {
    fn from(url: &str) -> Self {
        Self::url(url)
    }
}

impl From<&String> for Target {
    fn from(url: &String) -> Self {
        Self::url(url.as_str())
    }
}

impl From<ConnectionManager> for Target {
    fn from(conn: ConnectionManager) -> Self {
        Self(Kind::Manager(conn))
    }
}

impl From<ClusterConnection> for Target {
    fn from(conn: ClusterConnection) -> Self {
        Self(Kind::ClusterConnection(conn))
    }
}

/// Builds a [`RedisStore`]; see [`RedisStore::builder`].
pub struct RedisStoreBuilder<Z: Serializer = JsonSerializer> {
    target: Target,
    prefix: String,
    serializer: Z,
    ttl: Option<Duration>,
    ttl_fn: Option<Arc<TtlFn<Z::Session>>>,
    settings: Settings,
    renewal: RenewalOptions,
    discarded_ttl_fn: bool,
}

/// The options that spare writes: `touch_after`, `disable_touch`, `disable_ttl`.
#[derive(Clone, Copy, Debug, Default)]
struct RenewalOptions {
    touch_after: Option<Duration>,
    disable_touch: bool,
    disable_ttl: bool,
    memory: Option<u64>,
}

impl<Z: Serializer> fmt::Debug for RedisStoreBuilder<Z> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("target", &self.target)
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("ttl_fn", &self.ttl_fn.is_some())
            .field("username", &self.settings.username)
            .field("password", &self.settings.password.as_ref().map(|_| "***"))
            .field("database", &self.settings.db)
            .field("connection_timeout", &self.settings.connection_timeout)
            .field("response_timeout", &self.settings.response_timeout)
            .field("touch_after", &self.renewal.touch_after)
            .field("disable_touch", &self.renewal.disable_touch)
            .field("disable_ttl", &self.renewal.disable_ttl)
            .finish_non_exhaustive()
    }
}

impl<Z: Serializer> RedisStoreBuilder<Z> {
    fn with(target: Target, serializer: Z) -> Self {
        Self {
            target,
            prefix: DEFAULT_PREFIX.to_string(),
            serializer,
            ttl: None,
            ttl_fn: None,
            settings: Settings {
                username: None,
                password: None,
                db: None,
                connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
                response_timeout: DEFAULT_RESPONSE_TIMEOUT,
                #[cfg(feature = "redis-tls")]
                tls: conn::Tls::default(),
            },
            renewal: RenewalOptions::default(),
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
            target: self.target,
            prefix: self.prefix,
            serializer,
            ttl: self.ttl,
            ttl_fn: None,
            settings: self.settings,
            renewal: self.renewal,
            discarded_ttl_fn: self.discarded_ttl_fn || self.ttl_fn.is_some(),
        }
    }

    /// How long one attempt to connect to Redis may take (default 1 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connection_timeout = timeout;
        self
    }

    /// How long Redis may take to answer one command (default 1 s).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.settings.response_timeout = timeout;
        self
    }

    /// The ACL user to authenticate as (`AUTH username password`, Redis 6 and later), instead
    /// of the URL's. Used only with a password (from the URL or
    /// [`password`](Self::password)). For Sentinel, this is the master's user; the Sentinels
    /// use what their URLs say.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.settings.username = Some(username.into());
        self
    }

    /// The password to authenticate with, instead of the URL's (so that it can come from a
    /// secret store rather than sit in a URL). It never appears in `Debug` output or errors.
    /// For Sentinel, this is the master's password; the Sentinels use what their URLs say.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.settings.password = Some(password.into());
        self
    }

    /// The database number, instead of the URL's (one server, or Sentinel's master; a
    /// cluster has only database 0).
    pub fn database(mut self, db: i64) -> Self {
        self.settings.db = Some(db);
        self
    }

    /// Trusts the CA certificates in `pem` (one or more PEM `CERTIFICATE` blocks) instead of
    /// the system's, for `rediss://` targets (feature `redis-tls`). Server certificates are
    /// always verified (name and chain) unless
    /// [`danger_accept_invalid_certs`](Self::danger_accept_invalid_certs) says otherwise.
    #[cfg(feature = "redis-tls")]
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.settings.tls.ca = Some(pem.into());
        self
    }

    /// Presents the client certificate chain `cert_pem` with its private key `key_pem` (PEM)
    /// to servers that require one (`tls-auth-clients yes`; feature `redis-tls`).
    #[cfg(feature = "redis-tls")]
    pub fn tls_client_cert_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.settings.tls.client = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// **Turns off TLS certificate verification**: any certificate, from anyone, is accepted,
    /// so anyone on the network path can read and change every session. For a test server
    /// with a self-signed certificate only; give the server's CA with
    /// [`tls_ca_pem`](Self::tls_ca_pem) instead. A URL ending in `#insecure` (which the
    /// `redis` crate reads the same way) is refused unless this is set.
    #[cfg(feature = "redis-tls")]
    pub fn danger_accept_invalid_certs(mut self, accept: bool) -> Self {
        self.settings.tls.danger_accept_invalid_certs = accept;
        self
    }

    /// connect-mongo's `touchAfter`: renews an unchanged session's lifetime in Redis at most
    /// once per `period` (see the [module documentation](self#fewer-writes) for what is
    /// skipped and what that means for lifetimes). `Duration::ZERO` renews every time (the
    /// default).
    pub fn touch_after(mut self, period: Duration) -> Self {
        self.renewal.touch_after = (!period.is_zero()).then_some(period);
        self
    }

    /// connect-redis's `disableTouch`: never renews an unchanged session's lifetime; a session
    /// lives its lifetime from its last write ([`set`](RedisStore::set) and the like).
    pub fn disable_touch(mut self, disable: bool) -> Self {
        self.renewal.disable_touch = disable;
        self
    }

    /// connect-redis's `disableTTL`: writes sessions without an expiry (`SET` without `PX`),
    /// so they stay in Redis until destroyed or evicted by Redis's own `maxmemory` policy;
    /// renewals have nothing to do. A lifetime of zero still deletes. Use it only with a
    /// `maxmemory-policy` that evicts (such as `allkeys-lru`), or sessions pile up.
    pub fn disable_ttl(mut self, disable: bool) -> Self {
        self.renewal.disable_ttl = disable;
        self
    }

    /// How many recent renewals the store remembers for
    /// [`touch_after`](Self::touch_after), [`disable_touch`](Self::disable_touch) and
    /// [`disable_ttl`](Self::disable_ttl) (default [`DEFAULT_RENEWAL_MEMORY`]; each is the id
    /// and 32 bytes). A session the store no longer remembers is simply renewed again.
    pub fn renewal_memory(mut self, sessions: u64) -> Self {
        self.renewal.memory = Some(sessions);
        self
    }

    /// Connects to Redis (within the connection plus response timeouts) and makes the
    /// store. An invalid URL, a zero timeout or inconsistent options are [`Error::Config`]; a
    /// Redis that cannot be reached, refuses the credentials or fails the TLS handshake (a
    /// certificate that does not verify) is [`Error::Backend`].
    pub async fn build(self) -> Result<RedisStore<Z>, Error> {
        if self.discarded_ttl_fn {
            return Err(Error::Config(
                "ttl_fn was set before serializer, which discards it: call serializer first".into(),
            ));
        }
        let settings = self.settings;
        if settings.connection_timeout.is_zero() || settings.response_timeout.is_zero() {
            return Err(Error::Config("the Redis timeouts must not be zero".into()));
        }
        if self.renewal.memory == Some(0) {
            return Err(Error::Config("renewal_memory must not be zero".into()));
        }
        let mut secrets = self.target.secrets();
        if let Some(password) = &settings.password {
            secrets.add(password);
        }
        let shown = self.target.shown();
        let deadline = settings.deadline();
        let conn = match self.target.0 {
            Kind::Url(url) => {
                let info = settings.node_info(&url, &secrets)?;
                let client = settings.client(info).map_err(|e| secrets.config(e))?;
                Conn::single(client, &settings, &secrets).await?
            }
            Kind::Sentinel { sentinels, service } => {
                if sentinels.is_empty() {
                    return Err(Error::Config(
                        "Sentinel needs at least one Sentinel URL".into(),
                    ));
                }
                let infos = sentinels
                    .iter()
                    .map(|url| {
                        use redis::IntoConnectionInfo;
                        url.as_str()
                            .into_connection_info()
                            .map_err(|e| conn::invalid_url(url, e, &secrets))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                // The TLS options are checked now (a TLS option for redis:// Sentinels, or
                // `#insecure` without the builder's consent, is a configuration error).
                for info in &infos {
                    settings
                        .client(info.clone())
                        .map_err(|e| secrets.config(e))?;
                }
                let connecting = sentinel::SentinelConn::connect(infos, service, settings.clone());
                match tokio::time::timeout(deadline, connecting).await {
                    Ok(conn) => Conn::Sentinel(conn.map_err(|e| secrets.backend(e))?),
                    Err(_) => return Err(timed_out(deadline)),
                }
            }
            Kind::Cluster(nodes) => Conn::cluster(&nodes, &settings, &secrets).await?,
            Kind::Manager(manager) => Conn::Single(manager),
            Kind::ClusterConnection(cluster) => Conn::Cluster(cluster),
        };
        let renewals = Renewals::new(self.renewal)?;
        let pattern = format!("{}*", escape_glob(&self.prefix));
        let store = RedisStore {
            inner: Arc::new(Inner {
                conn,
                shown,
                secrets,
                prefix: self.prefix,
                pattern,
                serializer: self.serializer,
                ttl: self.ttl,
                ttl_fn: self.ttl_fn,
                deadline,
                cas: Script::new(CAS_SCRIPT),
                renewal: self.renewal,
                renewals,
            }),
        };
        // One round trip now, so that refused credentials (which a connection does not
        // always show until its first command) or an unusable connection of your own fail
        // the build rather than the first request.
        store.query::<()>(&redis::cmd("PING")).await?;
        Ok(store)
    }
}

/// What the store remembers of its recent writes and renewals, for `touch_after` and the
/// like: the id, and a digest of the session's data when an integration gave one.
struct Renewals {
    cache: Cache<String, Renewal>,
    /// Keys for the digests (random per store: a digest cannot be steered to collide).
    #[cfg(feature = "tower-sessions")]
    keys: [std::collections::hash_map::RandomState; 2],
}

#[derive(Clone, Copy)]
struct Renewal {
    digest: Option<u128>,
}

impl Renewals {
    fn new(options: RenewalOptions) -> Result<Option<Self>, Error> {
        if options.touch_after.is_none() && !options.disable_touch && !options.disable_ttl {
            return Ok(None);
        }
        // The precise clock: a memory read while the coarse time lags (its ticker thread
        // starved on a loaded machine, and no write to catch it up) would outlive its period,
        // and the store would skip renewals Redis needs; a reading is nothing beside a round
        // trip to Redis.
        let cache = Cache::builder()
            .max_capacity(options.memory.unwrap_or(DEFAULT_RENEWAL_MEMORY))
            .coarse_clock(false)
            .build()
            .map_err(|e| Error::Config(format!("renewal memory: {e}")))?;
        Ok(Some(Self {
            cache,
            #[cfg(feature = "tower-sessions")]
            keys: Default::default(),
        }))
    }

    #[cfg(feature = "tower-sessions")]
    fn digest(&self, bytes: &[u8]) -> u128 {
        use std::hash::{BuildHasher, Hasher};
        let half = |key: &std::collections::hash_map::RandomState| {
            let mut hasher = key.build_hasher();
            hasher.write(bytes);
            hasher.finish()
        };
        (u128::from(half(&self.keys[0])) << 64) | u128::from(half(&self.keys[1]))
    }
}

/// Sessions in Redis, one key per session; see the [module documentation](self). Clones share
/// one connection (multiplexed: concurrent operations are pipelined on it).
pub struct RedisStore<Z: Serializer = JsonSerializer> {
    inner: Arc<Inner<Z>>,
}

struct Inner<Z: Serializer> {
    conn: Conn,
    /// The target as shown: URLs [`redact_url`]ed.
    shown: String,
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
    renewal: RenewalOptions,
    renewals: Option<Renewals>,
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
            .field("target", &self.inner.shown)
            .field("prefix", &self.inner.prefix)
            .field("ttl", &self.inner.ttl)
            .field("ttl_fn", &self.inner.ttl_fn.is_some())
            .field("deadline", &self.inner.deadline)
            .field("touch_after", &self.inner.renewal.touch_after)
            .field("disable_touch", &self.inner.renewal.disable_touch)
            .field("disable_ttl", &self.inner.renewal.disable_ttl)
            .finish_non_exhaustive()
    }
}

impl RedisStore<JsonSerializer> {
    /// A builder for a store at `target` (a URL such as `redis://host:port/db`, a
    /// [`Target`], or a connection of your own) of express-session-shaped JSON
    /// [`Session`](crate::session::Session)s.
    pub fn builder(target: impl Into<Target>) -> RedisStoreBuilder<JsonSerializer> {
        RedisStoreBuilder::with(target.into(), JsonSerializer::new())
    }
}

impl<Z: Serializer> RedisStore<Z> {
    /// A builder for a store at `target` that keeps sessions through `serializer`.
    pub fn with_serializer(target: impl Into<Target>, serializer: Z) -> RedisStoreBuilder<Z> {
        RedisStoreBuilder::with(target.into(), serializer)
    }

    /// Where the store is, for display: the URL (or the Sentinel or Cluster URLs) with
    /// passwords masked ([`redact_url`]).
    pub fn url(&self) -> &str {
        &self.inner.shown
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The serializer.
    pub fn serializer(&self) -> &Z {
        &self.inner.serializer
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
                    Cas::Done => {
                        self.forget(id);
                        return Err(decode_error(id, source));
                    }
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
        self.write(id, session, Condition::Always, None)
            .await
            .map(drop)
    }

    /// Stores `session` as `id` only if Redis has no session `id` (`SET ... NX`); returns
    /// whether it did. A lifetime of zero stores nothing and returns whether `id` was free.
    pub async fn set_if_absent(&self, id: &str, session: &Z::Session) -> Result<bool, Error> {
        self.write(id, session, Condition::Absent, None).await
    }

    /// Stores `session` as `id` only if Redis has a session `id` (`SET ... XX`), which it
    /// replaces; returns whether it did. Never brings back a session that expired or was
    /// destroyed. A lifetime of zero deletes the key and returns whether it was there.
    pub async fn set_if_present(&self, id: &str, session: &Z::Session) -> Result<bool, Error> {
        self.write(id, session, Condition::Present, None).await
    }

    /// `SET` under `condition`; with a `digest` of the session's data (from an integration),
    /// remembered for [`unchanged_recently`](Self::unchanged_recently).
    pub(crate) async fn write(
        &self,
        id: &str,
        session: &Z::Session,
        condition: Condition,
        digest: Option<u128>,
    ) -> Result<bool, Error> {
        let (bytes, lifetime) = self.prepare(id, session)?;
        let key = self.key(id);
        let Some(px) = px(lifetime) else {
            self.forget(id);
            return match condition {
                Condition::Absent => Ok(!self.query::<bool>(&Cmd::exists(&key)).await?),
                Condition::Always | Condition::Present => {
                    Ok(self.query::<i64>(&Cmd::del(&key)).await? > 0)
                }
            };
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(bytes);
        if !self.inner.renewal.disable_ttl {
            cmd.arg("PX").arg(px);
        }
        match condition {
            Condition::Always => {}
            Condition::Absent => {
                cmd.arg("NX");
            }
            Condition::Present => {
                cmd.arg("XX");
            }
        }
        // `OK` when set, nil when the condition did not hold.
        let written = match self.query::<Option<String>>(&cmd).await {
            Ok(reply) => reply.is_some(),
            Err(e) => {
                self.forget(id);
                return Err(e);
            }
        };
        if written {
            self.remember(id, digest, lifetime);
        } else if condition == Condition::Present {
            self.forget(id);
        }
        Ok(written)
    }

    /// Removes one session or many (`"id"`, `["a", "b"]`, `&ids_vec`) in one `DEL` (split
    /// by slot on a cluster); returns how many Redis held.
    pub async fn destroy(&self, ids: impl Ids) -> Result<usize, Error> {
        let mut keys = Vec::new();
        ids.for_each_id(&mut |id| {
            self.forget(id);
            keys.push(self.key(id));
        });
        if keys.is_empty() {
            return Ok(0);
        }
        self.query::<usize>(redis::cmd("DEL").arg(&keys)).await
    }

    /// Restarts the lifetime of the session `id` (the lifetime the options give for
    /// `session`) and replaces its cookie with `session`'s, keeping the stored user data;
    /// returns false, and stores nothing, if Redis has no session `id`. See the
    /// [module documentation](self) for how it stays correct under concurrent writes.
    ///
    /// With [`touch_after`](RedisStoreBuilder::touch_after), a session this store wrote or
    /// renewed less than that period ago is not touched; with
    /// [`disable_touch`](RedisStoreBuilder::disable_touch) or
    /// [`disable_ttl`](RedisStoreBuilder::disable_ttl), no session is. Such a skipped touch
    /// sends nothing and returns true.
    pub async fn touch(&self, id: &str, session: &Z::Session) -> Result<bool, Error> {
        if self.skips_renewal(id) {
            return Ok(true);
        }
        let ttl = self.ttl_of(session, id);
        let key = self.key(id);
        for _ in 0..CAS_ATTEMPTS {
            let Some(current) = self.query::<Option<Vec<u8>>>(&Cmd::get(&key)).await? else {
                self.forget(id);
                return Ok(false);
            };
            let mut stored = match self.inner.serializer.decode(&current) {
                Ok(stored) => stored,
                Err(source) => {
                    self.forget(id);
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
                Cas::Done => {
                    self.renewed(id, ttl);
                    return Ok(true);
                }
                Cas::Missing => {
                    self.forget(id);
                    return Ok(false);
                }
                Cas::Changed => continue,
            }
        }
        // The session was rewritten by concurrent `set`s every time we looked: it is live,
        // and each of those writes restarted its lifetime.
        Ok(true)
    }

    /// Restarts the lifetime of the session `id` (the lifetime the options give for
    /// `session`) with one `PEXPIRE`, without reading it or changing what is stored (so the
    /// stored cookie keeps its old expiry: use [`touch`](Self::touch) for express-session
    /// semantics). Returns false if Redis has no session `id` (nothing is brought back). A
    /// lifetime of zero ends the session. Skipped like `touch` under
    /// [`touch_after`](RedisStoreBuilder::touch_after),
    /// [`disable_touch`](RedisStoreBuilder::disable_touch) and
    /// [`disable_ttl`](RedisStoreBuilder::disable_ttl).
    pub async fn renew(&self, id: &str, session: &Z::Session) -> Result<bool, Error> {
        if self.skips_renewal(id) {
            return Ok(true);
        }
        let ttl = self.ttl_of(session, id);
        let key = self.key(id);
        let Some(millis) = px(ttl) else {
            self.forget(id);
            return Ok(self.query::<i64>(&Cmd::del(&key)).await? > 0);
        };
        let renewed = self
            .query::<i64>(redis::cmd("PEXPIRE").arg(&key).arg(millis))
            .await?
            == 1;
        if renewed {
            self.renewed(id, ttl);
        } else {
            self.forget(id);
        }
        Ok(renewed)
    }

    /// Every session under the prefix, by id (`SCAN` then `MGET`, batch by batch; on a
    /// cluster, every primary). Bytes that do not decode give one [`Error::Decode`] (that
    /// session is removed; the next call succeeds).
    pub async fn all(&self) -> Result<HashMap<String, Z::Session>, Error> {
        let mut sessions = HashMap::new();
        let mut scan = Scan::new(self);
        while let Some(keys) = scan.next().await? {
            if keys.is_empty() {
                continue;
            }
            let values: Vec<Option<Vec<u8>>> = self.query(redis::cmd("MGET").arg(&keys)).await?;
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
                            self.forget(id);
                            return Err(decode_error(id, source));
                        }
                    }
                }
            }
        }
        Ok(sessions)
    }

    /// The ids of the sessions under the prefix (on a cluster, of every primary).
    pub async fn ids(&self) -> Result<Vec<String>, Error> {
        let mut ids = HashSet::new();
        let mut scan = Scan::new(self);
        while let Some(keys) = scan.next().await? {
            ids.extend(
                keys.iter()
                    .filter_map(|key| self.id_of(key))
                    .map(str::to_string),
            );
        }
        Ok(ids.into_iter().collect())
    }

    /// The number of sessions under the prefix (exact when no write is in flight).
    pub async fn length(&self) -> Result<usize, Error> {
        Ok(self.ids().await?.len())
    }

    /// Removes every session under the prefix (and nothing else; on a cluster, from every
    /// primary); returns how many Redis held.
    pub async fn clear(&self) -> Result<usize, Error> {
        let mut removed = 0;
        let mut scan = Scan::new(self);
        while let Some(keys) = scan.next().await? {
            if !keys.is_empty() {
                removed += self.query::<usize>(redis::cmd("UNLINK").arg(&keys)).await?;
            }
        }
        if let Some(renewals) = &self.inner.renewals {
            renewals.cache.clear();
        }
        Ok(removed)
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

    /// Encodes `session` and works out its lifetime.
    fn prepare(&self, id: &str, session: &Z::Session) -> Result<(Vec<u8>, Duration), Error> {
        let bytes = self
            .inner
            .serializer
            .encode(session)
            .map_err(Error::Encode)?;
        Ok((bytes, self.ttl_of(session, id)))
    }

    /// The lifetime by memorystore's precedence: `ttl`, `ttl_fn`, the cookie, one day.
    pub(crate) fn ttl_of(&self, session: &Z::Session, id: &str) -> Duration {
        crate::session::lifetime(
            self.inner.ttl,
            self.inner.ttl_fn.as_deref(),
            session,
            id,
            std::time::SystemTime::now(),
        )
    }

    // ---- fewer writes ----

    /// Whether a renewal (`touch`, `renew`) of `id` is skipped.
    pub(crate) fn skips_renewal(&self, id: &str) -> bool {
        let options = self.inner.renewal;
        if options.disable_touch || options.disable_ttl {
            return true;
        }
        self.inner
            .renewals
            .as_ref()
            .is_some_and(|renewals| renewals.cache.contains_key(id))
    }

    /// A digest of `bytes` (a session's data, encoded by an integration), if the store
    /// remembers renewals.
    #[cfg(feature = "tower-sessions")]
    pub(crate) fn digest(&self, bytes: &[u8]) -> Option<u128> {
        self.inner
            .renewals
            .as_ref()
            .map(|renewals| renewals.digest(bytes))
    }

    /// Whether this store wrote `id` with data of `digest` recently enough that writing the
    /// same data again only to renew its lifetime can be skipped.
    #[cfg(feature = "tower-sessions")]
    pub(crate) fn unchanged_recently(&self, id: &str, digest: Option<u128>) -> bool {
        let Some(digest) = digest else { return false };
        self.inner.renewals.as_ref().is_some_and(|renewals| {
            renewals
                .cache
                .get(id)
                .is_some_and(|renewal| renewal.digest == Some(digest))
        })
    }

    /// Remembers a write of `id` (with its data's `digest`, if known) for a `lifetime`.
    fn remember(&self, id: &str, digest: Option<u128>, lifetime: Duration) {
        if let Some(renewals) = &self.inner.renewals {
            let ttl = self.memory_ttl(lifetime);
            if ttl.is_zero() {
                renewals.cache.remove(id);
            } else {
                renewals
                    .cache
                    .insert_with_ttl(id.to_string(), Renewal { digest }, ttl);
            }
        }
    }

    /// Remembers a renewal of `id` (keeping the digest of its data, if known).
    fn renewed(&self, id: &str, lifetime: Duration) {
        if let Some(renewals) = &self.inner.renewals {
            let digest = renewals.cache.get(id).and_then(|renewal| renewal.digest);
            self.remember(id, digest, lifetime);
        }
    }

    fn forget(&self, id: &str) {
        if let Some(renewals) = &self.inner.renewals {
            renewals.cache.remove(id);
        }
    }

    /// How long a write or renewal is remembered: `touch_after` (at most the session's
    /// lifetime), or the session's lifetime when renewals are off altogether.
    fn memory_ttl(&self, lifetime: Duration) -> Duration {
        let options = self.inner.renewal;
        match options.touch_after {
            Some(period) if !options.disable_touch && !options.disable_ttl => period.min(lifetime),
            _ => lifetime,
        }
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

    /// The `SCAN` command at `cursor`.
    fn scan_cmd(&self, cursor: u64) -> Cmd {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(&self.inner.pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        cmd
    }

    /// `op`, bounded by the store's deadline, with its error masked.
    async fn bounded<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, Error> {
        let deadline = self.inner.deadline;
        match tokio::time::timeout(deadline, op).await {
            Ok(result) => result.map_err(|e| self.inner.secrets.backend(e)),
            Err(_) => Err(timed_out(deadline)),
        }
    }
}

/// When a write applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Condition {
    Always,
    /// `NX`
    Absent,
    /// `XX`
    Present,
}

/// A `SCAN` over every node that holds keys (one server, or each cluster primary), batch by
/// batch, keeping only the keys of the store's prefix.
struct Scan<'s, Z: Serializer> {
    store: &'s RedisStore<Z>,
    started: bool,
    /// The nodes not done yet, with their cursors.
    pending: Vec<(Node, u64)>,
}

impl<'s, Z: Serializer> Scan<'s, Z> {
    fn new(store: &'s RedisStore<Z>) -> Self {
        Self {
            store,
            started: false,
            pending: Vec::new(),
        }
    }

    /// The next batch of keys, or `None` when every node is done.
    async fn next(&mut self) -> Result<Option<Vec<Vec<u8>>>, Error> {
        let store = self.store;
        let keys = if self.started {
            let Some((node, cursor)) = self.pending.pop() else {
                return Ok(None);
            };
            let cmd = store.scan_cmd(cursor);
            let (next, keys) = store.bounded(store.inner.conn.scan_on(&node, &cmd)).await?;
            if next != 0 {
                self.pending.push((node, next));
            }
            keys
        } else {
            self.started = true;
            let cmd = store.scan_cmd(0);
            let mut all = Vec::new();
            for (node, next, keys) in store.bounded(store.inner.conn.scan_start(&cmd)).await? {
                if next != 0 {
                    self.pending.push((node, next));
                }
                all.extend(keys);
            }
            all
        };
        // MATCH is a glob: keep only the keys that really start with the literal prefix.
        Ok(Some(
            keys.into_iter()
                .filter(|key| store.id_of(key).is_some())
                .collect(),
        ))
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

/// Whether a query parameter carries a secret. The name is compared percent-decoded, as URL
/// parsers read it (`?pa%73s=` is `pass`).
fn is_secret_param(name: &str) -> bool {
    let name = percent_decode(name);
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
        let mut secrets = Self(found);
        secrets.tidy();
        secrets
    }

    /// Adds the secrets of `other`.
    fn extend(&mut self, other: Secrets) {
        self.0.extend(other.0);
        self.tidy();
    }

    /// Adds one secret (a password given to the builder).
    fn add(&mut self, secret: &str) {
        self.0.push(secret.to_string());
        self.tidy();
    }

    /// Longest first (so that a secret containing another is masked whole), no duplicates.
    fn tidy(&mut self) {
        // Too short to mask without masking everything: a one-character password is not
        // worth hiding from an error message (and "*" would mangle it).
        self.0.retain(|s| s.len() >= 2);
        self.0.sort_by_key(|s| std::cmp::Reverse(s.len()));
        self.0.dedup();
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

    /// A configuration error with its text masked.
    fn config(&self, e: Error) -> Error {
        match e {
            Error::Config(text) => Error::Config(self.mask(&text)),
            other => other,
        }
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

mod tiered;

pub use tiered::{DEFAULT_BOUND, Tiered, TieredBuilder};

#[cfg(feature = "tower-sessions")]
mod tower;

#[cfg(feature = "tower-sessions")]
pub use tower::{RedisRecordStore, TieredStore, near_cache, redis_record_store};

#[cfg(feature = "actix-session")]
mod actix;

#[cfg(feature = "actix-session")]
pub use actix::{RedisStateStore, TieredStateStore, redis_state_store};

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
            (
                "unix:///s.sock?pa%73s=pw&%70assword=pw2",
                "unix:///s.sock?pa%73s=***&%70assword=***",
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
        let encoded = Secrets::of("unix:///s.sock?pa%73s=hunter2");
        assert_eq!(encoded.mask("auth hunter2 failed"), "auth *** failed");
    }

    #[test]
    fn the_renewal_memory_forgets_at_its_deadline_in_real_time() {
        let options = RenewalOptions {
            touch_after: Some(Duration::from_millis(5)),
            ..RenewalOptions::default()
        };
        let renewals = Renewals::new(options).unwrap().unwrap();
        for round in 0..10u32 {
            let id = round.to_string();
            let ttl = Duration::from_millis(5);
            let before = std::time::Instant::now();
            renewals
                .cache
                .insert_with_ttl(id.clone(), Renewal { digest: None }, ttl);
            let after = std::time::Instant::now();
            loop {
                let past = after.elapsed() >= ttl;
                let held = renewals.cache.contains_key(&id);
                if !held {
                    assert!(before.elapsed() >= ttl, "forgotten before its deadline");
                }
                if past {
                    assert!(!held, "remembered after its {ttl:?} deadline");
                    break;
                }
            }
        }
    }

    #[test]
    fn glob_characters_of_the_prefix_are_escaped() {
        assert_eq!(escape_glob("sess:"), "sess:");
        assert_eq!(escape_glob(r"a*b?[c]\d"), r"a\*b\?\[c\]\\d");
    }
}
