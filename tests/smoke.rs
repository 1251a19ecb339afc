#![allow(clippy::disallowed_types)]
use evanesce::{Cache, RemovalCause};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[test]
fn basic_ops_and_growth() {
    let cache: Cache<u64, u64> = Cache::builder().shards(2).build().unwrap();
    for i in 0..100_000 {
        cache.insert(i, i * 2);
    }
    assert_eq!(cache.len(), 100_000);
    for i in 0..100_000 {
        assert_eq!(cache.get(&i), Some(i * 2), "key {i}");
    }
    for i in 0..100_000 {
        cache.insert(i, i * 3);
    }
    assert_eq!(cache.len(), 100_000);
    for i in (0..100_000).step_by(2) {
        assert_eq!(cache.remove(&i), Some(i * 3));
    }
    cache.run_pending_tasks();
    cache.run_pending_tasks();
    assert_eq!(cache.len(), 50_000);
    for i in 0..100_000 {
        let expect = if i % 2 == 0 { None } else { Some(i * 3) };
        assert_eq!(cache.get(&i), expect, "key {i}");
    }
    assert_eq!(cache.iter().count(), 50_000);
}

#[test]
fn listener_and_drops() {
    let drops = Arc::new(AtomicUsize::new(0));
    struct D(Arc<AtomicUsize>);
    impl Clone for D { fn clone(&self) -> Self { self.0.fetch_add(0, Ordering::Relaxed); D(self.0.clone()) } }
    impl Drop for D { fn drop(&mut self) { self.0.fetch_add(1, Ordering::Relaxed); } }
    let notes = Arc::new(AtomicUsize::new(0));
    let n2 = notes.clone();
    let cache: Cache<u64, Arc<D>> = Cache::builder()
        .eviction_listener(move |_, _, c| { assert!(c == RemovalCause::Replaced || c == RemovalCause::Explicit); n2.fetch_add(1, Ordering::Relaxed); })
        .build().unwrap();
    for i in 0..10_000 { cache.insert(i % 1000, Arc::new(D(drops.clone()))); }
    for i in 0..500 { cache.remove(&i); }
    assert_eq!(notes.load(Ordering::Relaxed), 9000 + 500);
    drop(cache);
    for _ in 0..1000 { crossbeam_epoch::pin().flush(); }
    assert_eq!(drops.load(Ordering::Relaxed), 10_000);
}
