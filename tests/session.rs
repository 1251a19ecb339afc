//! The session store: memorystore's own test suite, ported (a mock clock instead of sleeps),
//! and what memorystore lacks (concurrency, the dispose hook's exactly-once, bad input).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use evanesce::RemovalCause;
use evanesce::session::{
    BoxError, Cookie, Error, JsonSerializer, MIN_CHECK_PERIOD, MemoryStore, Serializer, Session,
    SessionData,
};
use quanta::Clock;
use serde_json::{Value, json};

fn mock_store() -> (
    evanesce::session::MemoryStoreBuilder,
    Arc<quanta::Mock>,
    Clock,
) {
    let (clock, mock) = Clock::mock();
    (MemoryStore::builder().clock(clock.clone()), mock, clock)
}

/// A session parsed from JSON, as express-session hands them to a store.
fn session(value: Value) -> Session {
    serde_json::from_value(value).expect("a JSON object")
}

/// A session whose cookie expires `minutes` after the store's now.
fn expiring(store: &MemoryStore, minutes: u64) -> Session {
    Session::with_cookie(Cookie::expiring_in(
        Duration::from_secs(60 * minutes),
        store.now(),
    ))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---- memorystore's suite ----

#[test]
fn constructor_uses_default_options() {
    let store = MemoryStore::new();
    let options = store.options();
    assert_eq!(options.max, None, "unbounded");
    assert_eq!(options.check_period, None, "no sweeper unless asked for");
    assert_eq!(options.ttl, None);
    assert!(!options.ttl_fn && !options.dispose && !options.stale && !options.no_dispose_on_set);
    assert_eq!(store.length(), 0);
}

#[test]
fn options_are_reflected_as_given() {
    let store = MemoryStore::builder()
        .max(10)
        .check_period(Duration::from_secs(10))
        .ttl(ms(36_000))
        .stale(true)
        .no_dispose_on_set(true)
        .build()
        .unwrap();
    let options = store.options();
    assert_eq!(options.max, Some(10));
    assert_eq!(options.check_period, Some(Duration::from_secs(10)));
    assert_eq!(options.ttl, Some(ms(36_000)));
    assert!(options.stale);
    assert!(options.no_dispose_on_set);
    assert!(!options.dispose);

    let store = MemoryStore::builder()
        .max_bytes(1 << 20)
        .ttl_fn(|_, _| Duration::from_secs(1))
        .dispose(|_, _, _| {})
        .build()
        .unwrap();
    let options = store.options();
    assert_eq!(options.max_bytes, Some(1 << 20));
    assert!(options.ttl_fn && options.dispose);
    assert_eq!(options.ttl, None);
}

#[test]
fn no_sweeper_runs_unless_check_period_is_set() {
    let (builder, mock, _) = mock_store();
    let store = builder.build().unwrap();
    assert!(
        !store.start_interval().unwrap(),
        "nothing to start without check_period"
    );
    store
        .set("a", &session(json!({"cookie": {"maxAge": 100}})))
        .unwrap();
    mock.increment(ms(200));
    // Nobody reads or writes: no sweeper means the expired session is only reclaimed by
    // the next write or an explicit prune; it is never *visible* though.
    assert_eq!(store.get("a").unwrap(), None);
    assert_eq!(store.length(), 0);
}

#[test]
fn max_10_holds_only_10_of_15() {
    let (builder, _, _) = mock_store();
    let store = builder.max(10).build().unwrap();
    for i in 0..15 {
        store.set(&i.to_string(), &expiring(&store, 10)).unwrap();
    }
    assert_eq!(store.length(), 10);
}

#[test]
fn destroying_the_most_recent_of_10_leaves_9() {
    let (builder, _, _) = mock_store();
    let store = builder.max(10).build().unwrap();
    for i in 0..15 {
        store.set(&i.to_string(), &expiring(&store, 10)).unwrap();
    }
    assert_eq!(store.destroy("14"), 1, "the most recent session is held");
    assert_eq!(store.length(), 9);
}

#[test]
fn max_10_with_2_destroyed_and_2_set_holds_10() {
    let (builder, _, _) = mock_store();
    let store = builder.max(10).build().unwrap();
    for i in 0..10 {
        store.set(&i.to_string(), &expiring(&store, 10)).unwrap();
    }
    assert_eq!(store.destroy("0") + store.destroy("1"), 2);
    assert_eq!(store.length(), 8);
    for i in 10..12 {
        store.set(&i.to_string(), &expiring(&store, 10)).unwrap();
    }
    assert_eq!(store.length(), 10);
}

#[test]
fn set_then_get_returns_the_data() {
    let store = MemoryStore::new();
    let sample = session(json!({"cookie": {}, "sample": true}));
    store.set("hello", &sample).unwrap();
    let got = store.get("hello").unwrap().expect("stored");
    assert_eq!(got.get("sample"), Some(&json!(true)));
    assert_eq!(got, sample);
}

#[test]
fn ttl_comes_from_cookie_max_age() {
    let (builder, mock, _) = mock_store();
    let store = builder.build().unwrap();
    store
        .set(
            "hello",
            &session(json!({"cookie": {"maxAge": 400}, "sample": true})),
        )
        .unwrap();
    assert_eq!(
        store.get("hello").unwrap().unwrap().get("sample"),
        Some(&json!(true))
    );
    mock.increment(ms(399));
    assert!(store.get("hello").unwrap().is_some(), "still within maxAge");
    mock.increment(ms(101));
    assert_eq!(store.get("hello").unwrap(), None, "expired");
}

#[test]
fn get_of_the_empty_id_is_none() {
    let store = MemoryStore::new();
    assert_eq!(store.get("").unwrap(), None);
}

#[test]
fn a_destroyed_session_is_not_returned() {
    let store = MemoryStore::new();
    store.set("foo", &session(json!({"cookie": {}}))).unwrap();
    assert!(store.get("foo").unwrap().is_some());
    assert_eq!(store.destroy("foo"), 1);
    assert_eq!(store.get("foo").unwrap(), None);
}

#[test]
fn an_expired_session_is_not_returned() {
    let (builder, mock, _) = mock_store();
    let store = builder.build().unwrap();
    store
        .set(
            "hello",
            &session(json!({"cookie": {"maxAge": 200}, "sample": true})),
        )
        .unwrap();
    mock.increment(ms(300));
    assert_eq!(store.get("hello").unwrap(), None);
}

#[test]
fn check_period_removes_expired_sessions_without_reads() {
    let (builder, mock, _) = mock_store();
    let removed = Arc::new(Mutex::new(Vec::new()));
    let seen = removed.clone();
    let store = builder
        .check_period(ms(5))
        .dispose(move |id, _, cause| seen.lock().unwrap().push((id.to_string(), cause)))
        .build()
        .unwrap();
    store
        .set("foo", &session(json!({"cookie": {"maxAge": 150}})))
        .unwrap();
    store
        .set("bar", &session(json!({"cookie": {"maxAge": 150}})))
        .unwrap();
    assert_eq!(store.length(), 2);
    mock.increment(ms(500));
    // The sweeper (a real thread, every 5 ms) removes both without anyone reading or
    // writing; wait for its dispose calls rather than sleeping a fixed time.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while removed.lock().unwrap().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sweeper did not run"
        );
        thread::sleep(ms(1));
    }
    let mut removed = removed.lock().unwrap().clone();
    removed.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        removed,
        vec![
            ("bar".to_string(), RemovalCause::Expired),
            ("foo".to_string(), RemovalCause::Expired)
        ]
    );
    assert_eq!(store.stats().expirations, 2);
}

#[test]
fn touch_with_a_longer_max_age_keeps_a_session_past_its_first_expiry() {
    let (builder, mock, _) = mock_store();
    let store = builder.build().unwrap();
    store
        .set(
            "hei",
            &session(json!({"cookie": {"maxAge": 50}, "views": 7})),
        )
        .unwrap();
    assert!(
        store
            .touch("hei", &session(json!({"cookie": {"maxAge": 300}})))
            .unwrap()
    );
    mock.increment(ms(200));
    let got = store.get("hei").unwrap().expect("touched, so still live");
    assert_eq!(got.get("views"), Some(&json!(7)), "user data kept");
    assert_eq!(
        got.cookie().unwrap().max_age(),
        Some(300.0),
        "cookie replaced"
    );
    mock.increment(ms(101));
    assert_eq!(store.get("hei").unwrap(), None);
}

#[test]
fn ids_returns_every_id() {
    let store = MemoryStore::new();
    for i in 0..10 {
        store
            .set(
                &format!("sess{i}"),
                &session(json!({"cookie": {"maxAge": 1000}})),
            )
            .unwrap();
    }
    let ids: HashSet<String> = store.ids().into_iter().collect();
    let expected: HashSet<String> = (0..10).map(|i| format!("sess{i}")).collect();
    assert_eq!(ids, expected);
}

#[test]
fn all_returns_every_session_by_id() {
    let store = MemoryStore::new();
    for i in 0..10 {
        store
            .set(
                &format!("sess{i}"),
                &session(json!({"cookie": {"maxAge": 1000}, "i": i})),
            )
            .unwrap();
    }
    let all = store.all().unwrap();
    assert_eq!(all.len(), 10);
    for i in 0..10 {
        assert_eq!(all[&format!("sess{i}")].get("i"), Some(&json!(i)));
    }
}

#[test]
fn length_counts_sessions() {
    let store = MemoryStore::new();
    for i in 0..10 {
        store
            .set(
                &i.to_string(),
                &session(json!({"cookie": {"maxAge": 1000}})),
            )
            .unwrap();
    }
    assert_eq!(store.length(), 10);
}

#[test]
fn clear_empties_the_store() {
    let store = MemoryStore::new();
    for i in 0..10 {
        store
            .set(
                &i.to_string(),
                &session(json!({"cookie": {"maxAge": 1000}})),
            )
            .unwrap();
    }
    assert_eq!(store.length(), 10);
    store.clear();
    assert_eq!(store.length(), 0);
    assert!(store.ids().is_empty());
}

// ---- semantics memorystore documents, and where this store differs ----

#[test]
fn express_session_json_round_trips_unchanged() {
    let store = MemoryStore::new();
    let raw = json!({
        "cookie": {
            "originalMaxAge": 3_600_000,
            "partitioned": null,
            "priority": null,
            "expires": "2099-01-01T00:00:00.000Z",
            "secure": false,
            "httpOnly": true,
            "domain": null,
            "path": "/",
            "sameSite": "lax"
        },
        "views": 12,
        "user": {"name": "tj", "roles": ["admin"]},
        "flash": []
    });
    store.set("sid", &session(raw.clone())).unwrap();
    let back = serde_json::to_value(store.get("sid").unwrap().unwrap()).unwrap();
    assert_eq!(back, raw);
    let cookie = session(raw).cookie().unwrap();
    assert_eq!(cookie.original_max_age(), Some(3_600_000.0));
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.path(), Some("/"));
    assert_eq!(cookie.same_site(), Some(&json!("lax")));
    assert!(cookie.expires().is_some());
}

/// Found by the `session` fuzz target: serde_json's default float parser may be one unit in
/// the last place off, so a number in a session came back changed.
#[test]
fn numbers_round_trip_to_the_last_bit() {
    let store = MemoryStore::new();
    let floats = [6.321203126237384e91, 0.1 + 0.2, 1e-300, f64::MAX, 5e-324];
    let raw = json!({"cookie": {"originalMaxAge": 60_000}, "floats": floats});
    store.set("sid", &session(raw.clone())).unwrap();
    let back = serde_json::to_value(store.get("sid").unwrap().unwrap()).unwrap();
    for (got, want) in back["floats"].as_array().unwrap().iter().zip(floats) {
        assert_eq!(got.as_f64().unwrap().to_bits(), want.to_bits(), "{want:e}");
    }
}

#[test]
fn ttl_precedence_option_then_cookie_then_one_day() {
    let (builder, mock, _) = mock_store();
    let store = builder.ttl(Duration::from_secs(10)).build().unwrap();
    // The option wins over a longer cookie.
    store.set("a", &expiring(&store, 60)).unwrap();
    assert_eq!(store.expires_in("a"), Some(Duration::from_secs(10)));

    let (builder, _, _) = mock_store();
    let store = builder
        .ttl_fn(|session: &Session, id: &str| {
            let base = if id.starts_with("admin") { 5 } else { 50 };
            Duration::from_secs(base + session.get("extra").and_then(Value::as_u64).unwrap_or(0))
        })
        .build()
        .unwrap();
    store
        .set("admin-1", &session(json!({"cookie": {}})))
        .unwrap();
    store
        .set("user-1", &session(json!({"cookie": {}, "extra": 7})))
        .unwrap();
    assert_eq!(store.expires_in("admin-1"), Some(Duration::from_secs(5)));
    assert_eq!(store.expires_in("user-1"), Some(Duration::from_secs(57)));

    let (builder, _, _) = mock_store();
    let store = builder.build().unwrap();
    store.set("cookie", &expiring(&store, 30)).unwrap();
    let left = store.expires_in("cookie").unwrap();
    assert!(
        left <= Duration::from_secs(1800) && left > Duration::from_secs(1790),
        "{left:?}"
    );
    store.set("none", &session(json!({"cookie": {}}))).unwrap();
    store.set("no-cookie", &Session::new()).unwrap();
    assert_eq!(store.expires_in("none"), Some(Duration::from_secs(86_400)));
    assert_eq!(
        store.expires_in("no-cookie"),
        Some(Duration::from_secs(86_400))
    );
    drop(mock);
}

#[test]
fn set_with_an_expired_cookie_removes_the_session() {
    let (builder, mock, _) = mock_store();
    let store = builder.build().unwrap();
    store.set("sid", &expiring(&store, 10)).unwrap();
    mock.increment(Duration::from_secs(1));
    // A cookie whose `expires` is already past: zero lifetime.
    let past =
        Session::with_cookie(Cookie::new().with_expires(store.now() - Duration::from_secs(5)));
    store.set("sid", &past).unwrap();
    assert_eq!(store.get("sid").unwrap(), None);
    assert_eq!(store.length(), 0);
    let store = MemoryStore::builder()
        .ttl_fn(|_, _| Duration::ZERO)
        .build()
        .unwrap();
    store.set("x", &Session::new()).unwrap();
    assert_eq!(store.get("x").unwrap(), None);
}

#[test]
fn touch_never_brings_back_a_missing_or_expired_session() {
    let (builder, mock, _) = mock_store();
    let store = builder.build().unwrap();
    let long = session(json!({"cookie": {"maxAge": 100_000}}));
    assert!(!store.touch("never", &long).unwrap());
    assert_eq!(store.get("never").unwrap(), None);

    store
        .set("gone", &session(json!({"cookie": {"maxAge": 10}})))
        .unwrap();
    mock.increment(ms(20));
    assert!(!store.touch("gone", &long).unwrap());
    assert_eq!(store.get("gone").unwrap(), None);

    store.set("destroyed", &long).unwrap();
    store.destroy("destroyed");
    assert!(!store.touch("destroyed", &long).unwrap());
    assert_eq!(store.get("destroyed").unwrap(), None);
}

#[test]
fn touch_with_the_same_cookie_only_moves_the_lifetime() {
    let (builder, mock, _) = mock_store();
    let disposed = Arc::new(Mutex::new(Vec::new()));
    let seen = disposed.clone();
    let store = builder
        .dispose(move |id, _, cause| seen.lock().unwrap().push((id.to_string(), cause)))
        .build()
        .unwrap();
    let s = session(json!({"cookie": {"maxAge": 100}, "n": 1}));
    store.set("sid", &s).unwrap();
    mock.increment(ms(90));
    assert!(store.touch("sid", &s).unwrap());
    mock.increment(ms(90));
    assert!(
        store.get("sid").unwrap().is_some(),
        "the lifetime restarted"
    );
    // A touch with a new cookie replaces the stored bytes: still not a removal.
    assert!(
        store
            .touch("sid", &session(json!({"cookie": {"maxAge": 500}})))
            .unwrap()
    );
    store.prune();
    assert!(
        disposed.lock().unwrap().is_empty(),
        "{:?}",
        disposed.lock().unwrap()
    );
}

#[test]
fn length_ids_and_all_count_live_sessions_only() {
    let (builder, mock, _) = mock_store();
    let store = builder.build().unwrap();
    store
        .set("short", &session(json!({"cookie": {"maxAge": 10}})))
        .unwrap();
    store
        .set("long", &session(json!({"cookie": {"maxAge": 10_000}})))
        .unwrap();
    mock.increment(ms(50));
    // No prune, no sweeper: the expired one is still in memory until the next pass, but it
    // is never counted (memorystore's `length` counted it).
    assert_eq!(store.length(), 1);
    assert_eq!(store.ids(), vec!["long".to_string()]);
    assert_eq!(
        store.all().unwrap().keys().collect::<Vec<_>>(),
        vec!["long"]
    );
}

#[test]
fn stale_returns_an_expired_session_once() {
    let (builder, mock, _) = mock_store();
    let store = builder.stale(true).build().unwrap();
    store
        .set("sid", &session(json!({"cookie": {"maxAge": 10}, "v": 1})))
        .unwrap();
    mock.increment(ms(20));
    let stale = store
        .get("sid")
        .unwrap()
        .expect("stale session returned once");
    assert_eq!(stale.get("v"), Some(&json!(1)));
    assert_eq!(store.get("sid").unwrap(), None, "then it is gone");

    let (builder, mock, _) = mock_store();
    let store = builder.build().unwrap();
    store
        .set("sid", &session(json!({"cookie": {"maxAge": 10}})))
        .unwrap();
    mock.increment(ms(20));
    assert_eq!(store.get("sid").unwrap(), None, "without stale, never");
}

/// What a dispose hook saw: id, session, cause.
type DisposeLog = Arc<Mutex<Vec<(String, Option<Value>, RemovalCause)>>>;

#[test]
fn dispose_sees_each_removal_once_with_its_cause() {
    let (builder, mock, _) = mock_store();
    let log: DisposeLog = Arc::default();
    let seen = log.clone();
    let store = builder
        .max(3)
        .dispose(move |id, session: Option<Session>, cause| {
            let views = session.and_then(|s| s.get("v").cloned());
            seen.lock().unwrap().push((id.to_string(), views, cause));
        })
        .build()
        .unwrap();
    let with = |v: i64, max_age: u64| session(json!({"cookie": {"maxAge": max_age}, "v": v}));
    store.set("a", &with(1, 10_000)).unwrap();
    store.set("a", &with(2, 10_000)).unwrap(); // replaces 1
    store.set("b", &with(3, 10)).unwrap();
    mock.increment(ms(20)); // b expires
    store.prune();
    store.destroy("a"); // explicit: 2
    store.set("c", &with(4, 10_000)).unwrap();
    store.set("d", &with(5, 10_000)).unwrap();
    store.set("e", &with(6, 10_000)).unwrap();
    store.set("f", &with(7, 10_000)).unwrap(); // one of c..f goes by size
    store.prune();
    store.clear(); // the remaining three
    let log = log.lock().unwrap().clone();
    let count = |cause| log.iter().filter(|(_, _, c)| *c == cause).count();
    assert_eq!(count(RemovalCause::Replaced), 1, "{log:?}");
    assert_eq!(count(RemovalCause::Expired), 1, "{log:?}");
    assert_eq!(count(RemovalCause::Explicit), 1, "{log:?}");
    assert_eq!(count(RemovalCause::Size), 1, "{log:?}");
    assert_eq!(count(RemovalCause::Cleared), 3, "{log:?}");
    assert!(log.contains(&("a".into(), Some(json!(1)), RemovalCause::Replaced)));
    assert!(log.contains(&("b".into(), Some(json!(3)), RemovalCause::Expired)));
    assert!(log.contains(&("a".into(), Some(json!(2)), RemovalCause::Explicit)));
    // Every value left exactly once.
    let mut values: Vec<i64> = log
        .iter()
        .map(|(_, v, _)| v.clone().unwrap().as_i64().unwrap())
        .collect();
    values.sort();
    assert_eq!(values, vec![1, 2, 3, 4, 5, 6, 7]);
}

#[test]
fn no_dispose_on_set_skips_only_replacements() {
    let log: Arc<Mutex<Vec<RemovalCause>>> = Arc::default();
    let seen = log.clone();
    let store = MemoryStore::builder()
        .no_dispose_on_set(true)
        .dispose(move |_, _, cause| seen.lock().unwrap().push(cause))
        .build()
        .unwrap();
    store.set("a", &Session::new()).unwrap();
    store.set("a", &Session::new()).unwrap();
    store.destroy("a");
    assert_eq!(*log.lock().unwrap(), vec![RemovalCause::Explicit]);
}

#[test]
fn destroy_takes_one_id_or_many() {
    let store = MemoryStore::new();
    for id in ["a", "b", "c", "d", "e"] {
        store.set(id, &Session::new()).unwrap();
    }
    assert_eq!(store.destroy("a"), 1);
    assert_eq!(store.destroy(["b", "c"]), 2);
    let owned = vec!["d".to_string(), "zz".to_string()];
    assert_eq!(store.destroy(&owned), 1);
    assert_eq!(owned.len(), 2, "borrowed, not consumed");
    assert_eq!(store.destroy(String::from("e")), 1);
    assert_eq!(store.destroy(&["a", "b"][..]), 0);
    assert_eq!(store.length(), 0);
}

#[test]
fn ids_are_opaque_strings_of_any_content() {
    let store = MemoryStore::new();
    let ids = [
        "",
        " ",
        "\0",
        "ü🔑",
        "a/b?c=d&e",
        &"x".repeat(10_000),
        "\"quoted\"",
    ];
    for (i, id) in ids.iter().enumerate() {
        store.set(id, &session(json!({"i": i}))).unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(store.get(id).unwrap().unwrap().get("i"), Some(&json!(i)));
    }
    assert_eq!(store.length(), ids.len());
}

#[test]
fn a_session_larger_than_max_bytes_is_refused_and_loses_nothing() {
    let store = MemoryStore::builder().max_bytes(200).build().unwrap();
    let small = session(json!({"cookie": {}, "v": 1}));
    store.set("sid", &small).unwrap();
    let big = session(json!({"cookie": {}, "blob": "x".repeat(500)}));
    match store.set("sid", &big) {
        Err(Error::TooLarge { size, max }) => {
            assert!(size > 500, "{size}");
            assert_eq!(max, 200);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(
        store.get("sid").unwrap(),
        Some(small),
        "the previous session is kept"
    );
    assert!(matches!(
        store.set("other", &big),
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(store.get("other").unwrap(), None);
}

#[test]
fn max_bytes_bounds_the_serialized_size() {
    let store = MemoryStore::builder().max_bytes(10_000).build().unwrap();
    for i in 0..1000 {
        let s = session(json!({"cookie": {}, "pad": "y".repeat(80), "i": i}));
        store.set(&format!("sid-{i:04}"), &s).unwrap();
    }
    store.prune();
    let held: usize = store
        .all()
        .unwrap()
        .iter()
        .map(|(id, s)| id.len() + serde_json::to_vec(s).unwrap().len())
        .sum();
    assert!(held <= 10_000 + 10_000 / 64, "{held} bytes held");
    assert!(held >= 5_000, "the bound is used, not starved: {held}");
}

#[test]
fn invalid_options_are_typed_errors() {
    let err = |b: evanesce::session::MemoryStoreBuilder| match b.build() {
        Err(Error::Config(why)) => why,
        other => panic!("expected a config error, got {other:?}"),
    };
    assert!(err(MemoryStore::builder().max(0)).contains("zero"));
    assert!(err(MemoryStore::builder().max(5).max_bytes(5)).contains("exclusive"));
    assert!(err(MemoryStore::builder().ttl(Duration::ZERO)).contains("ttl"));
    assert!(err(MemoryStore::builder().check_period(Duration::ZERO)).contains("check_period"));
    let typed = MemoryStore::builder()
        .dispose(|_, _, _| {})
        .serializer(JsonSerializer::<Session>::new())
        .build();
    assert!(matches!(typed, Err(Error::Config(why)) if why.contains("dispose")));
}

#[test]
fn a_check_period_below_the_floor_is_refused() {
    // 1 ns used to be accepted, and the sweeper thread spun a core.
    for period in [
        Duration::from_nanos(1),
        Duration::from_micros(999),
        MIN_CHECK_PERIOD - Duration::from_nanos(1),
    ] {
        match MemoryStore::builder().check_period(period).build() {
            Err(Error::Config(why)) => assert!(why.contains("check_period"), "{why}"),
            other => panic!("{period:?}: {other:?}"),
        }
    }
    assert_eq!(MIN_CHECK_PERIOD, ms(1));
    let store = MemoryStore::builder()
        .check_period(MIN_CHECK_PERIOD)
        .build()
        .unwrap();
    assert_eq!(store.options().check_period, Some(ms(1)));
}

// ---- lifetimes at the edges: saturate, never wrap ----

#[test]
fn an_endless_cookie_saturates_instead_of_expiring_at_once() {
    let store = MemoryStore::new();
    let now = store.now();
    let cookie = Cookie::expiring_in(Duration::MAX, now);
    // The last date the format (and express-session) holds, not `now`.
    assert_eq!(
        cookie.as_map()["expires"],
        json!("9999-12-31T23:59:59.999Z")
    );
    assert_eq!(cookie.original_max_age(), Some(u64::MAX as f64));
    let mut session = Session::with_cookie(cookie);
    session.insert("views", 1);
    store.set("forever", &session).unwrap();
    assert_eq!(store.get("forever").unwrap(), Some(session));
    // The longest the engine holds (its TTLs saturate at "never").
    let left = store.expires_in("forever").unwrap();
    assert!(left >= Duration::from_secs(500 * 365 * 86_400), "{left:?}");
    // Any lifetime past the format's end saturates the same way.
    let far = Cookie::expiring_in(Duration::from_secs(u64::MAX / 2), now);
    assert_eq!(far.as_map()["expires"], json!("9999-12-31T23:59:59.999Z"));
}

#[test]
fn an_expires_after_2554_is_read_not_ignored() {
    let store = MemoryStore::new();
    let now = store.now();
    for expires in [
        "9999-12-31T23:59:59.999Z", // express-session's own cap
        "2600-01-01T00:00:00.000Z",
        "2554-07-22T00:00:00.000Z", // just past 2^64 ns after the epoch
    ] {
        let session = session(json!({"cookie": {"expires": expires}, "v": 1}));
        let ttl = session.cookie_ttl(now).unwrap();
        assert!(
            ttl > Duration::from_secs(500 * 365 * 86_400),
            "{expires}: {ttl:?}"
        );
        store.set(expires, &session).unwrap();
        // Not memorystore's one day for a cookie that says nothing.
        let left = store.expires_in(expires).unwrap();
        assert!(
            left > Duration::from_secs(400 * 86_400),
            "{expires}: {left:?}"
        );
    }
    // And a date before 1970 is in the past, not a wrapped future.
    let old = session(json!({"cookie": {"expires": "1900-01-01T00:00:00.000Z"}}));
    assert_eq!(old.cookie_ttl(now), Some(Duration::ZERO));
    store.set("old", &old).unwrap();
    assert_eq!(store.get("old").unwrap(), None);
}

#[test]
fn start_and_stop_interval() {
    let (builder, mock, _) = mock_store();
    let expired = Arc::new(Mutex::new(0));
    let seen = expired.clone();
    let store = builder
        .check_period(ms(2))
        .dispose(move |_, _, _| *seen.lock().unwrap() += 1)
        .build()
        .unwrap();
    store.stop_interval();
    store
        .set("a", &session(json!({"cookie": {"maxAge": 5}})))
        .unwrap();
    mock.increment(ms(10));
    thread::sleep(ms(50));
    assert_eq!(
        *expired.lock().unwrap(),
        0,
        "the sweeper is stopped and nobody writes"
    );
    assert!(store.start_interval().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while *expired.lock().unwrap() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted sweeper did not run"
        );
        thread::sleep(ms(1));
    }
}

// ---- bad input ----

/// A serializer that writes sessions with `"corrupt": true` as bytes it cannot read back.
struct Fragile;

impl Serializer for Fragile {
    type Session = Session;
    fn encode(&self, session: &Session) -> Result<Vec<u8>, BoxError> {
        if session.get("corrupt") == Some(&json!(true)) {
            return Ok(b"\xff not json".to_vec());
        }
        Ok(serde_json::to_vec(session)?)
    }
    fn decode(&self, bytes: &[u8]) -> Result<Session, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[test]
fn corrupted_bytes_are_one_decode_error_then_gone() {
    let disposed: Arc<Mutex<Vec<(String, bool, RemovalCause)>>> = Arc::default();
    let seen = disposed.clone();
    let store = MemoryStore::with_serializer(Fragile)
        .dispose(move |id, s, cause| seen.lock().unwrap().push((id.into(), s.is_some(), cause)))
        .build()
        .unwrap();
    store
        .set("bad", &session(json!({"corrupt": true})))
        .unwrap();
    store.set("good", &session(json!({"v": 1}))).unwrap();
    match store.get("bad") {
        Err(Error::Decode { id, .. }) => assert_eq!(id, "bad"),
        other => panic!("expected a decode error, got {other:?}"),
    }
    assert_eq!(
        store.get("bad").unwrap(),
        None,
        "reported once, then removed"
    );
    assert_eq!(
        *disposed.lock().unwrap(),
        vec![("bad".to_string(), false, RemovalCause::Explicit)]
    );

    // The same through `all` and `touch`.
    store
        .set("bad2", &session(json!({"corrupt": true})))
        .unwrap();
    assert!(matches!(store.all(), Err(Error::Decode { id, .. }) if id == "bad2"));
    assert_eq!(store.all().unwrap().len(), 1);
    store
        .set("bad3", &session(json!({"corrupt": true})))
        .unwrap();
    assert!(matches!(
        store.touch("bad3", &Session::new()),
        Err(Error::Decode { .. })
    ));
    assert!(!store.touch("bad3", &Session::new()).unwrap());
    assert_eq!(
        store.get("good").unwrap().unwrap().get("v"),
        Some(&json!(1))
    );
}

#[test]
fn corrupted_bytes_read_by_many_threads_are_reported_once() {
    for _ in 0..50 {
        let store = MemoryStore::with_serializer(Fragile).build().unwrap();
        store
            .set("bad", &session(json!({"corrupt": true})))
            .unwrap();
        let errors: usize = thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| usize::from(store.get("bad").is_err())))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(errors, 1);
    }
}

/// A serializer whose encode fails for sessions with `"unencodable": true`.
struct Picky;

impl Serializer for Picky {
    type Session = Session;
    fn encode(&self, session: &Session) -> Result<Vec<u8>, BoxError> {
        if session.get("unencodable").is_some() {
            return Err("cannot encode this".into());
        }
        Ok(serde_json::to_vec(session)?)
    }
    fn decode(&self, bytes: &[u8]) -> Result<Session, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[test]
fn an_encode_error_stores_nothing_and_keeps_the_previous_session() {
    let store = MemoryStore::with_serializer(Picky).build().unwrap();
    let ok = session(json!({"v": 1}));
    store.set("sid", &ok).unwrap();
    assert!(matches!(
        store.set("sid", &session(json!({"unencodable": 1}))),
        Err(Error::Encode(_))
    ));
    assert_eq!(store.get("sid").unwrap(), Some(ok));
}

/// A serializer that writes through `encode_into` (as the store calls it, into a buffer the
/// store reuses): half of the session, then a `set` on another store from inside the encoding
/// (that store's encoding runs on this thread while this one's is half written), then the
/// rest; for sessions with `"fail": true` it stops with an error after the first half.
struct Nested(MemoryStore);

impl Serializer for Nested {
    type Session = Session;
    fn encode(&self, session: &Session) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(session)?)
    }
    fn decode(&self, bytes: &[u8]) -> Result<Session, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
    fn encode_into(&self, session: &Session, out: &mut Vec<u8>) -> Result<(), BoxError> {
        let json = serde_json::to_vec(session)?;
        let (head, tail) = json.split_at(json.len() / 2);
        out.extend_from_slice(head);
        if session.get("fail").is_some() {
            return Err("refused halfway".into());
        }
        self.0.set("nested", session)?;
        out.extend_from_slice(tail);
        Ok(())
    }
}

#[test]
fn encodings_into_the_stores_buffer_survive_nesting_and_errors() {
    let other = MemoryStore::new();
    let store = MemoryStore::with_serializer(Nested(other.clone()))
        .build()
        .unwrap();
    let a = session(json!({"v": 1, "name": "first"}));
    store.set("a", &a).unwrap();
    assert_eq!(store.get("a").unwrap(), Some(a.clone()));
    assert_eq!(other.get("nested").unwrap(), Some(a.clone()));

    // Half an encoding, then an error: nothing is stored, the previous session stays, and the
    // next encoding on this thread starts from an empty buffer.
    assert!(matches!(
        store.set("a", &session(json!({"fail": true, "pad": "x".repeat(300)}))),
        Err(Error::Encode(_))
    ));
    assert_eq!(store.get("a").unwrap(), Some(a));
    let b = session(json!({"v": 2}));
    store.set("b", &b).unwrap();
    assert_eq!(store.get("b").unwrap(), Some(b.clone()));

    // A touch with a serializer that cannot splice decodes, touches and encodes (into the
    // buffer, with the nested set again).
    let newer = Session::with_cookie(Cookie::expiring_in(Duration::from_secs(600), store.now()));
    assert!(store.touch("b", &newer).unwrap());
    let touched = store.get("b").unwrap().unwrap();
    assert_eq!(touched.get("v"), Some(&json!(2)));
    assert_eq!(touched.cookie(), newer.cookie());
}

/// A serializer whose `touch_into` writes into the store's buffer and then declines (`None`):
/// the store must decode, touch and encode from an empty buffer.
struct Declining;

impl Serializer for Declining {
    type Session = Session;
    fn encode(&self, session: &Session) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(session)?)
    }
    fn decode(&self, bytes: &[u8]) -> Result<Session, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
    fn touch_into(
        &self,
        _stored: &[u8],
        _newer: &Session,
        out: &mut Vec<u8>,
    ) -> Option<Result<(), BoxError>> {
        out.extend_from_slice(b"GARBAGE");
        None
    }
}

#[test]
fn a_touch_into_that_declines_after_writing_leaves_nothing_behind() {
    let store = MemoryStore::with_serializer(Declining).build().unwrap();
    store.set("sid", &session(json!({"v": 1}))).unwrap();
    let newer = Session::with_cookie(Cookie::expiring_in(Duration::from_secs(600), store.now()));
    assert!(store.touch("sid", &newer).unwrap());
    let touched = store
        .get("sid")
        .unwrap()
        .expect("still there, and decodable");
    assert_eq!(touched.get("v"), Some(&json!(1)));
    assert_eq!(touched.cookie(), newer.cookie());
}

// ---- typed sessions ----

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Cart {
    expires_at_ms: u64,
    items: Vec<String>,
}

impl SessionData for Cart {
    fn cookie_ttl(&self, now: std::time::SystemTime) -> Option<Duration> {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(self.expires_at_ms);
        Some(at.duration_since(now).unwrap_or(Duration::ZERO))
    }
    fn touch_from(&mut self, newer: &Self) {
        self.expires_at_ms = newer.expires_at_ms;
    }
}

#[test]
fn a_typed_session_works_through_the_serializer() {
    let (clock, mock) = Clock::mock();
    let store = MemoryStore::with_serializer(JsonSerializer::<Cart>::new())
        .clock(clock)
        .build()
        .unwrap();
    let now_ms = store
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let cart = Cart {
        expires_at_ms: now_ms + 1000,
        items: vec!["book".into()],
    };
    store.set("c", &cart).unwrap();
    assert_eq!(store.get("c").unwrap(), Some(cart.clone()));
    let later = Cart {
        expires_at_ms: now_ms + 5000,
        items: vec![],
    };
    assert!(store.touch("c", &later).unwrap());
    mock.increment(Duration::from_secs(2));
    assert_eq!(
        store.get("c").unwrap().unwrap().items,
        vec!["book".to_string()]
    );
    mock.increment(Duration::from_secs(4));
    assert_eq!(store.get("c").unwrap(), None);
}

// ---- concurrency ----

/// set / touch / destroy / get of one id from many threads: the store always ends in a state
/// one of the writers left (never a touched session after a destroy that followed it, never
/// a mix of two sessions' data), and the dispose hook hears each stored session at most once.
#[test]
fn concurrent_set_touch_destroy_of_one_id_stay_consistent() {
    for round in 0..20 {
        let disposed: Arc<Mutex<HashMap<i64, usize>>> = Arc::default();
        let seen = disposed.clone();
        let store = MemoryStore::builder()
            .dispose(move |_, s: Option<Session>, cause| {
                assert_ne!(cause, RemovalCause::Size);
                let w = s.and_then(|s| s.get("w").and_then(Value::as_i64)).unwrap();
                *seen.lock().unwrap().entry(w).or_default() += 1;
            })
            .build()
            .unwrap();
        let sets = Arc::new(Mutex::new(0i64));
        thread::scope(|s| {
            for t in 0..4i64 {
                let store = &store;
                let sets = &sets;
                let disposed = &disposed;
                s.spawn(move || {
                    for i in 0..300i64 {
                        match (i + t + round) % 4 {
                            0 => {
                                let w = {
                                    let mut n = sets.lock().unwrap();
                                    *n += 1;
                                    *n
                                };
                                store
                                    .set(
                                        "one",
                                        &session(
                                            json!({"cookie": {"maxAge": 60_000}, "w": w, "t": t}),
                                        ),
                                    )
                                    .unwrap();
                            }
                            1 => {
                                store
                                    .touch(
                                        "one",
                                        &session(json!({"cookie": {"maxAge": 90_000 + i}})),
                                    )
                                    .unwrap();
                            }
                            2 => {
                                store.destroy("one");
                            }
                            _ => {
                                // A session the dispose hook has heard about is gone for
                                // good: no later get may return it (a touch that raced a
                                // destroy or a set without the writer lock would).
                                let gone: Vec<i64> =
                                    disposed.lock().unwrap().keys().copied().collect();
                                if let Some(got) = store.get("one").unwrap() {
                                    let w = got.get("w").and_then(Value::as_i64).unwrap();
                                    assert!(!gone.contains(&w), "session {w} came back");
                                    // Never a mix: a stored session has a writer's data and
                                    // some writer's cookie.
                                    assert!(got.get("w").is_some() && got.get("t").is_some());
                                    assert!(got.cookie().unwrap().max_age().is_some());
                                }
                            }
                        }
                    }
                });
            }
        });
        let final_session = store.get("one").unwrap();
        store.clear();
        let disposed = disposed.lock().unwrap();
        // Every session that was set left exactly once (replaced, destroyed or cleared);
        // touches never show up as removals.
        let total = *sets.lock().unwrap();
        for w in 1..=total {
            assert_eq!(
                disposed.get(&w).copied().unwrap_or(0),
                1,
                "session {w}: {disposed:?}"
            );
        }
        drop(final_session);
    }
}

/// Review of a334a6e: session ids (which work like passwords) appeared in error text
/// (`Error::Decode`, `SnapshotError::{Decode, TooLarge}`), which ends up in logs. Display and
/// Debug now show a tag (a keyed hash prefix and the length); the `id` field keeps the id.
#[test]
fn errors_never_show_a_session_id() {
    use evanesce::session::{SnapshotError, id_tag};
    let secret = "Zm9yZ2V0LW1lLW5vdC1zZXNzaW9uLWlk";
    let shows_no_id = |what: &str, text: String| {
        assert!(!text.contains(secret), "{what}: {text}");
        // Not even a good part of it.
        for part in secret.as_bytes().windows(8) {
            let part = std::str::from_utf8(part).unwrap();
            assert!(!text.contains(part), "{what} shows {part:?}: {text}");
        }
        assert!(text.contains(&id_tag(secret).to_string()), "{what}: {text}");
    };
    let check = |what: &str, e: &Error| {
        shows_no_id(&format!("{what} Display"), e.to_string());
        shows_no_id(&format!("{what} Debug"), format!("{e:?}"));
        shows_no_id(&format!("{what} Debug (pretty)"), format!("{e:#?}"));
    };

    // A session whose stored bytes do not decode: get, all, touch.
    let store = MemoryStore::with_serializer(Fragile).build().unwrap();
    for op in ["get", "all", "touch"] {
        store
            .set(secret, &session(json!({"corrupt": true})))
            .unwrap();
        let e = match op {
            "get" => store.get(secret).map(drop),
            "all" => store.all().map(drop),
            _ => store.touch(secret, &Session::new()).map(drop),
        }
        .unwrap_err();
        match &e {
            // The id is still there for a program.
            Error::Decode { id, .. } => assert_eq!(id, secret),
            other => panic!("{op}: {other:?}"),
        }
        check(op, &e);
    }

    // A snapshot holding a session the loading store cannot decode, or hold.
    let writer = MemoryStore::new();
    let mut big = Session::new();
    big.insert("blob", "x".repeat(500));
    writer.set(secret, &big).unwrap();
    let snapshot = writer.snapshot_to_vec().unwrap();
    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Other {
        n: u64,
    }
    impl evanesce::session::SessionData for Other {
        fn cookie_ttl(&self, _: std::time::SystemTime) -> Option<Duration> {
            None
        }
        fn touch_from(&mut self, _: &Self) {}
    }
    let other = MemoryStore::with_serializer(evanesce::session::JsonSerializer::<Other>::new())
        .build()
        .unwrap();
    let e = other.load_snapshot_from_slice(&snapshot).unwrap_err();
    match &e {
        Error::Snapshot(SnapshotError::Decode { id, .. }) => assert_eq!(id, secret),
        other => panic!("{other:?}"),
    }
    check("snapshot Decode", &e);
    let small = MemoryStore::builder().max_bytes(200).build().unwrap();
    let e = small.load_snapshot_from_slice(&snapshot).unwrap_err();
    match &e {
        Error::Snapshot(SnapshotError::TooLarge { id, .. }) => assert_eq!(id, secret),
        other => panic!("{other:?}"),
    }
    check("snapshot TooLarge", &e);

    // The tag is stable for one id, differs between ids, and says the length.
    assert_eq!(id_tag(secret).to_string(), id_tag(secret).to_string());
    assert_ne!(
        id_tag(secret).to_string(),
        id_tag("another-session-id-0000000").to_string()
    );
    assert!(id_tag(secret).to_string().contains("32 bytes"));
}
