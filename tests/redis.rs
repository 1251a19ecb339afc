//! `RedisStore` and the two-tier store against a real `redis-server`: each test starts its own
//! server on a free loopback port (in a temporary directory, no persistence) and kills it at
//! the end. Without `redis-server` on PATH each test says so on stderr and passes, so that
//! `cargo test` works on a machine without Redis; with `EVANESCE_REDIS_TESTS=required` (which
//! `.ci/run` sets, after installing the server) a missing server fails every test.

mod common;

use common::{call, count};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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

/// A `redis-server` of our own, killed (and its directory removed) on drop.
struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// More `redis-server` arguments (`--requirepass ...`).
    extra: Vec<String>,
}

impl RedisServer {
    /// A running server, or `None` if there is no `redis-server` on PATH and the tests are
    /// not required (see the module documentation).
    fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start), with more `redis-server` arguments.
    fn start_with(extra: &[&str]) -> Option<Self> {
        let required = std::env::var("EVANESCE_REDIS_TESTS").as_deref() == Ok("required");
        let present = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !present && !required {
            eprintln!(
                "SKIPPED: no `redis-server` on PATH (Debian: apt-get install redis-server); \
                 set EVANESCE_REDIS_TESTS=required to make this a failure"
            );
            return None;
        }
        let port = {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free port");
            listener.local_addr().unwrap().port()
        };
        let dir =
            std::env::temp_dir().join(format!("evanesce-redis-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            child: None,
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        Some(server)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `redis-server` ({e}): the Redis tests need a real server on \
                     PATH (Debian: apt-get install redis-server)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the server answers `PING` (with `+PONG`, or `-NOAUTH` when it wants a
    /// password).
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && (&reply == b"+PONG\r\n" || reply.starts_with(b"-NOAUTH"))
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: nothing is persisted).
    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sends the server a signal (`STOP`, `CONT`).
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// A plain client, for looking behind the store's back.
    fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---- helpers ----

fn session(value: Value) -> Session {
    serde_json::from_value(value).expect("a JSON object")
}

fn expiring(ttl: Duration) -> Session {
    Session::with_cookie(Cookie::expiring_in(ttl, SystemTime::now()))
}

async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::builder(server.url()).build().await.unwrap()
}

fn redis_get(server: &RedisServer, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut server.client())
        .unwrap()
}

fn redis_set(server: &RedisServer, key: &str, value: &[u8]) {
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

async fn store_with_prefix(server: &RedisServer, prefix: &str) -> RedisStore {
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
    let short = Session::with_cookie(Cookie::new().with_max_age_field(Duration::from_millis(300)));
    store.set("short", &short).await.unwrap();
    store
        .set("long", &expiring(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(store.get("short").await.unwrap().is_some());
    let started = Instant::now();
    while store.length().await.unwrap() > 1 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "Redis did not expire the session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(200));
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
    let store = RedisStore::builder(server.url())
        .response_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let s = expiring(Duration::from_secs(60));
    store.set("sid", &s).await.unwrap();
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

async fn record_store(server: &RedisServer) -> RedisRecordStore {
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

async fn tiered(server: &RedisServer) -> TieredStore {
    TieredStore::new(record_store(server).await, BOUND).unwrap()
}

#[tokio::test]
async fn two_servers_share_a_session_through_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a_store, b_store) = (tiered(&server).await, tiered(&server).await);
    let (a, b) = (app(a_store.clone()), app(b_store.clone()));

    let (body, cookie) = call(&a, "/", None).await;
    assert_eq!(body, "1");
    let cookie = cookie.expect("a new session sets its cookie");
    // Served from A's near cache.
    assert_eq!(a_store.near().length(), 1);
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

#[tokio::test]
async fn the_near_cache_keeps_entries_at_most_the_bound() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let far = record_store(&server).await;
    let near = near_cache(BOUND).build().unwrap();
    let store = TieredStore::with_near_cache(near.clone(), far.clone());
    let mut r = record(3600);
    store.create(&mut r).await.unwrap();
    let left = near.expires_in(&r.id.to_string()).expect("cached");
    assert!(left <= BOUND, "{left:?}");
    // Loads are served from memory: Redis losing the key goes unseen until the bound.
    far.destroy(r.id.to_string()).await.unwrap();
    assert!(store.load(&r.id).await.unwrap().is_some());
    tokio::time::sleep(BOUND + Duration::from_millis(50)).await;
    assert!(store.load(&r.id).await.unwrap().is_none());
    // A record ending before the bound leaves the near cache with it.
    let mut short = record(0);
    short.expiry_date += time::Duration::milliseconds(100);
    store.create(&mut short).await.unwrap();
    assert!(near.expires_in(&short.id.to_string()).unwrap() <= Duration::from_millis(100));
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
    assert!(store.touch(&renewed).await.unwrap());
    assert_near(
        store.far().expires_in(&r.id.to_string()).await.unwrap(),
        Duration::from_secs(3660),
    );
    assert_eq!(store.near().length(), 0, "the near copy is dropped");
    let loaded = store.load(&r.id).await.unwrap().unwrap();
    assert_eq!(loaded.data["k"], "v", "data kept");
    assert_eq!(loaded.expiry_date, renewed.expiry_date);
    store.far().destroy(r.id.to_string()).await.unwrap();
    assert!(!store.touch(&renewed).await.unwrap(), "never resurrects");
    assert!(store.load(&r.id).await.unwrap().is_none());
}
