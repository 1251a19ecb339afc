//! The main job: express-session's quickstart made real, with an axum app whose sessions live
//! in evanesce (through tower-sessions) and leave on their own when they expire, served the
//! way a deployed server should be (people copy examples).
//!
//! ```sh
//! cargo run --release --example server        # http://127.0.0.1:3000 (PORT overrides)
//! ```
//!
//! - `GET /` counts your views in your session and shows the count (never the session id:
//!   it is a login, and a page can end up in a cache, a screenshot or a log);
//! - `GET /logout` destroys your session;
//! - `GET /stats` shows the live sessions, the store's hit and miss counters, and the
//!   process's resident memory (JSON; with Redis, the count of its sessions is at most 5 s
//!   old: counting scans the whole prefix).
//!
//! Settings from the environment (each one is checked: a bad value stops the server with a
//! message that names the variable and what it accepts, exit status 2):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `HOST` | `127.0.0.1` | the address to listen on (`0.0.0.0` in a container) |
//! | `PORT` | `3000` | the port, 0 to 65535 (0: any free port, printed at start) |
//! | `SESSION_IDLE_SECS` | `1800` | a session ends after this long without a visit (1 to 34560000, 400 days: browsers cap a cookie's lifetime there) |
//! | `SESSION_MAX_SECS` | `86400` | and this long after it began, however active (1 to 34560000) |
//! | `MAX_SESSIONS` | `1000000` | the store's bound (1 to 1000000000) |
//! | `COOKIE_SECURE` | on, unless `HOST` is a loopback address | `true`/`false`: the cookie's `Secure` attribute (and then its name is `__Host-id`); see below |
//! | `SESSIONS_FILE` | unset | sessions survive a restart: loaded at start, saved every `SESSIONS_SAVE_SECS` and at shutdown (a file in a directory of the server's user only) |
//! | `SESSIONS_SAVE_SECS` | `10` | how often `SESSIONS_FILE` is saved while the server runs (1 to 86400); a failed save is logged |
//! | `SESSIONS_KEY` | unset | 64 hex digits: seals `SESSIONS_FILE` (XChaCha20-Poly1305); make one with `openssl rand -hex 32` |
//! | `HEADER_TIMEOUT_SECS` | `10` | a connection that has not sent a request's headers within this long (a new one, or an idle kept-alive one) is closed (1 to 3600) |
//! | `WRITE_TIMEOUT_SECS` | `10` | a connection whose response makes no progress for this long (a client that does not read) is closed (1 to 3600) |
//! | `CONNECTION_MAX_SECS` | `600` | a connection is closed this long after it was accepted, whatever it does (1 to 86400) |
//! | `MAX_CONNECTIONS` | `10000` | connections served at once (1 to 1000000); beyond it, new ones wait in the listen queue |
//! | `SHUTDOWN_DRAIN_SECS` | `10` | at SIGINT or SIGTERM, open connections get this long to finish, then are cut (0 to 3600); a second signal cuts them at once |
//!
//! **Cookies and TLS.** Run it behind a proxy that terminates TLS. The session cookie is then
//! `Secure` (browsers send it back over HTTPS only, so it cannot be read on the wire) and
//! named `__Host-id` (browsers accept such a cookie only if it is `Secure`, for `/`, without a
//! `Domain`: a sibling subdomain or a plain-HTTP page cannot plant or overwrite it). The
//! default follows `HOST`: on for any address but loopback. **Behind a TLS-terminating proxy
//! on the same host, the server listens on loopback: set `COOKIE_SECURE=true`**, or the
//! cookie goes out without `Secure`. Off is for development over plain HTTP on
//! `http://127.0.0.1` only.
//!
//! With Redis, sessions live in Redis and are shared by every server pointed at it: the server
//! uses the two-tier store (evanesce's in-memory near cache, bounded by `MAX_SESSIONS`, in
//! front of Redis). Set one of:
//!
//! | variable | meaning |
//! |---|---|
//! | `REDIS_URL` | one server: `redis://[user:password@]host:port/db`, or `rediss://...` for TLS |
//! | `REDIS_SENTINEL` + `REDIS_SERVICE` | Sentinel: a comma-separated list of Sentinels (`host:port`, or URLs such as `redis://:sentinel-password@host:26379` / `rediss://...`) and the master's service name (`mymaster`); failovers are followed |
//! | `REDIS_CLUSTER` | Cluster: a comma-separated list of nodes (`host:port`, or `redis://` / `rediss://` URLs); one reachable node is enough |
//!
//! and, as needed (each applies to all three):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `REDIS_USERNAME`, `REDIS_PASSWORD` | the URL's | the ACL user and password of the data nodes (Sentinel: of the master) |
//! | `REDIS_CA_FILE` | the system's roots | PEM file of the CA that signed the servers' certificates (`rediss://`) |
//! | `REDIS_CLIENT_CERT_FILE`, `REDIS_CLIENT_KEY_FILE` | unset | PEM client certificate and key, for servers with `tls-auth-clients yes` |
//! | `REDIS_PREFIX` | `sess:` | the key prefix |
//! | `NEAR_CACHE_MS` | `1000` | the staleness bound, 0 to 86400000: how long this server may go on serving a session another server changed or destroyed (0: no near cache, every request reads Redis) |
//! | `REDIS_STALE_SECS` | `0` | while Redis is unreachable, serve reads from the near cache for up to this long past the bound (0 to 86400; 0: fail instead) |
//! | `REDIS_TOUCH_AFTER_SECS` | `0` | renew an unchanged session's lifetime in Redis at most once per this period (0 to 86400; 0: on every write) |
//!
//! `SESSIONS_FILE` does not apply then. Passwords are never printed ([`redact_url`]).
//!
//! The server stops on SIGINT (ctrl-c) and SIGTERM (`docker stop`, systemd) alike: it stops
//! accepting, gives open connections `SHUTDOWN_DRAIN_SECS` to finish, then saves the sessions
//! file and says whether it could (exit status 1 if not). A second signal during the drain
//! cuts the open connections at once (the sessions are still saved); one during the save
//! exits at once, saying the file may not be saved (exit status 1).
//!
//! Errors are logged to the standard error, at most one line a second for failed requests and
//! one a minute for failed background saves (with the number of those left out).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use evanesce::integrations::redis::{
    RedisRecordStore, Target, TieredStore, redact_url, redis_record_store,
};
use evanesce::integrations::tower_sessions::{RecordStore, record_store};
use evanesce::session::SealingKey;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tower_sessions::{Expiry, Session, SessionManagerLayer};

/// The longest session lifetime accepted: 400 days, where browsers cap a cookie's `Max-Age`
/// and `Expires` anyway (RFC 6265bis).
const MAX_LIFETIME_SECS: u64 = 400 * 24 * 60 * 60;

/// The session field that holds when the session began (milliseconds since the Unix epoch),
/// for the absolute lifetime.
const BEGAN: &str = "__began";

/// The settings, read from the environment and checked.
struct Settings {
    host: IpAddr,
    port: u16,
    idle: u64,
    max_age: u64,
    max_sessions: u64,
    cookie_secure: bool,
    sessions_file: Option<PathBuf>,
    sessions_key: Option<SealingKey>,
    save_every: Duration,
    header_timeout: Duration,
    write_timeout: Duration,
    connection_max: Duration,
    max_connections: usize,
    drain: Duration,
    redis: Option<RedisSettings>,
}

struct RedisSettings {
    /// Where (URLs shown redacted in messages).
    target: RedisTarget,
    username: Option<String>,
    password: Option<String>,
    ca_file: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    prefix: String,
    near_cache: Duration,
    stale: Duration,
    touch_after: Duration,
}

/// Which Redis topology, from `REDIS_URL`, `REDIS_SENTINEL` + `REDIS_SERVICE` or
/// `REDIS_CLUSTER`.
enum RedisTarget {
    Url(String),
    Sentinel {
        sentinels: Vec<String>,
        service: String,
    },
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// The target as the store takes it.
    fn target(&self) -> Target {
        match self {
            RedisTarget::Url(url) => Target::url(url.as_str()),
            RedisTarget::Sentinel { sentinels, service } => {
                Target::sentinel(sentinels.iter().map(String::as_str), service.as_str())
            }
            RedisTarget::Cluster(nodes) => Target::cluster(nodes.iter().map(String::as_str)),
        }
    }

    /// What the target is, for messages: passwords masked.
    fn shown(&self) -> String {
        let list = |urls: &[String]| {
            urls.iter()
                .map(|u| redact_url(u))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            RedisTarget::Url(url) => format!("Redis at {}", redact_url(url)),
            RedisTarget::Sentinel { sentinels, service } => {
                format!(
                    "Redis master {service:?} of the Sentinels {}",
                    list(sentinels)
                )
            }
            RedisTarget::Cluster(nodes) => format!("Redis Cluster of {}", list(nodes)),
        }
    }
}

/// A comma-separated list of Redis addresses from `name`: `host:port` becomes
/// `redis://host:port`; URLs are kept. The message never shows a password.
fn redis_list(name: &str, value: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.contains("://") {
                s.to_string()
            } else {
                format!("redis://{s}")
            }
        })
        .collect();
    if list.is_empty() {
        return Err(format!(
            "{name} is empty: expected a comma-separated list of host:port or redis:// URLs"
        ));
    }
    Ok(list)
}

impl RedisSettings {
    fn from_env() -> Result<Option<Self>, String> {
        let url = text("REDIS_URL")?;
        let sentinel = text("REDIS_SENTINEL")?;
        let cluster = text("REDIS_CLUSTER")?;
        let service = text("REDIS_SERVICE")?;
        if service.is_some() && sentinel.is_none() {
            return Err("REDIS_SERVICE is set but REDIS_SENTINEL is not".into());
        }
        let target = match (url, sentinel, cluster) {
            (None, None, None) => return Ok(None),
            (Some(url), None, None) => RedisTarget::Url(url),
            (None, Some(sentinels), None) => RedisTarget::Sentinel {
                sentinels: redis_list("REDIS_SENTINEL", &sentinels)?,
                service: service.filter(|s| !s.trim().is_empty()).ok_or(
                    "REDIS_SENTINEL needs REDIS_SERVICE, the master's name (such as mymaster)",
                )?,
            },
            (None, None, Some(nodes)) => RedisTarget::Cluster(redis_list("REDIS_CLUSTER", &nodes)?),
            _ => {
                return Err("set only one of REDIS_URL, REDIS_SENTINEL and REDIS_CLUSTER".into());
            }
        };
        let client_cert = match (
            std::env::var_os("REDIS_CLIENT_CERT_FILE"),
            std::env::var_os("REDIS_CLIENT_KEY_FILE"),
        ) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            _ => {
                return Err("REDIS_CLIENT_CERT_FILE and REDIS_CLIENT_KEY_FILE go together".into());
            }
        };
        Ok(Some(Self {
            target,
            username: text("REDIS_USERNAME")?,
            password: text("REDIS_PASSWORD")?,
            ca_file: std::env::var_os("REDIS_CA_FILE").map(PathBuf::from),
            client_cert,
            prefix: text("REDIS_PREFIX")?.unwrap_or_else(|| "sess:".to_string()),
            near_cache: Duration::from_millis(number("NEAR_CACHE_MS", 1000, 0..=86_400_000)?),
            stale: Duration::from_secs(number("REDIS_STALE_SECS", 0, 0..=86_400)?),
            touch_after: Duration::from_secs(number("REDIS_TOUCH_AFTER_SECS", 0, 0..=86_400)?),
        }))
    }

    /// The Redis store these settings describe, connected.
    async fn connect(&self) -> Result<RedisRecordStore, String> {
        let read = |name: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("{name}={}: {e}", path.display()))
        };
        let mut builder = redis_record_store(self.target.target())
            .prefix(self.prefix.as_str())
            .touch_after(self.touch_after);
        if let Some(username) = &self.username {
            builder = builder.username(username.as_str());
        }
        if let Some(password) = &self.password {
            builder = builder.password(password.as_str());
        }
        if let Some(path) = &self.ca_file {
            builder = builder.tls_ca_pem(read("REDIS_CA_FILE", path)?);
        }
        if let Some((cert, key)) = &self.client_cert {
            builder = builder.tls_client_cert_pem(
                read("REDIS_CLIENT_CERT_FILE", cert)?,
                read("REDIS_CLIENT_KEY_FILE", key)?,
            );
        }
        builder
            .build()
            .await
            .map_err(|e| format!("{}: {e}", self.target.shown()))
    }
}

/// A whole number in `range` from the variable `name`, or `default` if it is unset.
fn number(name: &str, default: u64, range: std::ops::RangeInclusive<u64>) -> Result<u64, String> {
    let value = match std::env::var(name) {
        Ok(value) => value,
        Err(std::env::VarError::NotPresent) => return Ok(default),
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(format!("{name} is not valid UTF-8"));
        }
    };
    let expected = || {
        format!(
            "{name}={value:?}: expected a whole number from {} to {}",
            range.start(),
            range.end()
        )
    };
    let n: u64 = value.trim().parse().map_err(|_| expected())?;
    if range.contains(&n) {
        Ok(n)
    } else {
        Err(expected())
    }
}

/// A yes/no variable.
fn flag(name: &str) -> Result<Option<bool>, String> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8")),
        Ok(value) => match value.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Some(true)),
            "0" | "false" | "no" | "off" => Ok(Some(false)),
            _ => Err(format!(
                "{name}={value:?}: expected true or false (also 1/0, yes/no, on/off)"
            )),
        },
    }
}

fn text(name: &str) -> Result<Option<String>, String> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8")),
    }
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let host = match text("HOST")? {
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(host) => host.trim().parse().map_err(|_| {
                format!("HOST={host:?}: expected an IP address (127.0.0.1, 0.0.0.0, ::1, ...)")
            })?,
        };
        let port =
            u16::try_from(number("PORT", 3000, 0..=u64::from(u16::MAX))?).expect("checked range");
        let idle = number("SESSION_IDLE_SECS", 1800, 1..=MAX_LIFETIME_SECS)?;
        let max_age = number("SESSION_MAX_SECS", 86_400, 1..=MAX_LIFETIME_SECS)?;
        let max_sessions = number("MAX_SESSIONS", 1_000_000, 1..=1_000_000_000)?;
        // Secure cookies are only sent back over HTTPS: a deployed server sits behind TLS (a
        // proxy that terminates it), and a session cookie that travels in clear text can be
        // stolen on the way. Browsers treat http://127.0.0.1 and http://localhost as secure
        // enough for development but not plain HTTP elsewhere, so the default is on unless
        // the server listens on loopback only, where `cargo run --example server` must work
        // in a browser at http://127.0.0.1:3000.
        let cookie_secure = flag("COOKIE_SECURE")?.unwrap_or(!host.is_loopback());
        let sessions_file = match std::env::var_os("SESSIONS_FILE") {
            None => None,
            Some(path) if path.is_empty() => {
                return Err(
                    "SESSIONS_FILE=\"\": expected the path of a file (unset it to \
                     keep the sessions in memory only)"
                        .into(),
                );
            }
            Some(path) => {
                let path = PathBuf::from(path);
                if path.file_name().is_none() || path.as_os_str().to_string_lossy().ends_with('/') {
                    return Err(format!(
                        "SESSIONS_FILE={:?}: expected the path of a file, not of a directory",
                        path.display().to_string()
                    ));
                }
                Some(path)
            }
        };
        let sessions_key = match text("SESSIONS_KEY")? {
            None => None,
            // The message never repeats the value: it is a secret.
            Some(hex) => {
                Some(SealingKey::from_hex(&hex).map_err(|e| format!("SESSIONS_KEY: {e}"))?)
            }
        };
        if sessions_key.is_some() && sessions_file.is_none() {
            return Err(
                "SESSIONS_KEY is set but SESSIONS_FILE is not: the key seals that file".into(),
            );
        }
        let save_every = Duration::from_secs(number("SESSIONS_SAVE_SECS", 10, 1..=86_400)?);
        let header_timeout = Duration::from_secs(number("HEADER_TIMEOUT_SECS", 10, 1..=3600)?);
        let write_timeout = Duration::from_secs(number("WRITE_TIMEOUT_SECS", 10, 1..=3600)?);
        let connection_max = Duration::from_secs(number("CONNECTION_MAX_SECS", 600, 1..=86_400)?);
        let max_connections =
            usize::try_from(number("MAX_CONNECTIONS", 10_000, 1..=1_000_000)?).unwrap_or(1);
        let drain = Duration::from_secs(number("SHUTDOWN_DRAIN_SECS", 10, 0..=3600)?);
        let redis = RedisSettings::from_env()?;
        Ok(Self {
            host,
            port,
            idle,
            max_age,
            max_sessions,
            cookie_secure,
            sessions_file,
            sessions_key,
            save_every,
            header_timeout,
            write_timeout,
            connection_max,
            max_connections,
            drain,
            redis,
        })
    }
}

#[derive(Clone)]
struct App {
    /// The session store, or with Redis the near cache in front of it.
    store: RecordStore,
    /// Redis, when it is configured.
    redis: Option<RedisRecordStore>,
    /// The last count of the sessions in Redis and when it was made: counting SCANs the whole
    /// prefix, so anyone's `GET /stats` must not start one each time (one at a time, reused
    /// for `STATS_REUSE`).
    redis_length: std::sync::Arc<tokio::sync::Mutex<Option<(Instant, usize)>>>,
    started: Instant,
}

/// How long a count of the sessions in Redis is reused by `/stats`.
const STATS_REUSE: Duration = Duration::from_secs(5);

/// Error lines to the standard error, at most one per `every`; the lines left out meanwhile
/// are counted and the count is given with the next one. (A client that makes every request
/// fail must not be able to fill the disk with logs or slow the server down writing them.)
struct Throttled {
    every: Duration,
    state: std::sync::Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    const fn new(every: Duration) -> Self {
        Self {
            every,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    fn log(&self, line: std::fmt::Arguments<'_>) {
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (last, left_out) = &mut *state;
        if last.is_some_and(|at| at.elapsed() < self.every) {
            *left_out += 1;
            return;
        }
        *last = Some(Instant::now());
        if *left_out > 0 {
            eprintln!("{line} ({left_out} similar lines left out)");
            *left_out = 0;
        } else {
            eprintln!("{line}");
        }
    }
}

/// Failed requests: one line a second at most.
static REQUEST_ERRORS: Throttled = Throttled::new(Duration::from_secs(1));

/// A handler error: logged (throttled), answered with a 500.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        REQUEST_ERRORS.log(format_args!("request failed: {}", self.0));
        (StatusCode::INTERNAL_SERVER_ERROR, "session store error").into_response()
    }
}

async fn index(session: Session) -> Result<Html<String>, Failure> {
    let views: u64 = session.get("views").await?.unwrap_or(0) + 1;
    session.insert("views", views).await?;
    let times = if views == 1 { "time" } else { "times" };
    // Never the session id: it is a login, and a page can end up in a cache, a screenshot,
    // a log or a bug report.
    Ok(Html(format!(
        "<!doctype html><title>evanesce</title>\
         <h1>Hello from evanesce</h1>\
         <p>You have viewed this page <b>{views}</b> {times} in this session.</p>\
         <p><a href=\"/logout\">log out</a> &middot; <a href=\"/stats\">stats</a></p>"
    )))
}

async fn logout(session: Session) -> Result<Html<&'static str>, Failure> {
    session.flush().await?;
    Ok(Html(
        "<!doctype html><title>evanesce</title><p>Your session is gone.</p><p><a href=\"/\">start a new one</a></p>",
    ))
}

async fn stats(State(app): State<App>) -> Result<Json<serde_json::Value>, Failure> {
    let counters = app.store.stats();
    let (store, live) = match &app.redis {
        Some(redis) => {
            // SCAN over the prefix: at most one at a time, and once per STATS_REUSE.
            let mut last = app.redis_length.lock().await;
            let live = match *last {
                Some((at, live)) if at.elapsed() < STATS_REUSE => live,
                _ => {
                    let live = redis.length().await?;
                    *last = Some((Instant::now(), live));
                    live
                }
            };
            ("redis with a near cache", live)
        }
        None => ("memory", app.store.length()),
    };
    Ok(Json(json!({
        "store": store,
        "live_sessions": live,
        "near_cache_sessions": app.redis.as_ref().map(|_| app.store.length()),
        "hits": counters.hits,
        "misses": counters.misses,
        "inserts": counters.inserts,
        "removals": counters.removals,
        "expirations": counters.expirations,
        "evictions": counters.evictions,
        "resident_bytes": resident_bytes(),
        "uptime_secs": app.started.elapsed().as_secs(),
    })))
}

/// The two lifetimes of a session: `idle` seconds after the last visit, and at most `max_age`
/// seconds after it began, however active (so that a stolen cookie does not work forever).
#[derive(Clone, Copy)]
struct Lifetimes {
    idle: u64,
    max_age: u64,
}

/// Runs inside the session layer: ends a session older than its absolute lifetime before the
/// handler sees it, and after the handler gives a live session the expiry that comes first
/// (the idle one, or the absolute one), which both the cookie and the store follow.
async fn lifetimes(
    State(lifetimes): State<Lifetimes>,
    session: Session,
    request: Request,
    next: Next,
) -> Result<Response, Failure> {
    let now = time::OffsetDateTime::now_utc();
    let now_ms = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
    // At most 400 days (checked with the settings): no overflow.
    let max_age_ms = i64::try_from(lifetimes.max_age)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000);
    if let Some(began) = session.get::<i64>(BEGAN).await?
        && now_ms.saturating_sub(began) >= max_age_ms
    {
        // Over: the handler starts afresh (a new id if it stores anything).
        session.flush().await?;
    }
    let response = next.run(request).await;
    if !session.is_empty().await {
        let began = match session.get::<i64>(BEGAN).await? {
            Some(began) => began,
            None => {
                session.insert(BEGAN, now_ms).await?;
                now_ms
            }
        };
        let idle_end =
            now + time::Duration::seconds(i64::try_from(lifetimes.idle).unwrap_or(i64::MAX));
        let absolute_end = time::OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(began.saturating_add(max_age_ms)) * 1_000_000,
        )
        .unwrap_or(idle_end);
        session.set_expiry(Some(Expiry::AtDateTime(idle_end.min(absolute_end))));
    }
    Ok(response)
}

/// The process's resident set, from `/proc/self/statm` (Linux; 0 elsewhere).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Raises the soft limit on open files to the hard one: each connection is a file, and a
/// server that runs out of them stops accepting. Returns the limit now in force (`None`:
/// unlimited).
fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return limit.maximum,
            Err(e) => eprintln!(
                "warning: the open-files limit stays at {:?}: {e}",
                limit.current
            ),
        }
    }
    limit.current
}

/// SIGINT and SIGTERM, handled from the moment this is made (so that a signal that comes
/// just after the server says it listens is not lost to the default action, which would end
/// the process without saving).
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> Result<Self, String> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let handle =
                |kind, name| signal(kind).map_err(|e| format!("cannot handle {name}: {e}"));
            Ok(Self {
                interrupt: handle(SignalKind::interrupt(), "SIGINT")?,
                terminate: handle(SignalKind::terminate(), "SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves at the next SIGINT or SIGTERM, and says which.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "ctrl-c"
        }
    }
}

fn main() -> ExitCode {
    ExitCode::from(run_from_env())
}

/// The whole server, from the environment to its exit status (0: stopped and saved; 1: a
/// failure; 2: bad settings).
pub fn run_from_env() -> u8 {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(why) => {
            eprintln!("error: {why}");
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return 1;
        }
    };
    let status = runtime.block_on(async {
        match serve(settings).await {
            Ok(status) => status,
            Err(why) => {
                eprintln!("error: {why}");
                1
            }
        }
    });
    // Connection tasks cut at the end of the drain are dropped here, at once.
    runtime.shutdown_background();
    status
}

async fn serve(settings: Settings) -> Result<u8, String> {
    let mut signals = Signals::register()?;
    let files_limit = raise_open_files_limit();
    if let Some(limit) = files_limit
        && limit < settings.max_connections as u64 + 64
    {
        eprintln!(
            "warning: the open-files limit ({limit}) is below MAX_CONNECTIONS ({}) + 64: \
             connections beyond it will fail to be accepted (lower MAX_CONNECTIONS or raise \
             the limit)",
            settings.max_connections
        );
    }
    let started = Instant::now();
    let lifetimes_layer = middleware::from_fn_with_state(
        Lifetimes {
            idle: settings.idle,
            max_age: settings.max_age,
        },
        lifetimes,
    );
    let routes = Router::new()
        .route("/", get(index))
        .route("/logout", get(logout))
        .route("/stats", get(stats))
        .layer(lifetimes_layer);
    let expiry = Expiry::OnInactivity(time::Duration::seconds(
        i64::try_from(settings.idle).unwrap_or(i64::MAX),
    ));
    // `__Host-` needs `Secure` (and `Path=/`, no `Domain`, which are tower-sessions'
    // defaults): a browser then takes the cookie only from an HTTPS response of this very
    // host, so neither a sibling subdomain nor a plain-HTTP page can plant one.
    let cookie_name = if settings.cookie_secure {
        "__Host-id"
    } else {
        "id"
    };
    let max = settings.max_sessions;
    // The store to close at shutdown (the in-memory one with a sessions file), and the task
    // that reports its failed background saves.
    let mut persistent: Option<(RecordStore, PathBuf, tokio::task::JoinHandle<()>)> = None;
    let (app, which) = if let Some(redis) = &settings.redis {
        if settings.sessions_file.is_some() {
            eprintln!(
                "warning: SESSIONS_FILE does not apply with Redis (Redis keeps the sessions)"
            );
        }
        let far = redis.connect().await?;
        let tiered = TieredStore::builder(far.clone())
            .bound(redis.near_cache)
            .serve_stale_for(redis.stale)
            .max(max)
            .check_period(Duration::from_secs(1))
            .build()
            .map_err(|e| e.to_string())?;
        let near = tiered.near().clone();
        let sessions = SessionManagerLayer::new(tiered)
            .with_name(cookie_name)
            .with_secure(settings.cookie_secure)
            .with_expiry(expiry);
        let app = routes
            .with_state(App {
                store: near,
                redis: Some(far),
                redis_length: Default::default(),
                started,
            })
            .layer(sessions);
        let which = format!(
            "store: {} (keys {}*) behind a near cache of at most {max} sessions, staleness bound {} ms{}{}",
            redis.target.shown(),
            redis.prefix,
            redis.near_cache.as_millis(),
            if redis.stale.is_zero() {
                String::new()
            } else {
                format!(
                    ", stale reads for {} s while Redis is unreachable",
                    redis.stale.as_secs()
                )
            },
            if redis.touch_after.is_zero() {
                String::new()
            } else {
                format!(", touch after {} s", redis.touch_after.as_secs())
            },
        );
        (app, which)
    } else {
        // Expired sessions leave as requests come in; the sweeper (every second) covers a
        // quiet server, so memory comes back even if nobody visits again.
        let mut builder = record_store().max(max).check_period(Duration::from_secs(1));
        if let Some(path) = &settings.sessions_file {
            builder = builder
                .snapshot_file(path)
                .snapshot_every(settings.save_every);
            if let Some(key) = &settings.sessions_key {
                builder = builder.snapshot_key(key.clone());
            }
        }
        let store = builder.build().map_err(|e| match &settings.sessions_file {
            Some(path) => format!("sessions file {}: {e}", path.display()),
            None => e.to_string(),
        })?;
        if let Some(path) = &settings.sessions_file {
            println!(
                "sessions file {} ({}): {} live sessions loaded",
                path.display(),
                if settings.sessions_key.is_some() {
                    "sealed"
                } else {
                    "not sealed"
                },
                store.length()
            );
            let reporter = tokio::spawn(report_failed_saves(store.clone(), path.clone()));
            persistent = Some((store.clone(), path.clone(), reporter));
        }
        let sessions = SessionManagerLayer::new(store.clone())
            .with_name(cookie_name)
            .with_secure(settings.cookie_secure)
            .with_expiry(expiry);
        let app = routes
            .with_state(App {
                store,
                redis: None,
                redis_length: Default::default(),
                started,
            })
            .layer(sessions);
        (app, "store: in memory".to_string())
    };
    println!("{which}");

    let addr = SocketAddr::from((settings.host, settings.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!(
        "evanesce example server listening on http://{addr} (sessions end after {} s idle or {} s in all, at most {max}; cookies {})",
        settings.idle,
        settings.max_age,
        if settings.cookie_secure {
            "Secure (HTTPS only), named __Host-id"
        } else {
            "not Secure (plain HTTP: set COOKIE_SECURE=true behind a TLS proxy)"
        }
    );

    let signal = accept_until_signal(listener, app, &settings, &mut signals).await;

    // Save the sessions last, once no connection can change them.
    let Some((store, path, reporter)) = persistent else {
        println!("stopped ({signal})");
        return Ok(0);
    };
    reporter.abort();
    // On a blocking thread, so that a signal can still stop the server if the disk hangs.
    let closing = tokio::task::spawn_blocking(move || store.close());
    tokio::select! {
        closed = closing => match closed {
            Ok(Ok(n)) => {
                println!("sessions saved to {}: {n} sessions", path.display());
                Ok(0)
            }
            Ok(Err(e)) => {
                eprintln!("sessions NOT saved to {}: {e}", path.display());
                Ok(1)
            }
            Err(e) => {
                eprintln!("sessions NOT saved to {}: the save failed: {e}", path.display());
                Ok(1)
            }
        },
        name = signals.next() => {
            // The save may have renamed its file in place or not: the file holds this
            // snapshot or the previous one, never a mix.
            eprintln!(
                "{name} received during the save: stopping now; sessions may NOT be saved to {}",
                path.display()
            );
            Ok(1)
        }
    }
}

/// Logs the failures of the background saves of `store` as they happen (they are looked for
/// every second), at most one line a minute.
async fn report_failed_saves(store: RecordStore, path: PathBuf) {
    let throttled = Throttled::new(Duration::from_secs(60));
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Some(e) = store.take_snapshot_error() {
            throttled.log(format_args!(
                "background save of the sessions file {} failed: {e}",
                path.display()
            ));
        }
    }
}

/// A connection's socket with a write timeout: a write (or flush) that makes no progress for
/// `timeout` fails with `TimedOut`, which ends the connection. hyper has a timeout for reading
/// a request's headers but none for writing a response: without this, a client that sends
/// requests and never reads the responses would hold its connection (and the responses queued
/// for it) for ever.
struct WriteTimeout {
    stream: tokio::net::TcpStream,
    timeout: Duration,
    /// Running while a write is stalled.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl WriteTimeout {
    fn new(stream: tokio::net::TcpStream, timeout: Duration) -> Self {
        Self {
            stream,
            timeout,
            stalled: None,
        }
    }

    /// After a write returned `Pending`: the timeout's verdict (it starts now unless it runs
    /// already; it wakes the task when it ends).
    fn stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read nothing for the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// What a write-side call returned, with the timeout applied: progress (or an error)
    /// resets it, `Pending` runs it.
    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Ready(done) => {
                self.stalled = None;
                Poll::Ready(done)
            }
            Poll::Pending => self.stall(cx),
        }
    }
}

impl tokio::io::AsyncRead for WriteTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for WriteTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.progress(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.progress(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_flush(cx);
        self.progress(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.progress(cx, polled)
    }
}

/// Serves connections until SIGINT or SIGTERM, then drains them for at most the drain bound
/// (or until a second signal) and cuts the rest. Returns the first signal's name.
async fn accept_until_signal(
    listener: tokio::net::TcpListener,
    app: Router,
    settings: &Settings,
    signals: &mut Signals,
) -> &'static str {
    // HTTP/1 only, so that the header-read timeout covers a connection from its first byte
    // (hyper-util's auto builder first reads the HTTP/2 preface with no timeout) and every
    // kept-alive connection waiting for its next request: an idle connection is closed after
    // `header_timeout`, so idle sockets cannot pile up until the server runs out of files.
    // Writes have their own timeout (`WriteTimeout`), and every connection a lifetime.
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    // At most `max_connections` at once: beyond it, new connections wait in the kernel's
    // listen queue (and past that, the kernel refuses them) until one ends.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    let full = Throttled::new(Duration::from_secs(10));
    let accept_errors = Throttled::new(Duration::from_secs(1));
    let (write_timeout, connection_max) = (settings.write_timeout, settings.connection_max);
    let name = loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                full.log(format_args!(
                    "{} connections open, the most MAX_CONNECTIONS allows: new ones wait",
                    settings.max_connections
                ));
                tokio::select! {
                    name = signals.next() => break name,
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                }
            }
        };
        tokio::select! {
            name = signals.next() => break name,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let service = TowerToHyperService::new(app.clone());
                    let io = TokioIo::new(WriteTimeout::new(stream, write_timeout));
                    let connection = http.serve_connection(io, service);
                    let watched = graceful.watch(connection);
                    connections.spawn(async move {
                        // A connection's errors (a client that hung up, a timeout) are the
                        // client's business. At the end of its lifetime it is cut.
                        let _ = tokio::time::timeout(connection_max, watched).await;
                        drop(slot);
                    });
                    // Reap what finished, so the set stays as large as the open connections.
                    while connections.try_join_next().is_some() {}
                }
                Err(e) => {
                    // Out of files (EMFILE) or memory: wait a little for connections to close
                    // (the timeouts close idle ones) instead of spinning, and say so at most
                    // once a second.
                    accept_errors.log(format_args!("accept failed: {e} (retrying)"));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    };
    drop(listener);
    // Each open connection holds a slot until its task ends.
    let open = || settings.max_connections - slots.available_permits();
    let open_at_signal = open();
    println!(
        "{name} received: stopping; {open_at_signal} open connections get up to {} s to finish (a second signal cuts them now)",
        settings.drain.as_secs()
    );
    tokio::select! {
        drained = tokio::time::timeout(settings.drain, graceful.shutdown()) => match drained {
            Ok(()) => println!("all connections closed"),
            Err(_) => {
                let left = open();
                connections.abort_all();
                println!(
                    "drain bound of {} s reached: {left} connections cut",
                    settings.drain.as_secs()
                );
            }
        },
        again = signals.next() => {
            let left = open();
            connections.abort_all();
            println!("{again} received during the drain: {left} connections cut");
        }
    }
    // Wait for the cut tasks to be dropped, so no handle to the store is left in them.
    while connections.join_next().await.is_some() {}
    name
}
