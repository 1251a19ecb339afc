//! Where a write's time goes: one kind of write, repeated, for instruction counts under
//! `valgrind --tool=callgrind` (counts are repeatable whatever else the machine runs; wall
//! clock on a shared 2-core VM is not) and for `perf`.
//!
//! ```sh
//! cargo build --release --example write_path
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p \
//!     target/release/examples/write_path insert_new 200000
//! callgrind_annotate /tmp/cg.<pid> | head -40
//! ```
//!
//! Kinds (`KIND [N]`, N operations measured after a setup that is not counted separately; the
//! program prints the instructions of the setup phase boundary as a marker only):
//! - `insert_new`: N inserts of distinct keys into an unbounded cache pre-sized for them;
//! - `insert_grow`: the same into a cache that starts small and grows;
//! - `replace`: N replacements cycling over 1,024 resident keys (unbounded);
//! - `replace_hot`: N replacements of one key;
//! - `evict`: N inserts of distinct keys into a cache bounded at 2^16 with a time to live
//!   (every insert evicts once the cache is full);
//! - `replace_bounded`: N replacements of 2^15 resident keys (scattered) in a cache bounded at
//!   2^16 with a time to live (no evictions);
//! - `remove`: N inserts then N removals of the same keys (both counted);
//! - `mixed_90`: N operations, 90% gets and 10% inserts over 2^17 keys, bounded at 2^16 with a
//!   time to live;
//! - `get_hit`, `get_hit_bounded`: N reads of 2^15 resident keys (unbounded and pre-sized;
//!   bounded at 2^16 with a time to live), the read path for comparison;
//! - `get_hit_grown`: the same as `get_hit` in a cache built without a size (its table and
//!   node arena grew to hold the keys);
//! - `get_or_insert_hit`: N `get_or_insert_with` calls of resident keys (as `get_hit`);
//! - `session_set`, `session_touch`, `session_get`: the session store's methods on 1,024
//!   express-session-shaped sessions (about 200 bytes of data each);
//! - `record_set`: the same data as tower-sessions `Record`s, through the store's `set`;
//! - `record_save`: the same through tower-sessions' `SessionStore::save` (what an axum app
//!   calls: the id's text is made on every call).
//!
//! Divide callgrind's total (minus a run with N = 0 for the setup) by N for instructions per
//! operation.

use std::hint::black_box;
use std::time::{Duration, Instant};

use evanesce::Cache;

/// The output of a future that completes without waiting (the store's `SessionStore` methods
/// never wait).
fn ready<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the store's future waited"),
    }
}

fn key(i: u64) -> u64 {
    // A bijective mix, so that keys spread over shards and buckets like hashed data.
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i >> 29)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "insert_new".into());
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let started = Instant::now();
    match kind.as_str() {
        "insert_new" | "insert_grow" => {
            let mut b = Cache::builder();
            if kind == "insert_new" {
                b = b.initial_capacity(n as usize);
            }
            let cache: Cache<u64, u64> = b.build().unwrap();
            for i in 0..n {
                cache.insert(key(i), i);
            }
            black_box(&cache);
        }
        "replace" | "replace_hot" => {
            let keys = if kind == "replace" { 1024 } else { 1 };
            let cache: Cache<u64, u64> = Cache::builder().initial_capacity(1024).build().unwrap();
            for i in 0..keys {
                cache.insert(key(i), i);
            }
            for i in 0..n {
                cache.insert(key(i % keys), i);
            }
            black_box(&cache);
        }
        "replace_bounded" => {
            let cache: Cache<u64, u64> = Cache::builder()
                .max_capacity(1 << 16)
                .time_to_live(Duration::from_secs(3600))
                .build()
                .unwrap();
            for i in 0..(1 << 15) {
                cache.insert(key(i), i);
            }
            for i in 0..n {
                // Resident keys in a scattered order (an odd stride over 2^15).
                cache.insert(key((i * 0x9E37) & ((1 << 15) - 1)), i);
            }
            black_box(&cache);
        }
        "evict" => {
            let cache: Cache<u64, u64> = Cache::builder()
                .max_capacity(1 << 16)
                .time_to_live(Duration::from_secs(3600))
                .build()
                .unwrap();
            for i in 0..(1 << 16) {
                cache.insert(key(i), i);
            }
            for i in 0..n {
                cache.insert(key((1 << 16) + i), i);
            }
            black_box(&cache);
        }
        "remove" => {
            let cache: Cache<u64, u64> = Cache::builder()
                .initial_capacity(n as usize)
                .build()
                .unwrap();
            for i in 0..n {
                cache.insert(key(i), i);
            }
            for i in 0..n {
                black_box(cache.remove(&key(i)));
            }
        }
        "mixed_90" => {
            let cache: Cache<u64, u64> = Cache::builder()
                .max_capacity(1 << 16)
                .time_to_live(Duration::from_secs(3600))
                .build()
                .unwrap();
            let mut x = 1u64;
            for i in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let k = key(x % (1 << 17));
                if i % 10 == 0 {
                    cache.insert(k, i);
                } else {
                    black_box(cache.get(&k));
                }
            }
        }
        "get_hit" | "get_hit_bounded" | "get_hit_grown" => {
            let builder = Cache::builder();
            let builder = if kind == "get_hit" {
                builder.initial_capacity(1 << 16)
            } else if kind == "get_hit_grown" {
                builder
            } else {
                builder
                    .max_capacity(1 << 16)
                    .time_to_live(Duration::from_secs(3600))
            };
            let cache: Cache<u64, u64> = builder.build().unwrap();
            for i in 0..(1 << 15) {
                cache.insert(key(i), i);
            }
            for i in 0..n {
                black_box(cache.get(&key(i & ((1 << 15) - 1))));
            }
        }
        "get_or_insert_hit" => {
            let cache: Cache<u64, u64> =
                Cache::builder().initial_capacity(1 << 16).build().unwrap();
            for i in 0..(1 << 15) {
                cache.insert(key(i), i);
            }
            for i in 0..n {
                black_box(cache.get_or_insert_with(key(i & ((1 << 15) - 1)), || unreachable!()));
            }
        }
        "session_set" | "session_touch" | "session_get" => {
            use evanesce::session::{Cookie, MemoryStore, Session};
            let store = MemoryStore::builder().build().unwrap();
            let wall = store.now();
            let make = |i: u64, secs: u64| {
                let mut s =
                    Session::with_cookie(Cookie::expiring_in(Duration::from_secs(secs), wall));
                s.insert("views", i % 97);
                s.insert(
                    "user",
                    serde_json::json!({"id": i, "name": format!("user-{i}"), "roles": ["reader", "commenter"]}),
                );
                s.insert("csrf", format!("{:032x}", i * 7919));
                s.insert("flash", serde_json::json!([]));
                s
            };
            const IDS: u64 = 1024;
            let ids: Vec<String> = (0..IDS).map(|i| format!("sid-{:016x}", key(i))).collect();
            let sessions: Vec<Session> = (0..IDS).map(|i| make(i, 3600)).collect();
            let renewed: Vec<Session> = (0..IDS).map(|i| make(i, 7200)).collect();
            for (id, s) in ids.iter().zip(&sessions) {
                store.set(id, s).unwrap();
            }
            for i in 0..n as usize {
                let j = i % IDS as usize;
                match kind.as_str() {
                    "session_set" => store.set(&ids[j], &sessions[j]).unwrap(),
                    "session_touch" => {
                        black_box(store.touch(&ids[j], &renewed[j]).unwrap());
                    }
                    _ => {
                        black_box(store.get(&ids[j]).unwrap());
                    }
                }
            }
        }
        "record_set" | "record_save" => {
            use evanesce::integrations::tower_sessions::record_store;
            use tower_sessions::session::{Id, Record};
            let store = record_store().build().unwrap();
            let expiry = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
            const IDS: usize = 1024;
            let records: Vec<Record> = (0..IDS)
                .map(|i| {
                    let mut data = std::collections::HashMap::new();
                    data.insert("views".to_string(), serde_json::json!(i % 97));
                    data.insert(
                        "user".to_string(),
                        serde_json::json!({"id": i, "name": format!("user-{i}"), "roles": ["reader", "commenter"]}),
                    );
                    data.insert("csrf".to_string(), serde_json::json!(format!("{:032x}", i * 7919)));
                    data.insert("flash".to_string(), serde_json::json!([]));
                    Record { id: Id(key(i as u64) as i128), data, expiry_date: expiry }
                })
                .collect();
            let ids: Vec<String> = records.iter().map(|r| r.id.to_string()).collect();
            for (id, r) in ids.iter().zip(&records) {
                store.set(id, r).unwrap();
            }
            if kind == "record_save" {
                use tower_sessions::session_store::SessionStore;
                for i in 0..n as usize {
                    ready(store.save(&records[i % IDS])).unwrap();
                }
            } else {
                for i in 0..n as usize {
                    let j = i % IDS;
                    store.set(&ids[j], &records[j]).unwrap();
                }
            }
        }
        other => {
            eprintln!("unknown kind {other:?}");
            std::process::exit(2);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{kind} {n}: {secs:.3} s, {:.1} ns/op (wall clock, noisy)",
        secs * 1e9 / n.max(1) as f64
    );
}
