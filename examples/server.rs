//! The main job: express-session's quickstart made real, with an axum app whose sessions live
//! in evanesce (through tower-sessions) and leave on their own when they expire.
//!
//! ```sh
//! cargo run --release --example server        # http://127.0.0.1:3000 (PORT overrides)
//! ```
//!
//! - `GET /` counts your views in your session and shows the count and the session id;
//! - `GET /logout` destroys your session;
//! - `GET /stats` shows the live sessions, the store's hit and miss counters, and the
//!   process's resident memory (JSON).
//!
//! Settings from the environment: `PORT` (3000), `SESSION_IDLE_SECS` (1800: a session ends
//! after that long without a visit), `MAX_SESSIONS` (1000000: the store's bound),
//! `SESSIONS_FILE` (unset: when set, sessions survive a restart: the store loads this
//! snapshot at start, saves it every 10 seconds and when the server stops with ctrl-c).
//!
//! With `REDIS_URL` set (for example `redis://127.0.0.1:6379/`), sessions live in Redis and
//! are shared by every server pointed at it: the server uses the two-tier store (evanesce's
//! in-memory near cache, bounded by `MAX_SESSIONS`, in front of Redis). `NEAR_CACHE_MS`
//! (1000) is the staleness bound: how long this server may go on serving a session another
//! server changed or destroyed (0: no near cache, every request reads Redis). `REDIS_PREFIX`
//! (`sess:`) is the key prefix. `SESSIONS_FILE` does not apply then.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use evanesce::integrations::redis::{
    RedisRecordStore, TieredStore, near_cache, redis_record_store,
};
use evanesce::integrations::tower_sessions::{RecordStore, record_store};
use serde_json::json;
use tower_sessions::{Expiry, Session, SessionManagerLayer};

#[derive(Clone)]
struct App {
    /// The session store, or with Redis the near cache in front of it.
    store: RecordStore,
    /// Redis, when `REDIS_URL` is set.
    redis: Option<RedisRecordStore>,
    started: Instant,
}

/// A handler error: logged, answered with a 500.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        eprintln!("request failed: {}", self.0);
        (StatusCode::INTERNAL_SERVER_ERROR, "session store error").into_response()
    }
}

async fn index(session: Session) -> Result<Html<String>, Failure> {
    let views: u64 = session.get("views").await?.unwrap_or(0) + 1;
    session.insert("views", views).await?;
    if session.id().is_none() {
        // A new session gets its id when it is first saved; save now to show it.
        session.save().await?;
    }
    let id = session.id().map(|id| id.to_string()).unwrap_or_default();
    let times = if views == 1 { "time" } else { "times" };
    Ok(Html(format!(
        "<!doctype html><title>evanesce</title>\
         <h1>Hello from evanesce</h1>\
         <p>You have viewed this page <b>{views}</b> {times} in this session.</p>\
         <p>Session id: <code>{id}</code></p>\
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
        // SCAN over the prefix: fine for a demo, not for a hot path.
        Some(redis) => ("redis with a near cache", redis.length().await?),
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

/// The process's resident set, from `/proc/self/statm` (Linux; 0 elsewhere).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn env_u64(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map_err(|e| format!("{name}={v:?}: {e}")),
        Err(_) => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = u16::try_from(env_u64("PORT", 3000)?)?;
    let idle = env_u64("SESSION_IDLE_SECS", 1800)?;
    let max = env_u64("MAX_SESSIONS", 1_000_000)?;

    let expiry = Expiry::OnInactivity(time::Duration::seconds(idle as i64));
    let started = Instant::now();
    let app = Router::new()
        .route("/", get(index))
        .route("/logout", get(logout))
        .route("/stats", get(stats));
    let snapshot = std::env::var_os("SESSIONS_FILE");
    let (app, which) = if let Ok(url) = std::env::var("REDIS_URL") {
        let bound = std::time::Duration::from_millis(env_u64("NEAR_CACHE_MS", 1000)?);
        let prefix = std::env::var("REDIS_PREFIX").unwrap_or_else(|_| "sess:".to_string());
        let redis = redis_record_store(url.as_str())
            .prefix(prefix.as_str())
            .build()
            .await?;
        let near = near_cache(bound)
            .max(max)
            .check_period(std::time::Duration::from_secs(1))
            .build()?;
        let tiered = TieredStore::with_near_cache(near.clone(), redis.clone());
        let sessions = SessionManagerLayer::new(tiered)
            .with_secure(false)
            .with_expiry(expiry);
        let app = app
            .with_state(App {
                store: near,
                redis: Some(redis),
                started,
            })
            .layer(sessions);
        let which = format!(
            "store: Redis at {url} (keys {prefix}*) behind a near cache of at most {max} sessions, staleness bound {} ms",
            bound.as_millis()
        );
        (app, which)
    } else {
        // Expired sessions leave as requests come in; the sweeper (every second) covers a
        // quiet server, so memory comes back even if nobody visits again.
        let mut builder = record_store()
            .max(max)
            .check_period(std::time::Duration::from_secs(1));
        if let Some(path) = &snapshot {
            builder = builder
                .snapshot_file(path)
                .snapshot_every(std::time::Duration::from_secs(10));
        }
        let store = builder.build()?;
        if let Some(path) = &snapshot {
            println!(
                "sessions file {}: {} live sessions loaded",
                std::path::Path::new(path).display(),
                store.length()
            );
        }
        let sessions = SessionManagerLayer::new(store.clone())
            .with_secure(false)
            .with_expiry(expiry);
        let app = app
            .with_state(App {
                store,
                redis: None,
                started,
            })
            .layer(sessions);
        (app, "store: in memory".to_string())
    };
    println!("{which}");

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "evanesce example server listening on http://{addr} (sessions end after {idle} s idle, at most {max})"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // The app (and with it every handle to the store) is gone: the store has saved its
    // sessions file, if it has one.
    if snapshot.is_some() && std::env::var_os("REDIS_URL").is_none() {
        println!("sessions saved");
    }
    Ok(())
}
