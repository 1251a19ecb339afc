//! The store behind tower-sessions in an axum app, driven through real HTTP handling
//! (`tower::ServiceExt::oneshot`): the cookie carries the session, expiry after inactivity,
//! `cycle_id`, `flush`, `delete`, tampered and unknown cookies, collisions in `create`.

mod common;

use common::{call, count};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use evanesce::integrations::tower_sessions::{RecordCache, RecordStore, record_store};
use quanta::Clock;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{ExpiredDeletion, SessionStore};
use tower_sessions::{CachingSessionStore, Expiry, Session, SessionManagerLayer};

const INACTIVITY: i64 = 600;

async fn cycle(session: Session) -> &'static str {
    session.cycle_id().await.unwrap();
    "cycled"
}

async fn flush(session: Session) -> &'static str {
    session.flush().await.unwrap();
    "flushed"
}

async fn delete(session: Session) -> &'static str {
    session.delete().await.unwrap();
    "deleted"
}

fn app(store: RecordStore) -> Router {
    Router::new()
        .route("/", get(count))
        .route("/cycle", get(cycle))
        .route("/flush", get(flush))
        .route("/delete", get(delete))
        .layer(
            SessionManagerLayer::new(store)
                .with_secure(false)
                .with_expiry(Expiry::OnInactivity(time::Duration::seconds(INACTIVITY))),
        )
}

fn mock_store() -> (RecordStore, std::sync::Arc<quanta::Mock>) {
    let (clock, mock) = Clock::mock();
    (record_store().clock(clock).build().unwrap(), mock)
}

#[tokio::test]
async fn a_counter_survives_requests_through_the_cookie() {
    let (store, _) = mock_store();
    let app = app(store.clone());
    let (body, cookie) = call(&app, "/", None).await;
    assert_eq!(body, "1");
    let cookie = cookie.expect("a new session sets its cookie");
    for expected in 2..=5 {
        let (body, _) = call(&app, "/", Some(&cookie)).await;
        assert_eq!(body, expected.to_string());
    }
    assert_eq!(store.length(), 1);
    let id: Id = cookie.parse().unwrap();
    let record = store.get(&id.to_string()).unwrap().unwrap();
    assert_eq!(record.data["n"], serde_json::json!(5));
}

/// tower-sessions stamps records with the real wall clock, so this one test runs on real
/// time (the others use a mock clock): a 1 s inactivity period. The store reads the clock on
/// every operation (`precise_clock`): a coarse clock is only as fresh as its ticker thread,
/// which a loaded machine may leave unscheduled for a while. A visit must find the session
/// alive only when it ended less than the period after the start of the visit that renewed
/// it (measured around both); an attempt the machine was too slow for (a test thread
/// descheduled for 400 ms) proves nothing and is made again.
#[tokio::test]
async fn a_session_expires_after_inactivity_and_is_reclaimed() {
    const PERIOD: Duration = Duration::from_secs(1);
    const ATTEMPTS: u32 = 10;
    for attempt in 1..=ATTEMPTS {
        let store = record_store().precise_clock(true).build().unwrap();
        let app = Router::new().route("/", get(count)).layer(
            SessionManagerLayer::new(store.clone())
                .with_secure(false)
                .with_expiry(Expiry::OnInactivity(time::Duration::seconds(1))),
        );
        let first = Instant::now();
        let (_, cookie) = call(&app, "/", None).await;
        let cookie = cookie.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let second = Instant::now();
        let (body, _) = call(&app, "/", Some(&cookie)).await;
        if first.elapsed() >= PERIOD {
            eprintln!("attempt {attempt}: the second visit came too late ({body})");
            continue;
        }
        assert_eq!(body, "2", "still active");
        // 1.2 s after the first visit: alive only because the second visit renewed it.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let (body, _) = call(&app, "/", Some(&cookie)).await;
        if second.elapsed() >= PERIOD {
            eprintln!("attempt {attempt}: the third visit came too late ({body})");
            continue;
        }
        assert_eq!(body, "3", "renewed by activity");
        // A full period of inactivity ends it; the engine reclaims it without a read.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        store.prune();
        assert_eq!(store.length(), 0);
        assert_eq!(store.stats().expirations, 1);
        let (body, new_cookie) = call(&app, "/", Some(&cookie)).await;
        assert_eq!(body, "1", "a fresh session");
        assert_ne!(new_cookie.unwrap(), cookie);
        return;
    }
    panic!("no attempt in {ATTEMPTS} had its visits less than {PERIOD:?} apart");
}

#[tokio::test]
async fn cycle_id_moves_the_session_to_a_new_id() {
    let (store, _) = mock_store();
    let app = app(store.clone());
    let (_, cookie) = call(&app, "/", None).await;
    let cookie = cookie.unwrap();
    call(&app, "/", Some(&cookie)).await;
    let (_, cycled) = call(&app, "/cycle", Some(&cookie)).await;
    let cycled = cycled.expect("a new cookie");
    assert_ne!(cycled, cookie);
    assert_eq!(call(&app, "/", Some(&cycled)).await.0, "3", "data moved");
    assert_eq!(
        call(&app, "/", Some(&cookie)).await.0,
        "1",
        "old id is gone"
    );
    let old: Id = cookie.parse().unwrap();
    assert_eq!(store.load(&old).await.unwrap().map(|r| r.id), None);
}

#[tokio::test]
async fn flush_and_delete_remove_the_session() {
    let (store, _) = mock_store();
    let app = app(store.clone());
    for path in ["/flush", "/delete"] {
        let (_, cookie) = call(&app, "/", None).await;
        let cookie = cookie.unwrap();
        assert_eq!(call(&app, "/", Some(&cookie)).await.0, "2");
        call(&app, path, Some(&cookie)).await;
        assert_eq!(call(&app, "/", Some(&cookie)).await.0, "1", "{path}");
    }
}

#[tokio::test]
async fn a_tampered_or_unknown_cookie_starts_a_fresh_session() {
    let (store, _) = mock_store();
    let app = app(store.clone());
    let (_, cookie) = call(&app, "/", None).await;
    let cookie = cookie.unwrap();
    assert_eq!(call(&app, "/", Some(&cookie)).await.0, "2");
    for bad in [
        "not-base64!!",
        "",
        "AAAA",
        &Id::default().to_string(),
        &cookie[1..],
    ] {
        let (body, fresh) = call(&app, "/", Some(bad)).await;
        assert_eq!(body, "1", "cookie {bad:?}");
        assert!(fresh.is_some());
    }
    assert_eq!(
        call(&app, "/", Some(&cookie)).await.0,
        "3",
        "the real session is intact"
    );
}

fn record(expires_in: i64) -> Record {
    Record {
        id: Id::default(),
        data: Default::default(),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::seconds(expires_in),
    }
}

#[tokio::test]
async fn create_gives_a_new_id_on_collision() {
    let store = record_store().build().unwrap();
    let mut first = record(60);
    first.data.insert("owner".into(), "first".into());
    store.create(&mut first).await.unwrap();
    let mut second = record(60);
    second.id = first.id;
    second.data.insert("owner".into(), "second".into());
    store.create(&mut second).await.unwrap();
    assert_ne!(
        second.id, first.id,
        "the colliding record was given a new id"
    );
    assert_eq!(
        store.load(&first.id).await.unwrap().unwrap().data["owner"],
        "first"
    );
    assert_eq!(
        store.load(&second.id).await.unwrap().unwrap().data["owner"],
        "second"
    );
}

#[tokio::test]
async fn expired_records_are_not_loaded_and_delete_expired_prunes() {
    let (store, mock) = mock_store();
    let mut short = record(5);
    store.create(&mut short).await.unwrap();
    let mut past = record(-5);
    store.create(&mut past).await.unwrap();
    assert!(
        store.load(&past.id).await.unwrap().is_none(),
        "born expired"
    );
    assert!(store.load(&short.id).await.unwrap().is_some());
    mock.increment(Duration::from_secs(6));
    assert!(store.load(&short.id).await.unwrap().is_none());
    store.delete_expired().await.unwrap();
    assert_eq!(store.length(), 0);
}

#[tokio::test]
async fn as_the_cache_half_of_a_caching_session_store() {
    let cache = record_store().max(100).build().unwrap();
    let backend = tower_sessions::MemoryStore::default();
    let caching = CachingSessionStore::new(RecordCache::new(cache.clone()), backend.clone());
    let mut r = record(60);
    r.data.insert("k".into(), "v".into());
    caching.create(&mut r).await.unwrap();
    assert_eq!(cache.length(), 1);
    // Evicted from the cache (here: cleared), the session is loaded from the backend and
    // the cache is filled again.
    cache.clear();
    assert_eq!(caching.load(&r.id).await.unwrap().unwrap().data["k"], "v");
    assert_eq!(cache.length(), 1);
    caching.delete(&r.id).await.unwrap();
    assert_eq!(cache.length(), 0);
    assert!(backend.load(&r.id).await.unwrap().is_none());
}

#[tokio::test]
async fn sessions_survive_a_restart_through_the_snapshot_file() {
    let path = std::env::temp_dir().join(format!(
        "evanesce-tower-restart-{}.snap",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let build = || record_store().snapshot_file(&path).build().unwrap();

    let first = app(build());
    let (body, cookie) = call(&first, "/", None).await;
    assert_eq!(body, "1");
    let cookie = cookie.unwrap();
    assert_eq!(call(&first, "/", Some(&cookie)).await.0, "2");
    // The server stops: its last handle to the store goes, which saves the file.
    drop(first);
    assert!(path.exists());

    let second = app(build());
    assert_eq!(call(&second, "/", Some(&cookie)).await.0, "3");
    drop(second);
    let _ = std::fs::remove_file(&path);
}

/// Review of a334a6e: `save` was create-or-replace, so a request that loaded the session
/// before `/logout` deleted it saved it again afterwards and the logged-out session came back.
#[tokio::test]
async fn save_never_brings_back_a_deleted_session() {
    let store = record_store().build().unwrap();
    let mut r = record(60);
    r.data.insert("user".into(), "ada".into());
    store.create(&mut r).await.unwrap();
    // A request loads the session ...
    let mut loaded = store.load(&r.id).await.unwrap().unwrap();
    // ... another one logs out ...
    store.delete(&r.id).await.unwrap();
    // ... and the first saves what it loaded.
    loaded.data.insert("views".into(), 2.into());
    store.save(&loaded).await.unwrap();
    assert!(store.load(&r.id).await.unwrap().is_none(), "resurrected");
    assert_eq!(store.length(), 0);
    // Nor an expired one (the mock clock moves past its expiry between load and save).
    let (store, mock) = mock_store();
    let mut short = record(5);
    store.create(&mut short).await.unwrap();
    let loaded = store.load(&short.id).await.unwrap().unwrap();
    mock.increment(Duration::from_secs(6));
    let mut renewed = loaded.clone();
    renewed.expiry_date = time::OffsetDateTime::now_utc() + time::Duration::seconds(600);
    store.save(&renewed).await.unwrap();
    assert!(store.load(&short.id).await.unwrap().is_none(), "revived");
    // A live session is still updated by `save`.
    let mut live = record(60);
    store.create(&mut live).await.unwrap();
    live.data.insert("k".into(), "v".into());
    store.save(&live).await.unwrap();
    assert_eq!(store.load(&live.id).await.unwrap().unwrap().data["k"], "v");
}

/// The same race over HTTP, made deterministic: a slow request loads the session and waits;
/// `/logout` (a `flush`) runs to completion; then the slow request changes the session and
/// the session layer saves it. The logged-out id must stay gone.
#[tokio::test]
async fn a_request_racing_logout_cannot_resurrect_the_session() {
    use std::sync::Arc;
    use tokio::sync::Notify;

    #[derive(Clone)]
    struct Gates {
        loaded: Arc<Notify>,
        go: Arc<Notify>,
    }
    async fn slow(
        axum::extract::State(gates): axum::extract::State<Gates>,
        session: Session,
    ) -> &'static str {
        let n: u64 = session.get("n").await.unwrap().unwrap_or(0);
        gates.loaded.notify_one();
        gates.go.notified().await;
        session.insert("n", n + 1).await.unwrap();
        "slow"
    }
    let gates = Gates {
        loaded: Arc::new(Notify::new()),
        go: Arc::new(Notify::new()),
    };
    let store = record_store().build().unwrap();
    let app = Router::new()
        .route("/", get(count))
        .route("/logout", get(flush))
        .route("/slow", get(slow))
        .with_state(gates.clone())
        .layer(
            SessionManagerLayer::new(store.clone())
                .with_secure(false)
                .with_expiry(Expiry::OnInactivity(time::Duration::seconds(INACTIVITY))),
        );
    for round in 0..30 {
        let (_, cookie) = call(&app, "/", None).await;
        let cookie = cookie.unwrap();
        let id: Id = cookie.parse().unwrap();
        let racing = {
            let app = app.clone();
            let cookie = cookie.clone();
            tokio::spawn(async move { call(&app, "/slow", Some(&cookie)).await })
        };
        gates.loaded.notified().await;
        assert_eq!(call(&app, "/logout", Some(&cookie)).await.0, "flushed");
        gates.go.notify_one();
        racing.await.unwrap();
        assert!(
            store.get(&id.to_string()).unwrap().is_none(),
            "round {round}: the logged-out session came back"
        );
        assert_eq!(
            call(&app, "/", Some(&cookie)).await.0,
            "1",
            "round {round}: a fresh session"
        );
        store.clear();
    }
}
