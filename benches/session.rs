//! Session store throughput: `get`, `set` and `touch` on 100K live express-session-shaped
//! sessions, 2 threads, evanesce's store against tower-sessions' own `MemoryStore`, in one
//! criterion run.
//!
//! ```text
//! cargo bench --bench session
//! cargo bench --bench session -- --test      # each bench once, as a smoke test
//! ```
//!
//! Bench ids are `session/<op>/<store>`; throughput counts the operations of both threads.
//!
//! - `evanesce` and `tower-sessions`: tower-sessions `Record`s through the `SessionStore`
//!   trait (`load` for get, `save` for set), which is how an axum app uses either store;
//!   touch is what each store offers to renew a session's expiry without changing its data:
//!   evanesce's `touch`, and for tower-sessions' store (which has none) a `save` of the record
//!   with its new expiry date.
//! - `evanesce-json`: evanesce's own API on express-session JSON ([`Session`]), as a
//!   memorystore user would call it.
//!
//! Each thread picks sessions uniformly at random among the 100K (a fixed sequence per
//! thread). Records carry about 200 bytes of data: a view counter, a user object, a CSRF
//! token and an empty flash list.

mod common;

use common::Op;

use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use evanesce::integrations::tower_sessions::{RecordStore, record_store};
use evanesce::session::{Cookie, MemoryStore, Session};
use tower_sessions::session::Record;
use tower_sessions::session_store::SessionStore;

const SESSIONS: usize = 100_000;
const THREADS: usize = 2;
/// Operations per thread in one criterion iteration.
const ITER_OPS: u64 = 1 << 10;

/// The sessions, and the same sessions with an expiry an hour later (for touch).
struct Fixture {
    records: Vec<Record>,
    renewed: Vec<Record>,
    ids: Vec<String>,
    json: Vec<Session>,
    json_renewed: Vec<Session>,
}

impl Fixture {
    fn new() -> Self {
        let (records, renewed) =
            common::records(SESSIONS, 0x5eed_0000_0000_0000_0000_0000_0000_0000);
        let ids = records.iter().map(|r| r.id.to_string()).collect();
        let wall = std::time::SystemTime::now();
        let json_session = |i: usize, max_age: Duration| {
            let mut s = Session::with_cookie(Cookie::expiring_in(max_age, wall));
            for (k, v) in common::data(i) {
                s.insert(k, v);
            }
            s
        };
        let json = (0..SESSIONS)
            .map(|i| json_session(i, Duration::from_secs(3600)))
            .collect();
        let json_renewed = (0..SESSIONS)
            .map(|i| json_session(i, Duration::from_secs(7200)))
            .collect();
        Self {
            records,
            renewed,
            ids,
            json,
            json_renewed,
        }
    }
}

/// A store under test.
enum Subject {
    Evanesce(RecordStore),
    Tower(tower_sessions::MemoryStore),
    EvanesceJson(MemoryStore),
}

impl Subject {
    fn name(&self) -> &'static str {
        match self {
            Subject::Evanesce(_) => "evanesce",
            Subject::Tower(_) => "tower-sessions",
            Subject::EvanesceJson(_) => "evanesce-json",
        }
    }

    fn populated(&self, f: &Fixture, rt: &tokio::runtime::Runtime) -> &Self {
        rt.block_on(async {
            for (i, record) in f.records.iter().enumerate() {
                match self {
                    // `create`: evanesce's `save` only updates a live session (Redis's
                    // `SET XX`), as tower-sessions creates through `create`.
                    Subject::Evanesce(s) => {
                        let mut created = record.clone();
                        s.create(&mut created).await.unwrap();
                        assert_eq!(created.id, record.id, "an id collision in a fresh store");
                    }
                    Subject::Tower(s) => s.save(record).await.unwrap(),
                    Subject::EvanesceJson(s) => s.set(&f.ids[i], &f.json[i]).unwrap(),
                }
            }
        });
        // Every operation below must find its session (a store left empty would measure
        // misses, or fail the asserts in `run`).
        match self {
            Subject::Evanesce(s) => assert_eq!(s.length(), f.records.len()),
            Subject::EvanesceJson(s) => assert_eq!(s.length(), f.ids.len()),
            Subject::Tower(_) => {}
        }
        self
    }

    /// `n` operations on sessions picked by a per-thread random sequence.
    async fn run(&self, f: &Fixture, op: Op, thread: usize, n: u64) {
        let mut x = 0x2545_f491_4f6c_dd1d_u64 ^ (thread as u64 + 1).wrapping_mul(0x9e37_79b9);
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % SESSIONS as u64) as usize;
            match (self, op) {
                (Subject::Evanesce(s), Op::Get) => {
                    assert!(s.load(&f.records[i].id).await.unwrap().is_some());
                }
                (Subject::Tower(s), Op::Get) => {
                    assert!(s.load(&f.records[i].id).await.unwrap().is_some());
                }
                (Subject::EvanesceJson(s), Op::Get) => {
                    assert!(s.get(&f.ids[i]).unwrap().is_some());
                }
                (Subject::Evanesce(s), Op::Set) => s.save(&f.records[i]).await.unwrap(),
                (Subject::Tower(s), Op::Set) => s.save(&f.records[i]).await.unwrap(),
                (Subject::EvanesceJson(s), Op::Set) => s.set(&f.ids[i], &f.json[i]).unwrap(),
                (Subject::Evanesce(s), Op::Touch) => {
                    assert!(s.touch(&f.ids[i], &f.renewed[i]).unwrap());
                }
                (Subject::Tower(s), Op::Touch) => s.save(&f.renewed[i]).await.unwrap(),
                (Subject::EvanesceJson(s), Op::Touch) => {
                    assert!(s.touch(&f.ids[i], &f.json_renewed[i]).unwrap());
                }
            }
        }
    }
}

fn sessions(c: &mut Criterion) {
    let fixture = Fixture::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime");
    let subjects = [
        Subject::Evanesce(record_store().build().expect("a store")),
        Subject::Tower(tower_sessions::MemoryStore::default()),
        Subject::EvanesceJson(MemoryStore::new()),
    ];
    for subject in &subjects {
        subject.populated(&fixture, &rt);
    }
    for op in [Op::Get, Op::Set, Op::Touch] {
        let mut group = c.benchmark_group(format!("session/{}", op.name()));
        group.throughput(Throughput::Elements(THREADS as u64 * ITER_OPS));
        for subject in &subjects {
            group.bench_function(subject.name(), |b| {
                b.iter_custom(|iters| {
                    let barrier = Barrier::new(THREADS + 1);
                    std::thread::scope(|s| {
                        for t in 0..THREADS {
                            let (barrier, fixture) = (&barrier, &fixture);
                            s.spawn(move || {
                                let rt = tokio::runtime::Builder::new_current_thread()
                                    .build()
                                    .expect("a tokio runtime");
                                barrier.wait();
                                rt.block_on(subject.run(fixture, op, t, iters * ITER_OPS));
                            });
                        }
                        barrier.wait();
                        let start = Instant::now();
                        // The scope joins the threads before returning.
                        start
                    })
                    .elapsed()
                });
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = sessions
}
criterion_main!(benches);
