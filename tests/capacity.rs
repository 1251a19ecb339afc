//! A bound is a ceiling, not a reservation (issue 12): building a cache or a session store
//! with any capacity takes memory for what it holds, not for the capacity, and an allocation
//! the machine cannot make is a typed error, never an abort.
//!
//! One test per process phase: this file is its own test binary, and the resident-set checks
//! run in one test so that no other test of the binary allocates meanwhile.

use std::process::Command;
use std::time::Duration;

use evanesce::session::MemoryStore;
use evanesce::{BuildError, Cache};

/// The process's resident set in bytes (`/proc/self/statm`; Linux).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

const MIB: u64 = 1 << 20;

#[test]
fn huge_capacities_cost_nothing_until_used() {
    let before = rss();
    // Before: `max(100_000_000)` took 1.05 GB at build, `max_capacity(1_000_000_000)` aborted
    // the process, and `u64::MAX / 2` was refused as an "initial capacity" nobody set.
    let caches: Vec<Cache<u64, u64>> = [u64::MAX / 2, u64::MAX, 1_000_000_000, 100_000_000]
        .into_iter()
        .map(|capacity| {
            Cache::builder()
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(60))
                .build()
                .unwrap_or_else(|e| panic!("max_capacity({capacity}): {e}"))
        })
        .collect();
    let weighed: Cache<u64, u64> = Cache::builder()
        .max_capacity(u64::MAX / 2)
        .weigher(|_, _| 100)
        .build()
        .unwrap();
    let stores: Vec<MemoryStore> = [100_000_000, u64::MAX]
        .into_iter()
        .map(|max| {
            MemoryStore::builder()
                .max(max)
                .build()
                .unwrap_or_else(|e| panic!("max({max}): {e}"))
        })
        .collect();
    let grown = rss() - before;
    assert!(
        grown < 16 * MIB,
        "building took {} MiB of resident memory",
        grown / MIB
    );
    // They work, and grow with what they hold.
    for cache in caches.iter().chain([&weighed]) {
        for k in 0..100_000 {
            cache.insert(k, k);
        }
        assert_eq!(cache.len(), 100_000);
        assert_eq!(cache.get(&99_999), Some(99_999));
    }
    for store in &stores {
        store
            .set("sid", &evanesce::session::Session::new())
            .unwrap();
        assert_eq!(store.length(), 1);
    }
    let used = rss() - before;
    assert!(used < 128 * MIB, "500,000 entries took {} MiB", used / MIB);
}

/// Runs the ignored test `name` of this binary in a child process whose address space is
/// limited to `limit_kib` (so that a failure to refuse cannot exhaust the machine), and checks
/// that it passed.
fn in_limited_child(name: &str, limit_kib: u64) {
    let exe = std::env::current_exe().unwrap();
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(
            r#"ulimit -v {limit_kib} && exec "$0" --exact {name} --ignored --nocapture --test-threads 1"#
        ))
        .arg(&exe)
        .env("EVANESCE_ALLOC_CHILD", "1")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("CHILD-OK"),
        "the child failed ({:?}):\n{stdout}\n{stderr}",
        output.status
    );
}

/// The child half of `an_allocation_the_machine_refuses_is_an_error`: run under a limit of the
/// address space, it asks for tables far larger than the limit.
#[test]
#[ignore = "run by an_allocation_the_machine_refuses_is_an_error, under ulimit -v"]
fn child_asks_for_too_much() {
    if std::env::var_os("EVANESCE_ALLOC_CHILD").is_none() {
        return;
    }
    // 2^28 entries per shard: 2 GiB of buckets per shard, over the 1 GiB limit.
    let built = Cache::<u64, u64>::builder()
        .shards(1)
        .initial_capacity(1 << 28)
        .build()
        .map(|_| ());
    assert_eq!(built, Err(BuildError::OutOfMemory));
    // The process goes on: a small cache still builds and works.
    let cache: Cache<u64, u64> = Cache::builder().max_capacity(1000).build().unwrap();
    cache.insert(1, 1);
    assert_eq!(cache.get(&1), Some(1));
    println!("CHILD-OK");
}

#[test]
fn an_allocation_the_machine_refuses_is_an_error() {
    in_limited_child("child_asks_for_too_much", 1 << 20);
}

/// The child half of `an_initial_capacity_beyond_the_machine_is_refused`.
#[test]
#[ignore = "run by an_initial_capacity_beyond_the_machine_is_refused, under ulimit -v"]
fn child_asks_for_more_than_the_machine() {
    if std::env::var_os("EVANESCE_ALLOC_CHILD").is_none() {
        return;
    }
    // 4096 shards of 2^28 entries: each shard's tables fit the per-shard limit, together
    // they are terabytes of buckets (written at once, so committed: under overcommit each
    // allocation succeeded on its own and the build exhausted the machine's memory).
    let built = Cache::<u64, u64>::builder()
        .shards(4096)
        .initial_capacity(1 << 40)
        .build()
        .map(|_| ());
    assert!(
        matches!(built, Err(BuildError::CapacityTooLarge(_))),
        "{built:?}"
    );
    println!("CHILD-OK");
}

/// Issue 12's review: an initial capacity whose tables exceed the machine's memory is a typed
/// error at once (before, each shard's table was allocated and filled until memory ran out).
#[test]
fn an_initial_capacity_beyond_the_machine_is_refused() {
    in_limited_child("child_asks_for_more_than_the_machine", 4 << 20);
}
