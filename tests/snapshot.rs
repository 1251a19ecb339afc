//! Snapshots of the session store: round trips, expiry across the gap, damaged files that
//! change nothing, the builder's load-at-start / save-on-drop / periodic save, and a crash
//! test that kills a writer (SIGKILL) mid-save and checks the file on disk always loads.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use evanesce::session::{Cookie, Error, MemoryStore, Session, SnapshotError};
use quanta::Clock;
use serde_json::json;

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "evanesce-snapshot-{}-{name}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mock_store() -> (MemoryStore, std::sync::Arc<quanta::Mock>) {
    let (clock, mock) = Clock::mock();
    (MemoryStore::builder().clock(clock).build().unwrap(), mock)
}

fn lasting(store: &MemoryStore, secs: u64, views: u64) -> Session {
    let mut s = Session::with_cookie(Cookie::expiring_in(Duration::from_secs(secs), store.now()));
    s.insert("views", views);
    s.insert("user", json!({"name": "ada", "tags": ["x", 1.5]}));
    s
}

fn secs(d: Option<Duration>) -> f64 {
    d.expect("live").as_secs_f64()
}

#[test]
fn sessions_round_trip_with_their_remaining_lifetimes() {
    let dir = TempDir::new("round-trip");
    let path = dir.file("sessions.snap");
    let (a, mock_a) = mock_store();
    let short = lasting(&a, 60, 1);
    let long = lasting(&a, 3600, 2);
    a.set("short", &short).unwrap();
    a.set("long", &long).unwrap();
    a.set("odd id \u{0} ü", &long).unwrap();
    mock_a.increment(Duration::from_secs(10));
    assert_eq!(a.save_snapshot(&path).unwrap(), 3);

    // A second process: its wall clock starts at its build (real time, just after `a`'s)
    // and its mock at zero; ten mock seconds later, as for `a`.
    let (b, mock_b) = mock_store();
    mock_b.increment(Duration::from_secs(10));
    assert_eq!(b.load_snapshot(&path).unwrap(), 3);
    assert_eq!(b.length(), 3);
    assert_eq!(b.get("short").unwrap(), Some(short));
    assert_eq!(b.get("long").unwrap(), Some(long.clone()));
    assert_eq!(b.get("odd id \u{0} ü").unwrap(), Some(long));
    // The remaining lifetimes carried over (50 s and 3590 s, minus the real time between
    // the two builds, which is well under a second here).
    let left = secs(b.expires_in("short"));
    assert!((49.0..=50.0).contains(&left), "{left}");
    let left = secs(b.expires_in("long"));
    assert!((3589.0..=3590.0).contains(&left), "{left}");
}

#[test]
fn sessions_that_expired_meanwhile_are_skipped() {
    let (a, _) = mock_store();
    a.set("soon", &lasting(&a, 5, 1)).unwrap();
    a.set("later", &lasting(&a, 500, 1)).unwrap();
    let snapshot = a.snapshot_to_vec();

    let (clock, mock) = Clock::mock();
    let b = MemoryStore::builder().clock(clock).build().unwrap();
    mock.increment(Duration::from_secs(6));
    assert_eq!(b.load_snapshot_from_slice(&snapshot).unwrap(), 1);
    assert_eq!(b.ids(), vec!["later".to_string()]);
    assert_eq!(b.get("soon").unwrap(), None);
}

#[test]
fn a_session_that_never_expires_stays_so() {
    let (clock, _) = Clock::mock();
    let a = MemoryStore::builder()
        .clock(clock)
        .ttl_fn(|_, _| Duration::MAX)
        .build()
        .unwrap();
    a.set("forever", &Session::new()).unwrap();
    let (b, _) = mock_store();
    assert_eq!(b.load_snapshot_from_slice(&a.snapshot_to_vec()).unwrap(), 1);
    assert_eq!(b.expires_in("forever"), Some(Duration::MAX));
}

#[test]
fn a_damaged_snapshot_changes_nothing() {
    let (a, _) = mock_store();
    for i in 0..20 {
        a.set(&format!("s{i}"), &lasting(&a, 600, i)).unwrap();
    }
    let good = a.snapshot_to_vec();

    let (b, _) = mock_store();
    let mine = lasting(&b, 600, 99);
    b.set("s3", &mine).unwrap();
    b.set("mine", &mine).unwrap();
    let unchanged = |b: &MemoryStore| {
        assert_eq!(b.length(), 2);
        assert_eq!(b.get("s3").unwrap(), Some(mine.clone()));
    };
    // Every truncation.
    for len in 0..good.len() {
        match b.load_snapshot_from_slice(&good[..len]) {
            Err(Error::Snapshot(SnapshotError::Truncated | SnapshotError::Checksum)) => {}
            other => panic!("truncated to {len}: {other:?}"),
        }
        unchanged(&b);
    }
    // A flipped bit every 7 bytes (every byte is covered by the snapshot module's unit test).
    for i in (0..good.len()).step_by(7) {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        assert!(
            matches!(b.load_snapshot_from_slice(&bad), Err(Error::Snapshot(_))),
            "byte {i}"
        );
        unchanged(&b);
    }
    // A future version.
    let mut future = good.clone();
    future[8] = 2;
    assert!(matches!(
        b.load_snapshot_from_slice(&future),
        Err(Error::Snapshot(SnapshotError::UnsupportedVersion {
            found: 2,
            supported: 1
        }))
    ));
    unchanged(&b);
    // Something else entirely, and a file that is not there.
    assert!(matches!(
        b.load_snapshot_from_slice(b"{\"cookie\": {}}"),
        Err(Error::Snapshot(SnapshotError::NotASnapshot))
    ));
    assert!(matches!(
        b.load_snapshot("/nonexistent/evanesce.snap"),
        Err(Error::Snapshot(SnapshotError::Io(_)))
    ));
    unchanged(&b);
    // The good one loads, over "s3".
    assert_eq!(b.load_snapshot_from_slice(&good).unwrap(), 20);
    assert_eq!(b.length(), 21);
    assert_eq!(
        b.get("s3").unwrap(),
        Some(lasting(&b, 600, 3)).map(|s| {
            // Same data; the cookie's dates come from the first store.
            let mut s = s;
            s.set_cookie(a.get("s3").unwrap().unwrap().cookie().unwrap());
            s
        })
    );
}

#[test]
fn sessions_another_serializer_cannot_read_are_refused_whole() {
    #[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Typed {
        views: u64,
    }
    impl evanesce::session::SessionData for Typed {
        fn cookie_ttl(&self, _: std::time::SystemTime) -> Option<Duration> {
            None
        }
        fn touch_from(&mut self, _: &Self) {}
    }
    let (a, _) = mock_store();
    a.set("express-shaped", &lasting(&a, 600, 1)).unwrap();
    let typed = MemoryStore::with_serializer(evanesce::session::JsonSerializer::<Typed>::new())
        .build()
        .unwrap();
    typed.set("t", &Typed { views: 1 }).unwrap();
    match typed.load_snapshot_from_slice(&a.snapshot_to_vec()) {
        Err(Error::Snapshot(SnapshotError::Decode { id, .. })) => assert_eq!(id, "express-shaped"),
        other => panic!("{other:?}"),
    }
    assert_eq!(typed.ids(), vec!["t".to_string()]);
}

#[test]
fn a_session_over_max_bytes_is_refused_whole() {
    let (a, _) = mock_store();
    a.set("small", &Session::new()).unwrap();
    let mut big = Session::new();
    big.insert("blob", "x".repeat(500));
    a.set("big", &big).unwrap();
    let b = MemoryStore::builder().max_bytes(200).build().unwrap();
    assert!(matches!(
        b.load_snapshot_from_slice(&a.snapshot_to_vec()),
        Err(Error::Snapshot(SnapshotError::TooLarge { .. }))
    ));
    assert_eq!(b.length(), 0);
}

#[test]
fn the_builder_loads_at_start_and_saves_on_drop() {
    let dir = TempDir::new("builder");
    let path = dir.file("s.snap");
    let store = MemoryStore::builder().snapshot_file(&path).build().unwrap();
    assert_eq!(store.length(), 0, "no file yet: an empty store");
    store.set("kept", &lasting(&store, 600, 7)).unwrap();
    assert!(!path.exists(), "saved on drop, not before");
    let clone = store.clone();
    drop(store);
    assert!(!path.exists(), "a handle is still alive");
    drop(clone);
    assert!(path.exists());

    let again = MemoryStore::builder().snapshot_file(&path).build().unwrap();
    assert_eq!(
        again
            .get("kept")
            .unwrap()
            .and_then(|s| s.get("views").cloned()),
        Some(json!(7))
    );
    drop(again);

    // A damaged file: the build fails, and the file is left for a human to look at.
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        MemoryStore::builder().snapshot_file(&path).build(),
        Err(Error::Snapshot(SnapshotError::Checksum))
    ));
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "not overwritten");

    assert!(matches!(
        MemoryStore::builder()
            .snapshot_every(Duration::from_secs(1))
            .build(),
        Err(Error::Config(_))
    ));
}

#[test]
fn snapshot_every_saves_in_the_background() {
    let dir = TempDir::new("periodic");
    let path = dir.file("p.snap");
    let store = MemoryStore::builder()
        .snapshot_file(&path)
        .snapshot_every(Duration::from_millis(20))
        .build()
        .unwrap();
    store.set("a", &lasting(&store, 600, 1)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (probe, _) = mock_store();
        if std::fs::read(&path)
            .ok()
            .and_then(|b| probe.load_snapshot_from_slice(&b).ok())
            == Some(1)
        {
            break;
        }
        assert!(Instant::now() < deadline, "no background save within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(store.take_snapshot_error().is_none());
}

#[test]
fn a_failing_background_save_is_reported() {
    let dir = TempDir::new("failing");
    // The snapshot's directory does not exist: every save fails.
    let path = dir.file("missing-dir").join("p.snap");
    let store = MemoryStore::builder()
        .snapshot_file(&path)
        .snapshot_every(Duration::from_millis(10))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        if let Some(e) = store.take_snapshot_error() {
            break e;
        }
        assert!(Instant::now() < deadline, "no error reported within 10 s");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(matches!(err, SnapshotError::Io(_)), "{err:?}");
    assert!(matches!(
        store.save_snapshot(&path),
        Err(Error::Snapshot(SnapshotError::Io(_)))
    ));
}

/// The child half of the crash test: saves snapshots of a changing store in a loop until it
/// is killed.
fn crash_child(path: &Path) -> ! {
    let store = MemoryStore::new();
    let mut round = 0u64;
    loop {
        round += 1;
        // Vary the size so that files of different lengths replace each other.
        for i in 0..(round % 50) * 20 {
            store
                .set(&format!("r{round}-{i}"), &lasting(&store, 600, round))
                .unwrap();
        }
        if round % 7 == 0 {
            store.clear();
        }
        store.save_snapshot(path).unwrap();
    }
}

#[test]
fn a_writer_killed_mid_save_leaves_a_loadable_snapshot() {
    if let Ok(path) = std::env::var("EVANESCE_CRASH_CHILD") {
        crash_child(Path::new(&path));
    }
    let dir = TempDir::new("crash");
    let path = dir.file("crash.snap");
    let exe = std::env::current_exe().unwrap();
    let mut saw_a_file = 0;
    for kill in 0..20u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "a_writer_killed_mid_save_leaves_a_loadable_snapshot",
                "--nocapture",
            ])
            .env("EVANESCE_CRASH_CHILD", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill it at a different moment each time (it saves every few milliseconds).
        std::thread::sleep(Duration::from_millis(30 + (kill * 37) % 90));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        if path.exists() {
            saw_a_file += 1;
            let store = MemoryStore::new();
            if let Err(e) = store.load_snapshot(&path) {
                panic!("after kill {kill}: {e}");
            }
        }
    }
    assert!(saw_a_file > 0, "the child never saved a snapshot");
}
