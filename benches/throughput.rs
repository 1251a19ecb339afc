//! Throughput of `evanesce` and its peers (quick_cache, moka, papaya, dashmap) under the
//! workloads of the performance contract, with criterion.
//!
//! ```text
//! cargo bench --bench throughput                      # everything: 50 benches, about 4-5 minutes
//! cargo bench --bench throughput -- mixed_100/2t      # one group (a regex on the bench ids)
//! cargo bench --bench throughput -- 'evanesce$'       # one cache in every group
//! cargo bench --bench throughput -- --test            # run each bench once, as a smoke test
//! ```
//!
//! Bench ids are `<workload>/<threads>t/<cache>`, e.g. `mixed_90/2t/papaya`; the reported
//! throughput counts operations (gets and inserts) of all threads together. The workloads, the
//! caches and the timed loop live in `examples/compare.rs`, included here as a module, so this
//! bench and the interleaved comparison measure exactly the same things; see that file for the
//! workloads. Criterion runs one bench after another, so on a shared machine the ratios between
//! caches drift with the load; the README's figures come from
//! `cargo run --release --example compare`, which interleaves them.
//!
//! Every variant uses `iter_custom`: the worker threads are spawned once per sample, wait on a
//! `Barrier`, and the sample's time runs from their release to the last thread's end. One
//! iteration is [`ITER_OPS`] operations per thread; in a sample, each thread runs
//! `iters * ITER_OPS` operations of its own pre-generated stream of [`STREAM_LEN`] operations,
//! going on where the previous sample stopped and wrapping around at the end, so that every
//! cache, fast or slow, sees the whole stream rather than its first few thousand keys.
//!
//! Each cache is built and populated (untimed) the first time its bench runs: once per cache
//! for all the read-only workloads, and afresh for each `insert` and `mixed_90` bench, where it
//! then fills up with new keys over the warm-up and the samples (at most the 2^20 keys of the
//! key space, within every cache's capacity).

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[path = "../examples/compare.rs"]
#[allow(dead_code)] // The example's reporting code is not used here.
mod compare;

use compare::{Runnable, Workload, variants};

/// Length of each thread's stream (16 MiB).
const STREAM_LEN: usize = 1 << 20;

/// Operations per thread in one criterion iteration: 1 to 20 ms, depending on the cache.
const ITER_OPS: u64 = 1 << 14;

/// The thread counts measured.
const THREADS: [usize; 2] = [1, 2];

fn throughput(c: &mut Criterion) {
    let variants = variants();
    let max_threads = THREADS.iter().copied().max().unwrap_or(1);
    // One populated cache per variant for all the read-only workloads, built on first use (so
    // that benches filtered out cost nothing); the others get a fresh one per bench.
    let mut shared: Vec<Option<Box<dyn Runnable>>> = variants.iter().map(|_| None).collect();
    for workload in Workload::ALL {
        let streams = workload.streams(max_threads, STREAM_LEN);
        for threads in THREADS {
            let streams = &streams[..threads];
            let mut group = c.benchmark_group(format!("{}/{threads}t", workload.name()));
            group.throughput(Throughput::Elements(threads as u64 * ITER_OPS));
            for (variant, shared) in variants.iter().zip(&mut shared) {
                let mut fresh: Option<Box<dyn Runnable>> = None;
                let slot = if workload.mutates() {
                    &mut fresh
                } else {
                    shared
                };
                let mut cursor = 0;
                group.bench_function(variant.name, |b| {
                    let cache = slot.get_or_insert_with(|| variant.populated());
                    b.iter_custom(|iters| {
                        let count = iters * ITER_OPS;
                        let run = cache.run(streams, cursor, count, None);
                        cursor = ((cursor as u64 + count) % STREAM_LEN as u64) as usize;
                        run.elapsed
                    });
                });
            }
            group.finish();
        }
    }
}

criterion_group! {
    name = benches;
    // No plots: drawing them takes longer than measuring.
    config = Criterion::default()
        .without_plots()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = throughput
}
criterion_main!(benches);
