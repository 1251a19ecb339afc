//! `RedisStore` and the two-tier store against a real `redis-server`: each test starts its own
//! server on a free loopback port (in a temporary directory, no persistence) and kills it at
//! the end. Without `redis-server` on PATH each test says so on stderr and passes, so that
//! `cargo test` works on a machine without Redis; with `EVANESCE_REDIS_TESTS=required` (which
//! `.ci/run` sets, after installing the server) a missing server fails every test.

mod common;

use common::{call, count};
use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::routing::get;
use evanesce::integrations::redis::{
    RedisRecordStore, RedisStore, TieredStore, near_cache, redis_record_store,
};
use evanesce::session::{Cookie, Error, Session};
use serde_json::{Value, json};
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::SessionStore;
use tower_sessions::{Expiry, SessionManagerLayer};

// ---- the server ----

mod redis_support;

use redis_support::{Server, until_ok};

/// A `redis-server` of the test's own (see `redis_support`).
struct RedisServer;

impl RedisServer {
    /// A running server, or `None` if there is no `redis-server` on PATH and the tests are
    /// not required (see the module documentation).
    fn start() -> Option<Server> {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start), with more `redis-server` arguments.
    fn start_with(extra: &[&str]) -> Option<Server> {
        redis_support::available(false).then(|| Server::plain(extra))
    }
}

// ---- helpers ----

fn session(value: Value) -> Session {
    serde_json::from_value(value).expect("a JSON object")
}

fn expiring(ttl: Duration) -> Session {
    Session::with_cookie(Cookie::expiring_in(ttl, SystemTime::now()))
}

async fn store(server: &Server) -> RedisStore {
    RedisStore::builder(server.url()).build().await.unwrap()
}

fn redis_get(server: &Server, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut server.client())
        .unwrap()
}

fn redis_set(server: &Server, key: &str, value: &[u8]) {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query::<()>(&mut server.client())
        .unwrap();
}

fn assert_near(actual: Option<Duration>, expected: Duration) {
    let actual = actual.expect("the key has a lifetime");
    let slack = Duration::from_secs(2);
    assert!(
        actual <= expected && actual + slack >= expected,
        "lifetime {actual:?}, expected about {expected:?}"
    );
}

// ---- the session store's behaviour ----

#[tokio::test]
async fn set_and_get_round_trip_express_session_json() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = store(&server).await;
    let express = session(json!({
        "cookie": {
            "originalMaxAge": 3_600_000,
            "expires": "2099-01-01T00:00:00.000Z",
            "httpOnly": true,
            "path": "/",
            "sameSite": "lax"
        },
        "user": {"name": "ada", "roles": ["admin"]},
        "views": 3,
        "flash": null
    }));
    store.set("sid-1", &express).await.unwrap();
    assert_eq!(store.get("sid-1").await.unwrap(), Some(express.clone()));
    // One key per session, under the prefix, as the serializer's bytes.
    let raw = redis_get(&server, "sess:sid-1").expect("stored under the prefix");
    assert_eq!(serde_json::from_slice::<Session>(&raw).unwrap(), express);
    // `set` replaces.
    let mut newer = express.clone();
    newer.insert("views", 4);
    store.set("sid-1", &newer).await.unwrap();
    assert_eq!(store.get("sid-1").await.unwrap(), Some(newer));
}

#[tokio::test]
async fn unknown_and_empty_ids_are_not_found() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = store(&server).await;
    assert_eq!(store.get("never-set").await.unwrap(), None);
    assert_eq!(store.get("").await.unwrap(), None);
    assert_eq!(store.expires_in("never-set").await.unwrap(), None);
}

#[tokio::test]
async fn the_lifetime_follows_ttl_then_ttl_fn_then_the_cookie_then_one_day() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = store(&server).await;
    let hour = Duration::from_secs(3600);
    store.set("expires", &expiring(hour)).await.unwrap();
    assert_near(store.expires_in("expires").await.unwrap(), hour);
    let max_age = Session::with_cookie(Cookie::new().with_max_age_field(Duration::from_secs(90)));
    store.set("max-age", &max_age).await.unwrap();
    assert_near(
        store.expires_in("max-age").await.unwrap(),
        Duration::from_secs(90),
    );
    store.set("no-cookie", &Session::new()).await.unwrap();
    assert_near(
        store.expires_in("no-cookie").await.unwrap(),
        Duration::from_secs(86_400),
    );

    let fixed = RedisStore::builder(server.url())
        .ttl(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    fixed.set("fixed", &expiring(hour)).await.unwrap();
    assert_near(
        fixed.expires_in("fixed").await.unwrap(),
        Duration::from_secs(30),
    );
    let by_fn = RedisStore::builder(server.url())
        .ttl_fn(|_, id| Duration::from_secs(if id == "short" { 10 } else { 20 }))
        .build()
        .await
        .unwrap();
    by_fn.set("short", &expiring(hour)).await.unwrap();
    assert_near(
        by_fn.expires_in("short").await.unwrap(),
        Duration::from_secs(10),
    );
}

#[tokio::test]
async fn a_zero_lifetime_deletes() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = store(&server).await;
    store
        .set("sid", &expiring(Duration::from_secs(60)))
        .await
        .unwrap();
    let past = Session::with_cookie(Cookie::new().with_expires(SystemTime::UNIX_EPOCH));
    store.set("sid", &past).await.unwrap();
    assert_eq!(store.get("sid").await.unwrap(), None);
    assert_eq!(redis_get(&server, "sess:sid"), None);
    // `set_if_present` with a zero lifetime deletes too; `set_if_absent` stores nothing.
    store
        .set("sid", &expiring(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(store.set_if_present("sid", &past).await.unwrap());
    assert_eq!(store.get("sid").await.unwrap(), None);
    assert!(store.set_if_absent("sid", &past).await.unwrap());
    assert_eq!(store.get("sid").await.unwrap(), None);
}

#[tokio::test]
async fn destroy_removes_one_or_many() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = store(&server).await;
    let s = expiring(Duration::from_secs(60));
    for id in ["a", "b", "c", "d"] {
        store.set(id, &s).await.unwrap();
    }
    assert_eq!(store.destroy("a").await.unwrap(), 1);
    assert_eq!(store.destroy("a").await.unwrap(), 0, "already gone");
    assert_eq!(store.destroy(["b", "c", "missing"]).await.unwrap(), 2);
    assert_eq!(store.destroy(Vec::<String>::new()).await.unwrap(), 0);
    assert_eq!(store.ids().await.unwrap(), vec!["d".to_string()]);
}

#[tokio::test]
async fn touch_moves_the_expiry_and_the_cookie_only_and_never_resurrects() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = store(&server).await;
    let mut stored = expiring(Duration::from_secs(5));
    stored.insert("views", 3);
    store.set("sid", &stored).await.unwrap();

    // A newer copy of the session: a later cookie, and user data that must not be written.
    let mut newer = expiring(Duration::from_secs(600));
    newer.insert("views", 100);
    assert!(store.touch("sid", &newer).await.unwrap());
    assert_near(
        store.expires_in("sid").await.unwrap(),
        Duration::from_secs(600),
    );
    let now = store.get("sid").await.unwrap().unwrap();
    assert_eq!(now.get("views"), Some(&json!(3)), "user data kept");
    assert_eq!(now.cookie(), newer.cookie(), "cookie replaced");

    // The same cookie again: only the expiry moves (and the bytes stay as they are).
    let before = redis_get(&server, "sess:sid");
    let same_cookie = Session::with_cookie(now.cookie().unwrap());
    let by_fn = RedisStore::builder(server.url())
        .ttl(Duration::from_secs(900))
        .build()
        .await
        .unwrap();
    assert!(by_fn.touch("sid", &same_cookie).await.unwrap());
    assert_eq!(redis_get(&server, "sess:sid"), before);
    assert_near(
        store.expires_in("sid").await.unwrap(),
        Duration::from_secs(900),
    );

    // Never brings back a destroyed or unknown session.
    store.destroy("sid").await.unwrap();
    assert!(!store.touch("sid", &newer).await.unwrap());
    assert!(!store.touch("never-set", &newer).await.unwrap());
    assert_eq!(store.get("sid").await.unwrap(), None);
    assert_eq!(redis_get(&server, "sess:sid"), None);

    // A touch whose cookie has ended ends the session.
    store.set("sid", &stored).await.unwrap();
    let ended = Session::with_cookie(Cookie::new().with_expires(SystemTime::UNIX_EPOCH));
    assert!(store.touch("sid", &ended).await.unwrap());
    assert_eq!(store.get("sid").await.unwrap(), None);
}

#[tokio::test]
async fn ids_all_length_and_clear_keep_to_the_prefix() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // A prefix with glob characters: they must be matched literally.
    let store = RedisStore::builder(server.url())
        .prefix("app[1]*:")
        .build()
        .await
        .unwrap();
    let other = store_with_prefix(&server, "other:").await;
    // Keys a glob-unescaped `app[1]*:*` would match, and keys of another app.
    redis_set(&server, "app1:foreign", b"not ours");
    redis_set(&server, "app1x:foreign", b"not ours");
    redis_set(&server, "unrelated", b"not ours");
    other
        .set("theirs", &expiring(Duration::from_secs(60)))
        .await
        .unwrap();

    let mut expected = std::collections::HashMap::new();
    for i in 0..1200 {
        // More than one SCAN step.
        let mut s = expiring(Duration::from_secs(60));
        s.insert("i", i);
        let id = format!("s{i}");
        store.set(&id, &s).await.unwrap();
        expected.insert(id, s);
    }
    assert_eq!(store.length().await.unwrap(), 1200);
    let mut ids = store.ids().await.unwrap();
    ids.sort();
    let mut expected_ids: Vec<String> = expected.keys().cloned().collect();
    expected_ids.sort();
    assert_eq!(ids, expected_ids);
    assert_eq!(store.all().await.unwrap(), expected);

    assert_eq!(store.clear().await.unwrap(), 1200);
    assert_eq!(store.length().await.unwrap(), 0);
    assert_eq!(store.all().await.unwrap().len(), 0);
    for key in ["app1:foreign", "app1x:foreign", "unrelated"] {
        assert_eq!(
            redis_get(&server, key).as_deref(),
            Some(&b"not ours"[..]),
            "{key} untouched"
        );
    }
    assert_eq!(other.ids().await.unwrap(), vec!["theirs".to_string()]);
}

async fn store_with_prefix(server: &Server, prefix: &str) -> RedisStore {
    RedisStore::builder(server.url())
        .prefix(prefix)
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn bytes_that_do_not_decode_are_reported_once_and_removed() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = store(&server).await;
    redis_set(&server, "sess:bad", b"{not json");
    match store.get("bad").await {
        Err(Error::Decode { id, .. }) => assert_eq!(id, "bad"),
        other => panic!("expected a decode error, got {other:?}"),
    }
    assert_eq!(store.get("bad").await.unwrap(), None, "removed");
    redis_set(&server, "sess:bad", b"[1, 2]");
    assert!(matches!(store.all().await, Err(Error::Decode { .. })));
    assert!(store.all().await.unwrap().is_empty());
}

#[tokio::test]
async fn redis_expires_sessions_itself() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = store(&server).await;
    let lifetime = Duration::from_millis(300);
    // Redis counts the lifetime from its SET, which comes after this.
    let before_set = Instant::now();
    let short = Session::with_cookie(Cookie::new().with_max_age_field(lifetime));
    store.set("short", &short).await.unwrap();
    store
        .set("long", &expiring(Duration::from_secs(60)))
        .await
        .unwrap();
    let found = store.get("short").await.unwrap();
    // Only a read that ended within the lifetime must find it (a test thread descheduled
    // for the 300 ms does not).
    if before_set.elapsed() < lifetime {
        assert!(found.is_some(), "expired early");
    }
    let started = Instant::now();
    while store.length().await.unwrap() > 1 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "Redis did not expire the session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Not before its time (a little slack for Redis's millisecond clock).
    assert!(before_set.elapsed() >= lifetime - Duration::from_millis(50));
    assert_eq!(store.get("short").await.unwrap(), None);
    assert!(store.get("long").await.unwrap().is_some());
}

// ---- failures ----

#[tokio::test]
async fn a_redis_restart_gives_prompt_errors_then_the_same_store_works_again() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let store = store(&server).await;
    let s = expiring(Duration::from_secs(60));
    store.set("before", &s).await.unwrap();

    server.kill();
    for attempt in 0..3 {
        let started = Instant::now();
        let result = store.get("before").await;
        let took = started.elapsed();
        assert!(
            matches!(result, Err(Error::Backend(_))),
            "attempt {attempt}: expected a backend error, got {result:?}"
        );
        assert!(
            took < Duration::from_secs(3),
            "attempt {attempt}: the error took {took:?}"
        );
    }
    let started = Instant::now();
    assert!(matches!(store.set("x", &s).await, Err(Error::Backend(_))));
    assert!(started.elapsed() < Duration::from_secs(3));

    server.restart();
    // The connection manager reconnects on its own: no new store.
    let started = Instant::now();
    while store.set("after", &s).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the store did not recover after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.get("after").await.unwrap(), Some(s.clone()));
    assert_eq!(
        store.get("before").await.unwrap(),
        None,
        "the server kept nothing"
    );
    assert_eq!(store.length().await.unwrap(), 1);
}

/// A server that accepts nothing and answers nothing (stopped with SIGSTOP): the response
/// timeout, not a refused connection, is what ends the wait.
#[tokio::test]
async fn a_frozen_redis_gives_a_timeout_error_not_a_hang() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // (The build and the first write again if they time out: see `until_ok`.)
    let store = until_ok(|| {
        RedisStore::builder(server.url())
            .response_timeout(Duration::from_millis(500))
            .build()
    })
    .await;
    let s = expiring(Duration::from_secs(60));
    until_ok(|| store.set("sid", &s)).await;
    server.signal("STOP");
    let started = Instant::now();
    let result = store.get("sid").await;
    let took = started.elapsed();
    server.signal("CONT");
    match result {
        Err(Error::Backend(e)) => {
            let redis = e.downcast_ref::<redis::RedisError>().expect("a RedisError");
            assert!(redis.is_timeout(), "{redis}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    assert!(took < Duration::from_secs(3), "the error took {took:?}");
    // Thawed, the same store answers again.
    let started = Instant::now();
    loop {
        match store.get("sid").await {
            Ok(found) => {
                assert_eq!(found, Some(s));
                break;
            }
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(10),
                "no recovery: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn building_against_no_server_fails_promptly() {
    let port = {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let result = RedisStore::builder(format!("redis://127.0.0.1:{port}/"))
        .build()
        .await;
    assert!(matches!(result, Err(Error::Backend(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(
        RedisStore::builder("not a url").build().await,
        Err(Error::Config(_))
    ));
}

// ---- credentials never shown (issue 12, item 4) ----

const PASSWORD: &str = "hunter2-Secret";

/// Every way an error or a store can be shown.
fn shown(what: &dyn std::fmt::Debug, display: Option<&dyn std::fmt::Display>) -> String {
    let mut text = format!("{what:?} {what:#?}");
    if let Some(display) = display {
        text.push_str(&format!(" {display}"));
    }
    text
}

fn assert_hidden(text: &str) {
    assert!(!text.contains(PASSWORD), "the password shows: {text}");
    assert!(
        !text.contains("hunter2"),
        "part of the password shows: {text}"
    );
}

#[tokio::test]
async fn a_redis_password_never_shows_in_debug_or_errors() {
    // A malformed URL with a password: the config error shows the URL, redacted.
    for url in [
        format!("redis://:{PASSWORD}@[not-a-host/"),
        format!("redis://user:{PASSWORD}@127.0.0.1:notaport/"),
        format!("redis+unix:///nowhere.sock?pass={PASSWORD}&db=x"),
        format!("nonsense://{PASSWORD}@"),
    ] {
        let builder = RedisStore::builder(url.clone());
        assert_hidden(&shown(&builder, None));
        match builder.build().await {
            Err(e) => {
                let mut text = shown(&e, Some(&e));
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text.push_str(&format!(" {s} {s:?}"));
                    source = s.source();
                }
                assert_hidden(&text);
            }
            Ok(store) => panic!("{url}: built {store:?}"),
        }
    }
    // A server that is not there.
    let port = {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.local_addr().unwrap().port()
    };
    let e = RedisStore::builder(format!("redis://app:{PASSWORD}@127.0.0.1:{port}/"))
        .build()
        .await
        .unwrap_err();
    assert_hidden(&shown(&e, Some(&e)));
}

#[tokio::test]
async fn a_redis_password_never_shows_against_a_real_server() {
    let Some(server) = RedisServer::start_with(&["--requirepass", PASSWORD]) else {
        return;
    };
    let good = format!("redis://:{PASSWORD}@127.0.0.1:{}/", server.port);
    let store = RedisStore::builder(good.clone()).build().await.unwrap();
    assert_hidden(&shown(&store, None));
    assert_eq!(
        store.url(),
        format!("redis://:***@127.0.0.1:{}/", server.port)
    );
    store
        .set("a", &expiring(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(store.get("a").await.unwrap().is_some());
    // A wrong password (itself a secret): refused, and not shown either.
    let wrong = format!(
        "redis://default:{PASSWORD}-wrong@127.0.0.1:{}/",
        server.port
    );
    let e = RedisStore::builder(wrong).build().await.unwrap_err();
    assert_hidden(&shown(&e, Some(&e)));
    // Errors of a working store, once the server is gone.
    drop(server);
    let e = store.get("a").await.unwrap_err();
    assert_hidden(&shown(&e, Some(&e)));
}

// ---- sealed values (issue 12, item 2) ----

#[tokio::test]
async fn sealed_values_in_redis_are_unreadable_and_unforgeable() {
    use evanesce::session::{JsonSerializer, Sealed, SealingKey};
    let Some(server) = RedisServer::start() else {
        return;
    };
    let key = SealingKey::generate();
    let sealed = |key: SealingKey| {
        RedisStore::with_serializer(
            server.url(),
            Sealed::new(JsonSerializer::<Session>::new(), key),
        )
        .prefix("sealed:")
    };
    let store = sealed(key.clone()).build().await.unwrap();
    let mut s = expiring(Duration::from_secs(60));
    s.insert("secret", "hunter2");
    store.set("a", &s).await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), Some(s.clone()));
    // What Redis holds (and a dump, MONITOR or a replica shows) is not the session.
    let raw = redis_get(&server, "sealed:a").unwrap();
    assert!(raw.starts_with(b"EVS1"));
    assert!(!raw.windows(7).any(|w| w == b"hunter2"));
    // Another key cannot read it: one Decode error, and the value is removed.
    let other = sealed(SealingKey::generate()).build().await.unwrap();
    assert!(matches!(other.get("a").await, Err(Error::Decode { .. })));
    assert_eq!(redis_get(&server, "sealed:a"), None);
    // A value planted behind the store's back (plain JSON, or sealed bytes changed) does not
    // decode either.
    redis_set(&server, "sealed:forged", br#"{"cookie":{},"user":"admin"}"#);
    assert!(matches!(
        store.get("forged").await,
        Err(Error::Decode { .. })
    ));
    store.set("b", &s).await.unwrap();
    let mut bytes = redis_get(&server, "sealed:b").unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    redis_set(&server, "sealed:b", &bytes);
    assert!(matches!(store.get("b").await, Err(Error::Decode { .. })));
    // touch keeps working through the seal.
    store.set("c", &s).await.unwrap();
    assert!(
        store
            .touch("c", &expiring(Duration::from_secs(600)))
            .await
            .unwrap()
    );
    assert_eq!(
        store.get("c").await.unwrap().unwrap().get("secret"),
        Some(&json!("hunter2"))
    );
}

// ---- tower-sessions ----

fn record(expires_in: i64) -> Record {
    Record {
        id: Id::default(),
        data: Default::default(),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::seconds(expires_in),
    }
}

async fn record_store(server: &Server) -> RedisRecordStore {
    redis_record_store(server.url()).build().await.unwrap()
}

#[tokio::test]
async fn create_gives_a_new_id_on_collision() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = record_store(&server).await;
    let mut first = record(60);
    first.data.insert("owner".into(), "first".into());
    store.create(&mut first).await.unwrap();
    let mut second = record(60);
    second.id = first.id;
    second.data.insert("owner".into(), "second".into());
    store.create(&mut second).await.unwrap();
    assert_ne!(second.id, first.id, "the colliding record got a new id");
    assert_eq!(
        store.load(&first.id).await.unwrap().unwrap().data["owner"],
        "first"
    );
    assert_eq!(
        store.load(&second.id).await.unwrap().unwrap().data["owner"],
        "second"
    );
    assert_near(
        store.expires_in(&first.id.to_string()).await.unwrap(),
        Duration::from_secs(60),
    );
}

#[tokio::test]
async fn save_updates_but_never_brings_back_a_deleted_record() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = record_store(&server).await;
    let mut r = record(60);
    store.create(&mut r).await.unwrap();
    r.data.insert("k".into(), "v".into());
    store.save(&r).await.unwrap();
    assert_eq!(store.load(&r.id).await.unwrap().unwrap().data["k"], "v");
    store.delete(&r.id).await.unwrap();
    store.save(&r).await.unwrap();
    assert!(store.load(&r.id).await.unwrap().is_none());
}

async fn logout(session: tower_sessions::Session) -> &'static str {
    session.delete().await.unwrap();
    "deleted"
}

fn app(store: TieredStore) -> Router {
    Router::new()
        .route("/", get(count))
        .route("/logout", get(logout))
        .layer(
            SessionManagerLayer::new(store)
                .with_secure(false)
                .with_expiry(Expiry::OnInactivity(time::Duration::seconds(600))),
        )
}

const BOUND: Duration = Duration::from_millis(300);

/// The near caches of these tests read the clock on every operation (`precise_clock`): the
/// tests sleep past the bound and expect the copies gone, and a coarse clock is only as fresh
/// as its ticker thread, which a loaded machine may run late.
async fn tiered(server: &Server) -> TieredStore {
    TieredStore::with_near_cache(
        near_cache(BOUND).precise_clock(true).build().unwrap(),
        record_store(server).await,
    )
}

#[tokio::test]
async fn two_servers_share_a_session_through_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a_store, b_store) = (tiered(&server).await, tiered(&server).await);
    let (a, b) = (app(a_store.clone()), app(b_store.clone()));

    let first = Instant::now();
    let (body, cookie) = call(&a, "/", None).await;
    assert_eq!(body, "1");
    let cookie = cookie.expect("a new session sets its cookie");
    // Served from A's near cache (where it stays for the bound: only a look within it must
    // find it there).
    let cached = a_store.near().length();
    if first.elapsed() < BOUND {
        assert_eq!(cached, 1);
    }
    assert_eq!(call(&a, "/", Some(&cookie)).await.0, "2");
    // B has never seen it: it loads it from Redis.
    assert_eq!(call(&b, "/", Some(&cookie)).await.0, "3");
    assert_eq!(call(&b, "/", Some(&cookie)).await.0, "4");
    // A's cached copy may lag for the bound; after it, A sees B's writes.
    tokio::time::sleep(BOUND + Duration::from_millis(100)).await;
    assert_eq!(call(&a, "/", Some(&cookie)).await.0, "5");
    let id: Id = cookie.parse().unwrap();
    let in_redis = a_store.far().get(&id.to_string()).await.unwrap().unwrap();
    assert_eq!(in_redis.data["n"], json!(5));
}

#[tokio::test]
async fn a_destroy_on_one_server_is_seen_by_the_other_within_the_bound() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a_store, b_store) = (tiered(&server).await, tiered(&server).await);
    let (a, b) = (app(a_store.clone()), app(b_store.clone()));
    let (_, cookie) = call(&a, "/", None).await;
    let cookie = cookie.unwrap();
    assert_eq!(call(&b, "/", Some(&cookie)).await.0, "2");
    tokio::time::sleep(BOUND + Duration::from_millis(100)).await;
    assert_eq!(
        call(&a, "/", Some(&cookie)).await.0,
        "3",
        "A holds it in memory"
    );

    let destroyed = Instant::now();
    assert_eq!(call(&b, "/logout", Some(&cookie)).await.0, "deleted");
    // Within the bound A may still serve its copy, but its write (SET XX) cannot bring the
    // session back: Redis stays without it.
    let id: Id = cookie.parse().unwrap();
    let (body, _) = call(&a, "/", Some(&cookie)).await;
    if destroyed.elapsed() < BOUND {
        assert!(body == "4" || body == "1", "stale or fresh, got {body}");
    }
    assert!(a_store.far().get(&id.to_string()).await.unwrap().is_none());
    // Past the bound, both servers see it gone and start afresh.
    tokio::time::sleep(BOUND.saturating_sub(destroyed.elapsed()) + Duration::from_millis(50)).await;
    let (body, fresh) = call(&a, "/", Some(&cookie)).await;
    assert_eq!(body, "1", "A sees the destroy");
    assert_ne!(fresh.unwrap(), cookie);
    assert_eq!(call(&b, "/", Some(&cookie)).await.0, "1", "B too");
}

/// A TCP proxy to `port` that holds every reply for `delay` (requests pass at once, replies
/// keep their order): a Redis that answers slowly.
async fn slow_replies(port: u16, delay: Duration) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let proxy = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await
            else {
                continue;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
            tokio::spawn(async move {
                let mut buf = vec![0; 64 * 1024];
                while let Ok(n) = server_read.read(&mut buf).await {
                    if n == 0
                        || tx
                            .send((Instant::now() + delay, buf[..n].to_vec()))
                            .is_err()
                    {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                while let Some((due, bytes)) = rx.recv().await {
                    tokio::time::sleep_until(due.into()).await;
                    if client_write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    proxy
}

/// A read that was in flight when the session was destroyed does not put it back in the near
/// cache: after `destroy` returns, this server never serves it again. With replies 300 ms late,
/// a read sends its GET, the destroy its DEL once Redis has run the GET; the GET's
/// (pre-destroy) reply comes back first. Failed before: the destroy dropped the near copy before deleting in Redis, and
/// the read cached the destroyed session, served from memory for the whole bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_in_flight_during_a_destroy_does_not_bring_the_session_back() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let proxy = slow_replies(server.port, Duration::from_millis(300)).await;
    // Every reply comes 300 ms late by design: a response timeout well above that (the
    // default second left 700 ms for this process, which also runs the proxy, to be
    // descheduled on a loaded machine).
    let far = RedisStore::builder(format!("redis://127.0.0.1:{proxy}/"))
        .response_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    let store = evanesce::integrations::redis::Tiered::new(far, Duration::from_secs(60)).unwrap();
    store
        .set("sid", &expiring(Duration::from_secs(600)))
        .await
        .unwrap();
    // Not from memory: the read goes to Redis.
    store.near().destroy("sid");
    let gets = || calls(&server).get("get").copied().unwrap_or(0);
    let before = gets();
    let reader = {
        let store = store.clone();
        tokio::spawn(async move { store.get("sid").await })
    };
    // The destroy follows once Redis has run the read's GET (its reply 300 ms late), however
    // late the reader's task starts: a fixed pause let a late GET come after the DEL.
    let started = Instant::now();
    while gets() == before {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the read never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(store.destroy("sid").await.unwrap(), 1);
    assert!(
        reader.await.unwrap().unwrap().is_some(),
        "the read began before the destroy"
    );
    assert!(redis_get(&server, "sess:sid").is_none());
    assert_eq!(store.near().length(), 0, "the destroyed session is cached");
    assert_eq!(store.get("sid").await.unwrap(), None);
}

#[tokio::test]
async fn the_near_cache_keeps_entries_at_most_the_bound() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let far = record_store(&server).await;
    // Read on every operation: see `tiered`.
    let near = near_cache(BOUND).precise_clock(true).build().unwrap();
    let store = TieredStore::with_near_cache(near.clone(), far.clone());
    let mut r = record(3600);
    // The copy lives the bound from its caching, which comes after this: only what is done
    // within the bound from here must find it (a test thread may be descheduled that long).
    let created = Instant::now();
    store.create(&mut r).await.unwrap();
    let left = near.expires_in(&r.id.to_string());
    if created.elapsed() < BOUND {
        assert!(left.is_some(), "not cached");
    }
    if let Some(left) = left {
        assert!(left <= BOUND, "{left:?}");
    }
    // Loads are served from memory: Redis losing the key goes unseen until the bound.
    far.destroy(r.id.to_string()).await.unwrap();
    let loaded = store.load(&r.id).await.unwrap();
    if created.elapsed() < BOUND {
        assert!(loaded.is_some(), "not served from memory");
    }
    tokio::time::sleep(BOUND + Duration::from_millis(50)).await;
    assert!(store.load(&r.id).await.unwrap().is_none());
    // A record ending before the bound leaves the near cache with it.
    let made = Instant::now();
    let mut short = record(0);
    short.expiry_date += time::Duration::milliseconds(100);
    store.create(&mut short).await.unwrap();
    match near.expires_in(&short.id.to_string()) {
        Some(left) => assert!(left <= Duration::from_millis(100), "{left:?}"),
        None => assert!(
            made.elapsed() >= Duration::from_millis(100),
            "a record with 100 ms left was not cached"
        ),
    }
    // A zero bound caches nothing.
    let uncached = TieredStore::new(far, Duration::ZERO).unwrap();
    let mut r = record(60);
    uncached.create(&mut r).await.unwrap();
    assert_eq!(uncached.near().length(), 0);
    assert!(uncached.load(&r.id).await.unwrap().is_some());
}

#[tokio::test]
async fn tiered_touch_renews_redis_and_drops_the_near_copy() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = tiered(&server).await;
    let mut r = record(60);
    r.data.insert("k".into(), "v".into());
    store.create(&mut r).await.unwrap();
    assert_eq!(store.near().length(), 1);
    let mut renewed = r.clone();
    renewed.expiry_date += time::Duration::hours(1);
    renewed.data.clear();
    assert!(store.touch(&r.id.to_string(), &renewed).await.unwrap());
    assert_near(
        store.far().expires_in(&r.id.to_string()).await.unwrap(),
        Duration::from_secs(3660),
    );
    assert_eq!(store.near().length(), 0, "the near copy is dropped");
    let loaded = store.load(&r.id).await.unwrap().unwrap();
    assert_eq!(loaded.data["k"], "v", "data kept");
    assert_eq!(loaded.expiry_date, renewed.expiry_date);
    store.far().destroy(r.id.to_string()).await.unwrap();
    assert!(
        !store.touch(&r.id.to_string(), &renewed).await.unwrap(),
        "never resurrects"
    );
    assert!(store.load(&r.id).await.unwrap().is_none());
}

// ---- bring your own connection ----

#[tokio::test]
async fn a_store_over_a_connection_manager_of_your_own() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let manager = redis::aio::ConnectionManager::new(redis::Client::open(server.url()).unwrap())
        .await
        .unwrap();
    redis_support::behaviour_suite("", || RedisStore::builder(manager.clone())).await;
    let store = RedisStore::builder(manager.clone()).build().await.unwrap();
    assert_eq!(store.url(), "(a ConnectionManager given to the builder)");
    // Its errors are bounded by the store's deadline all the same. (The build again if it
    // times out: see `until_ok`.)
    let store = until_ok(|| {
        RedisStore::builder(manager.clone())
            .response_timeout(Duration::from_millis(300))
            .connection_timeout(Duration::from_millis(300))
            .build()
    })
    .await;
    server.signal("STOP");
    let started = Instant::now();
    assert!(matches!(store.get("a").await, Err(Error::Backend(_))));
    assert!(started.elapsed() < Duration::from_secs(2));
    server.signal("CONT");
}

// ---- fewer writes: touch_after, disable_touch, disable_ttl ----

/// Calls per command since the server started (`INFO commandstats`; commands run by a
/// script count too).
fn calls(server: &Server) -> std::collections::HashMap<String, u64> {
    let info: String = server.query(redis::cmd("INFO").arg("commandstats"));
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// How many more times `command` ran in `after` than in `before`.
fn more(
    before: &std::collections::HashMap<String, u64>,
    after: &std::collections::HashMap<String, u64>,
    command: &str,
) -> u64 {
    after.get(command).copied().unwrap_or(0) - before.get(command).copied().unwrap_or(0)
}

/// Slack for a store's memory of its writes and renewals (`touch_after`): it runs on the
/// crate's coarse clock, which is as fresh as its ticker thread (a loaded machine may leave
/// that thread unscheduled for a few hundred milliseconds, and a write remembered then is
/// forgotten that much earlier). The `touch_after` tests use periods of a second so that
/// what they check within a period is checked.
const MEMORY_SLACK: Duration = Duration::from_millis(500);

/// Whether a write or renewal sent after `since` is still remembered, now, by a store with
/// `touch_after(period)`. The tests check that a store skips a renewal only then: a test
/// thread descheduled for the period (a loaded machine) makes the store send it, rightly.
fn remembered(since: Instant, period: Duration) -> bool {
    since.elapsed() + MEMORY_SLACK < period
}

/// Touches `id` with a cookie of `lifetime` until Redis has that lifetime for it: after the
/// `touch_after` period a touch renews, at once or, if the coarse clock of the store's memory
/// lags on a loaded machine, a moment later. Returns when the renewing touch was sent.
async fn touch_until_renewed(store: &RedisStore, id: &str, lifetime: Duration) -> Instant {
    let started = Instant::now();
    loop {
        let touching = Instant::now();
        assert!(store.touch(id, &expiring(lifetime)).await.unwrap());
        let left = store.expires_in(id).await.unwrap().expect("a lifetime");
        if left + Duration::from_secs(2) >= lifetime {
            return touching;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no touch renewed {id} after the period ({left:?} left)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn touch_after_renews_at_most_once_per_period() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let period = Duration::from_secs(1);
    let store = RedisStore::builder(server.url())
        .touch_after(period)
        .build()
        .await
        .unwrap();
    let minute = Duration::from_secs(60);
    let written = Instant::now();
    store.set("sid", &expiring(minute)).await.unwrap();
    let before = calls(&server);
    // Written just now: touches within the period send nothing, and say the session is
    // there.
    for _ in 0..5 {
        assert!(
            store
                .touch("sid", &expiring(Duration::from_secs(600)))
                .await
                .unwrap()
        );
        assert!(
            store
                .renew("sid", &expiring(Duration::from_secs(600)))
                .await
                .unwrap()
        );
    }
    let after = calls(&server);
    let left = store.expires_in("sid").await.unwrap();
    // (If they all came within the period: see `remembered`.)
    if remembered(written, period) {
        assert_eq!(more(&before, &after, "get"), 0);
        assert_eq!(more(&before, &after, "evalsha"), 0);
        assert_eq!(more(&before, &after, "pexpire"), 0);
        assert_near(left, minute);
    }
    // After the period, a touch renews (and the next ones, within the period, do not).
    tokio::time::sleep(period + Duration::from_millis(50)).await;
    let renewed = touch_until_renewed(&store, "sid", Duration::from_secs(700)).await;
    assert!(
        store
            .touch("sid", &expiring(Duration::from_secs(900)))
            .await
            .unwrap()
    );
    let left = store.expires_in("sid").await.unwrap();
    if remembered(renewed, period) {
        assert_near(left, Duration::from_secs(700));
    }
    // A write is never skipped, and a changed session is written at once.
    let mut changed = expiring(Duration::from_secs(900));
    changed.insert("views", 2);
    store.set("sid", &changed).await.unwrap();
    assert_eq!(store.get("sid").await.unwrap(), Some(changed));
    // A destroyed session is not remembered: touch asks Redis, and says it is gone.
    store.destroy("sid").await.unwrap();
    assert!(!store.touch("sid", &expiring(minute)).await.unwrap());
    // A session this store never wrote is touched (and not resurrected when missing).
    assert!(!store.touch("never-set", &expiring(minute)).await.unwrap());
    assert!(!store.renew("never-set", &expiring(minute)).await.unwrap());
    assert_eq!(store.get("never-set").await.unwrap(), None);
}

#[tokio::test]
async fn disable_touch_and_disable_ttl() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let minute = Duration::from_secs(60);
    let no_touch = RedisStore::builder(server.url())
        .prefix("nt:")
        .disable_touch(true)
        .build()
        .await
        .unwrap();
    no_touch.set("sid", &expiring(minute)).await.unwrap();
    let before = calls(&server);
    assert!(
        no_touch
            .touch("sid", &expiring(Duration::from_secs(600)))
            .await
            .unwrap()
    );
    assert!(
        no_touch
            .renew("sid", &expiring(Duration::from_secs(600)))
            .await
            .unwrap()
    );
    assert_eq!(calls(&server).get("evalsha"), before.get("evalsha"));
    assert_near(no_touch.expires_in("sid").await.unwrap(), minute);

    let no_ttl = RedisStore::builder(server.url())
        .prefix("nl:")
        .disable_ttl(true)
        .build()
        .await
        .unwrap();
    no_ttl.set("sid", &expiring(minute)).await.unwrap();
    assert_eq!(
        no_ttl.expires_in("sid").await.unwrap(),
        Some(Duration::MAX),
        "no expiry in Redis"
    );
    assert!(no_ttl.touch("sid", &expiring(minute)).await.unwrap());
    assert_eq!(no_ttl.expires_in("sid").await.unwrap(), Some(Duration::MAX));
    assert!(
        no_ttl
            .set_if_present("sid", &expiring(minute))
            .await
            .unwrap()
    );
    assert_eq!(no_ttl.expires_in("sid").await.unwrap(), Some(Duration::MAX));
    // A lifetime of zero still deletes.
    let past = Session::with_cookie(Cookie::new().with_expires(SystemTime::UNIX_EPOCH));
    no_ttl.set("sid", &past).await.unwrap();
    assert_eq!(no_ttl.get("sid").await.unwrap(), None);
}

#[tokio::test]
async fn renew_moves_only_the_expiry_and_never_resurrects() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = store(&server).await;
    let mut s = expiring(Duration::from_secs(60));
    s.insert("views", 3);
    store.set("sid", &s).await.unwrap();
    let bytes = redis_get(&server, "sess:sid");
    let before = calls(&server);
    assert!(
        store
            .renew("sid", &expiring(Duration::from_secs(600)))
            .await
            .unwrap()
    );
    let after = calls(&server);
    assert_eq!(more(&before, &after, "pexpire"), 1, "one PEXPIRE");
    assert_eq!(more(&before, &after, "get"), 0, "nothing read");
    assert_eq!(redis_get(&server, "sess:sid"), bytes, "nothing rewritten");
    assert_near(
        store.expires_in("sid").await.unwrap(),
        Duration::from_secs(600),
    );
    store.destroy("sid").await.unwrap();
    assert!(!store.renew("sid", &s).await.unwrap());
    assert_eq!(redis_get(&server, "sess:sid"), None);
    // A zero lifetime ends it.
    store.set("sid", &s).await.unwrap();
    let past = Session::with_cookie(Cookie::new().with_expires(SystemTime::UNIX_EPOCH));
    assert!(store.renew("sid", &past).await.unwrap());
    assert_eq!(store.get("sid").await.unwrap(), None);
}

fn always_save_app<S>(store: S) -> Router
where
    S: tower_sessions::SessionStore + Clone,
{
    Router::new()
        .route("/", get(count))
        .route("/peek", get(peek))
        .layer(
            SessionManagerLayer::new(store)
                .with_secure(false)
                .with_always_save(true)
                .with_expiry(Expiry::OnInactivity(time::Duration::seconds(600))),
        )
}

/// Reads the session without changing it.
async fn peek(session: tower_sessions::Session) -> String {
    let n: u64 = session.get("n").await.unwrap().unwrap_or(0);
    n.to_string()
}

#[tokio::test]
async fn tower_sessions_always_save_writes_unchanged_sessions_once_per_period() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let period = Duration::from_secs(1);
    let lazy = redis_record_store(server.url())
        .touch_after(period)
        .build()
        .await
        .unwrap();
    let eager = record_store(&server).await;
    for (store, unchanged_sets) in [(eager, 5), (lazy, 0)] {
        let app = always_save_app(store);
        let created = Instant::now();
        let (_, cookie) = call(&app, "/", None).await;
        let cookie = cookie.unwrap();
        let before = calls(&server);
        for _ in 0..5 {
            assert_eq!(call(&app, "/peek", Some(&cookie)).await.0, "1");
        }
        let after = calls(&server);
        // (The lazy store skips them if they came within the period: see `remembered`.)
        if unchanged_sets > 0 || remembered(created, period) {
            assert_eq!(more(&before, &after, "set"), unchanged_sets);
        }
        assert_eq!(more(&before, &after, "get"), 5, "each request loads");
        // A change is written at once.
        assert_eq!(call(&app, "/", Some(&cookie)).await.0, "2");
        assert_eq!(more(&after, &calls(&server), "set"), 1);
    }
    // After the period the unchanged session is written (renewed) once more.
    let store = redis_record_store(server.url())
        .prefix("p:")
        .touch_after(period)
        .build()
        .await
        .unwrap();
    let app = always_save_app(store.clone());
    let (_, cookie) = call(&app, "/", None).await;
    let cookie = cookie.unwrap();
    tokio::time::sleep(period + Duration::from_millis(50)).await;
    // A request writes it (the store's memory reads the precise clock, so it has forgotten
    // the write once the period is over) ...
    let before = calls(&server);
    let renewed = Instant::now();
    call(&app, "/peek", Some(&cookie)).await;
    assert_eq!(
        more(&before, &calls(&server), "set"),
        1,
        "the request after the period wrote the session once"
    );
    // ... and the next one, within the period, does not.
    let before = calls(&server);
    call(&app, "/peek", Some(&cookie)).await;
    let sets = more(&before, &calls(&server), "set");
    if remembered(renewed, period) {
        assert_eq!(sets, 0);
    }
    let id: Id = cookie.parse().unwrap();
    assert_near(
        store.expires_in(&id.to_string()).await.unwrap(),
        Duration::from_secs(600),
    );
}

#[tokio::test]
async fn the_near_cache_honours_touch_after() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let far = redis_record_store(server.url())
        .touch_after(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let tiered = TieredStore::new(far, Duration::from_secs(60)).unwrap();
    let app = always_save_app(tiered.clone());
    let (_, cookie) = call(&app, "/", None).await;
    let cookie = cookie.unwrap();
    let before = calls(&server);
    for _ in 0..10 {
        assert_eq!(call(&app, "/peek", Some(&cookie)).await.0, "1");
    }
    let after = calls(&server);
    let total: u64 = after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(name, n)| n - before.get(name).copied().unwrap_or(0))
        .sum();
    assert_eq!(
        total, 0,
        "read-mostly requests send nothing to Redis: {after:?}"
    );
    // A touch skipped by touch_after keeps the near copy.
    let id: Id = cookie.parse().unwrap();
    let record = tiered.near().get(&id.to_string()).unwrap().unwrap();
    assert!(tiered.touch(&id.to_string(), &record).await.unwrap());
    assert_eq!(tiered.near().length(), 1);
}

// ---- serving reads from the near cache while Redis is unreachable ----

#[tokio::test]
async fn stale_reads_while_redis_is_unreachable_only_when_asked_for() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let bound = Duration::from_millis(200);
    let window = Duration::from_secs(2);
    let url = server.url();
    // Redis is killed, never frozen, here: its failures come at once whatever the timeouts,
    // and timeouts of 300 ms made a read fail (and be served stale while Redis was up) when
    // the server or this thread was descheduled that long on a loaded machine.
    let far = || async {
        RedisStore::builder(url.as_str())
            .response_timeout(Duration::from_secs(2))
            .connection_timeout(Duration::from_secs(2))
            .build()
            .await
            .unwrap()
    };
    // The near caches' time is a mock, moved past the bound and the window by the test: on
    // real time, a coarse clock that lags on a loaded machine (its ticker thread run late)
    // served a copy as fresh after the sleep past the bound.
    let (clock, mock) = quanta::Clock::mock();
    let stale = evanesce::integrations::redis::Tiered::builder(far().await)
        .bound(bound)
        .serve_stale_for(window)
        .clock(clock.clone())
        .build()
        .unwrap();
    let strict = evanesce::integrations::redis::Tiered::builder(far().await)
        .bound(bound)
        .clock(clock)
        .build()
        .unwrap();
    let mut s = expiring(Duration::from_secs(600));
    s.insert("user", "ada");
    for store in [&stale, &strict] {
        store.set("sid", &s).await.unwrap();
        assert_eq!(store.get("sid").await.unwrap(), Some(s.clone()));
    }
    // Redis up: a fresh copy is served from memory, a copy past the bound is read again.
    mock.increment(bound + Duration::from_millis(50));
    assert_eq!(stale.get("sid").await.unwrap(), Some(s.clone()));
    assert_eq!(stale.stale_reads(), 0);

    server.kill();
    mock.increment(bound + Duration::from_millis(50));
    // Past the bound, Redis down: the strict store fails, the other serves its copy.
    assert!(matches!(strict.get("sid").await, Err(Error::Backend(_))));
    assert_eq!(stale.get("sid").await.unwrap(), Some(s.clone()));
    assert_eq!(stale.stale_reads(), 1);
    // Never a session it does not hold, and writes still fail.
    assert!(matches!(stale.get("other").await, Err(Error::Backend(_))));
    assert!(matches!(stale.set("sid", &s).await, Err(Error::Backend(_))));
    // A failed write dropped the copy (its outcome is unknown): no more stale reads of it.
    assert!(matches!(stale.get("sid").await, Err(Error::Backend(_))));

    // Past bound + window, the copy is gone too.
    server.restart();
    let started = Instant::now();
    while stale.set("sid", &s).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no reconnection"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill();
    mock.increment(bound + window + Duration::from_millis(100));
    assert!(matches!(stale.get("sid").await, Err(Error::Backend(_))));
}

// ---- actix-web over Redis ----

mod actix {
    use super::*;
    use actix_session::config::{PersistentSession, TtlExtensionPolicy};
    use actix_session::storage::SessionStore as _;
    use actix_web::cookie::{Cookie as ActixCookie, Key};
    use actix_web::{App, HttpResponse, test, web};
    use evanesce::integrations::redis::{RedisStateStore, TieredStateStore, redis_state_store};

    async fn login(session: actix_session::Session) -> HttpResponse {
        session.insert("user", "alice").unwrap();
        HttpResponse::Ok().body("logged in")
    }

    async fn me(session: actix_session::Session) -> HttpResponse {
        let user: Option<String> = session.get("user").unwrap();
        HttpResponse::Ok().body(user.unwrap_or_else(|| "anonymous".into()))
    }

    async fn renew(session: actix_session::Session) -> HttpResponse {
        session.renew();
        HttpResponse::Ok().body("renewed")
    }

    async fn logout(session: actix_session::Session) -> HttpResponse {
        session.purge();
        HttpResponse::Ok().body("bye")
    }

    macro_rules! app {
        ($store:expr, $key:expr) => {
            test::init_service(
                App::new()
                    .wrap(
                        actix_session::SessionMiddleware::builder($store.clone(), $key.clone())
                            .cookie_secure(false)
                            .session_lifecycle(
                                PersistentSession::default()
                                    .session_ttl(actix_web::cookie::time::Duration::seconds(60))
                                    .session_ttl_extension_policy(
                                        TtlExtensionPolicy::OnEveryRequest,
                                    ),
                            )
                            .build(),
                    )
                    .route("/login", web::get().to(login))
                    .route("/me", web::get().to(me))
                    .route("/renew", web::get().to(renew))
                    .route("/logout", web::get().to(logout)),
            )
            .await
        };
    }

    macro_rules! call {
        ($app:expr, $path:expr, $cookie:expr) => {{
            let mut request = test::TestRequest::get().uri($path);
            if let Some(cookie) = $cookie {
                request = request.cookie(ActixCookie::clone(cookie));
            }
            let response = test::call_service(&$app, request.to_request()).await;
            assert!(response.status().is_success(), "{}", response.status());
            let set = response
                .response()
                .cookies()
                .find(|c| c.name() == "id")
                .map(|c| c.into_owned());
            let body = test::read_body(response).await;
            (String::from_utf8(body.to_vec()).unwrap(), set)
        }};
    }

    #[actix_web::test]
    async fn login_read_back_renew_and_purge_over_redis_and_two_tiers() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let redis: RedisStateStore = redis_state_store(server.url()).build().await.unwrap();
        let tiered = TieredStateStore::new(
            redis_state_store(server.url())
                .prefix("t:")
                .build()
                .await
                .unwrap(),
            Duration::from_secs(1),
        )
        .unwrap();
        let key = Key::generate();
        macro_rules! scenario {
            ($store:expr, $far:expr) => {{
                let app = app!($store, key);
                let (_, cookie) = call!(app, "/login", None::<&ActixCookie>);
                let cookie = cookie.expect("login sets the session cookie");
                assert_eq!($far.length().await.unwrap(), 1);
                let old = $far.ids().await.unwrap();
                assert_eq!(old[0].len(), 64, "a 64-character random key");
                assert_near(
                    $far.expires_in(&old[0]).await.unwrap(),
                    Duration::from_secs(60),
                );
                assert_eq!(call!(app, "/me", Some(&cookie)).0, "alice");
                let (_, renewed) = call!(app, "/renew", Some(&cookie));
                let renewed = renewed.expect("renew sets a new cookie");
                assert_eq!(call!(app, "/me", Some(&renewed)).0, "alice", "state moved");
                assert_eq!($far.length().await.unwrap(), 1, "the old key was deleted");
                assert_ne!($far.ids().await.unwrap(), old);
                let (_, removal) = call!(app, "/logout", Some(&renewed));
                assert!(removal.is_some(), "purge expires the cookie");
                assert_eq!($far.length().await.unwrap(), 0);
                assert_eq!(call!(app, "/me", Some(&renewed)).0, "anonymous");
            }};
        }
        scenario!(redis, redis);
        scenario!(tiered, tiered.far());
    }

    #[actix_web::test]
    async fn the_store_trait_directly_with_touch_after() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let period = Duration::from_secs(1);
        let store = redis_state_store(server.url())
            .touch_after(period)
            .build()
            .await
            .unwrap();
        let ttl = actix_web::cookie::time::Duration::seconds(10);
        let mut state = std::collections::HashMap::new();
        state.insert("k".to_string(), "\"v\"".to_string());
        let saved = Instant::now();
        let key = store.save(state.clone(), &ttl).await.unwrap();
        assert_eq!(store.load(&key).await.unwrap(), Some(state.clone()));
        // update_ttl within touch_after of the write: nothing sent (see `remembered`).
        let before = calls(&server);
        let long = actix_web::cookie::time::Duration::seconds(100);
        store.update_ttl(&key, &long).await.unwrap();
        let sent = more(&before, &calls(&server), "pexpire");
        let left = store.expires_in(key.as_ref()).await.unwrap();
        if remembered(saved, period) {
            assert_eq!(sent, 0);
            assert_near(left, Duration::from_secs(10));
        }
        // After it: one PEXPIRE (the store's memory reads the precise clock), and none for the
        // next update within the period.
        tokio::time::sleep(period + Duration::from_millis(50)).await;
        let before = calls(&server);
        let renewed = Instant::now();
        store.update_ttl(&key, &long).await.unwrap();
        assert_eq!(
            more(&before, &calls(&server), "pexpire"),
            1,
            "the update after the period renewed the key once"
        );
        let before = calls(&server);
        store.update_ttl(&key, &long).await.unwrap();
        let sent = more(&before, &calls(&server), "pexpire");
        if remembered(renewed, period) {
            assert_eq!(sent, 0);
        }
        assert_near(
            store.expires_in(key.as_ref()).await.unwrap(),
            Duration::from_secs(100),
        );
        assert_eq!(store.load(&key).await.unwrap(), Some(state.clone()));
        // update of a live key keeps it; a gone one (a logout while a request held the
        // session) stays gone: nothing stored, under the old key or a new one.
        state.insert("k".into(), "\"w\"".into());
        let same = store
            .update(String::from(key).try_into().unwrap(), state.clone(), &ttl)
            .await
            .unwrap();
        assert_eq!(store.load(&same).await.unwrap(), Some(state.clone()));
        store.delete(&same).await.unwrap();
        let old: String = same.into();
        let after = store
            .update(old.clone().try_into().unwrap(), state, &ttl)
            .await
            .unwrap();
        assert_eq!(
            AsRef::<str>::as_ref(&after),
            old,
            "the dead key is returned"
        );
        assert_eq!(store.load(&after).await.unwrap(), None, "not brought back");
        assert_eq!(
            store.length().await.unwrap(),
            0,
            "nor saved under a new key"
        );
        let unknown = "x".repeat(64).try_into().unwrap();
        assert_eq!(store.load(&unknown).await.unwrap(), None);
    }
}
