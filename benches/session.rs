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
//!
//! What a request hands the store is what a server has in hand: the id (from the cookie it
//! just parsed) and, for `set` and `touch`, the session it just loaded or changed. So the
//! stored sessions are 100K, spread over memory as a store's are, but the request side comes
//! from small per-thread pools (the ids from one compact array, 16 or 22 bytes each, the
//! records and sessions from 16 per thread, each given the picked session's id where the call
//! takes it from the record). The pools' renewed sessions each have their own expiry, so a
//! touch almost always rewrites the stored session, as express-session's does (its `expires`
//! moves with every request); until 2026-12-07 every renewed session had the same expiry, so
//! after the first touch of a session the next ones found its bytes unchanged and only moved
//! its lifetime. Until then, too, every operation read its own one of 100K
//! prepared records or sessions (a cold tree of a dozen allocations): about a third of a JSON
//! `touch`'s time went to those misses (`docs/perf-log.md`), the same for every store, which
//! a server never pays.

mod common;

use common::Op;

use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use evanesce::integrations::tower_sessions::{RecordStore, record_store};
use evanesce::session::{Cookie, MemoryStore, Session};
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::SessionStore;

const SESSIONS: usize = 100_000;
const THREADS: usize = 2;
/// Operations per thread in one criterion iteration.
const ITER_OPS: u64 = 1 << 10;

/// Request-side objects per thread: records and sessions as a handler holds them.
const POOL: usize = 16;

/// Length of a tower-sessions id's text (22 base64 characters), also the JSON store's ids.
const ID_LEN: usize = 22;

/// The stored sessions (to populate the stores), the ids of all of them, and each thread's
/// pool of request-side records and sessions (see the module documentation).
struct Fixture {
    records: Vec<Record>,
    json: Vec<Session>,
    /// `ids[i]` is `records[i].id`.
    ids: Vec<Id>,
    /// `id_texts[i]` is the text of `ids[i]`, the JSON store's id for `json[i]`.
    id_texts: Vec<[u8; ID_LEN]>,
    /// Taken by the thread's `run` while it runs.
    pools: Vec<Mutex<Option<Pool>>>,
}

/// One thread's request-side objects: records and sessions as they are saved (`set`) and
/// with an expiry an hour later, each a second apart from the others (`touch`).
struct Pool {
    records: Vec<Record>,
    renewed: Vec<Record>,
    json: Vec<Session>,
    json_renewed: Vec<Session>,
}

impl Fixture {
    fn new() -> Self {
        // The pools renew their own records below; the 100K renewed ones go at once.
        let (records, _) = common::records(SESSIONS, 0x5eed_0000_0000_0000_0000_0000_0000_0000);
        let ids: Vec<Id> = records.iter().map(|r| r.id).collect();
        let id_texts = ids
            .iter()
            .map(|id| {
                let text = id.to_string();
                text.as_bytes().try_into().expect("a 22-character id")
            })
            .collect();
        let wall = std::time::SystemTime::now();
        let json_session = |i: usize, max_age: Duration| {
            let mut s = Session::with_cookie(Cookie::expiring_in(max_age, wall));
            for (k, v) in common::data(i) {
                s.insert(k, v);
            }
            s
        };
        let json: Vec<Session> = (0..SESSIONS)
            .map(|i| json_session(i, Duration::from_secs(3600)))
            .collect();
        // Every renewed record and session of the pools has its own expiry (an hour later, and
        // a second apart from the others), so that a touch rewrites the stored bytes (as
        // express-session's touch does, whose `expires` moves with every request) rather than
        // finding them unchanged.
        let pools = (0..THREADS)
            .map(|t| {
                let picked = t * POOL..(t + 1) * POOL;
                Mutex::new(Some(Pool {
                    records: records[picked.clone()].to_vec(),
                    renewed: picked
                        .clone()
                        .map(|k| Record {
                            expiry_date: records[k].expiry_date
                                + time::Duration::seconds(3600 + k as i64),
                            ..records[k].clone()
                        })
                        .collect(),
                    json: json[picked.clone()].to_vec(),
                    json_renewed: picked
                        .map(|k| json_session(k, Duration::from_secs(7200 + k as u64)))
                        .collect(),
                }))
            })
            .collect();
        Self {
            records,
            json,
            ids,
            id_texts,
            pools,
        }
    }

    /// The text of session `i`'s id.
    fn id_text(&self, i: usize) -> &str {
        std::str::from_utf8(&self.id_texts[i]).expect("base64 is ASCII")
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
                    Subject::EvanesceJson(s) => s.set(f.id_text(i), &f.json[i]).unwrap(),
                }
            }
        });
        // Every operation below must find its session (a store left empty would measure
        // misses, or fail the asserts in `run`).
        match self {
            Subject::Evanesce(s) => assert_eq!(s.length(), f.records.len()),
            Subject::EvanesceJson(s) => assert_eq!(s.length(), f.json.len()),
            Subject::Tower(_) => {}
        }
        self
    }

    /// `n` operations on sessions picked by a per-thread random sequence, with the thread's
    /// pool as the request side (the `j`-th object of the pool for the `j`-th operation,
    /// round the pool, carrying the picked session's id where the call reads it there).
    async fn run(&self, f: &Fixture, op: Op, thread: usize, n: u64) {
        let mut pool = f.pools[thread]
            .lock()
            .expect("a pool")
            .take()
            .expect("one run per thread at a time");
        let mut x = 0x2545_f491_4f6c_dd1d_u64 ^ (thread as u64 + 1).wrapping_mul(0x9e37_79b9);
        for k in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % SESSIONS as u64) as usize;
            let j = k as usize % POOL;
            match (self, op) {
                (Subject::Evanesce(s), Op::Get) => {
                    assert!(s.load(&f.ids[i]).await.unwrap().is_some());
                }
                (Subject::Tower(s), Op::Get) => {
                    assert!(s.load(&f.ids[i]).await.unwrap().is_some());
                }
                (Subject::EvanesceJson(s), Op::Get) => {
                    assert!(s.get(f.id_text(i)).unwrap().is_some());
                }
                (Subject::Evanesce(s), Op::Set) => {
                    pool.records[j].id = f.ids[i];
                    s.save(&pool.records[j]).await.unwrap();
                }
                (Subject::Tower(s), Op::Set) => {
                    pool.records[j].id = f.ids[i];
                    s.save(&pool.records[j]).await.unwrap();
                }
                (Subject::EvanesceJson(s), Op::Set) => {
                    s.set(f.id_text(i), &pool.json[j]).unwrap();
                }
                (Subject::Evanesce(s), Op::Touch) => {
                    assert!(s.touch(f.id_text(i), &pool.renewed[j]).unwrap());
                }
                (Subject::Tower(s), Op::Touch) => {
                    pool.renewed[j].id = f.ids[i];
                    s.save(&pool.renewed[j]).await.unwrap();
                }
                (Subject::EvanesceJson(s), Op::Touch) => {
                    assert!(s.touch(f.id_text(i), &pool.json_renewed[j]).unwrap());
                }
            }
        }
        *f.pools[thread].lock().expect("a pool") = Some(pool);
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
