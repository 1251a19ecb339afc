//! Hit ratio of `evanesce` and its peers on real, third-party cache traces and on seeded
//! synthetic workloads.
//!
//! ```text
//! cargo run --release --example hit_ratio
//! TRACE=oltp,loop SYNTH=none cargo run --release --example hit_ratio
//! TRACE=none SYNTH=sweep,phases CACHES=evanesce,lru cargo run --release --example hit_ratio
//! TRACE=none SYNTH=phases TIMELINE=phases:4000 cargo run --release --example hit_ratio
//! ```
//!
//! Every cache is driven the same way, single-threaded: for each request, `get` the key, and on
//! a miss `insert` it. The hit ratio is hits / requests, in percent. The caches:
//!
//! - `evanesce`: the real [`evanesce::Cache`] with `max_capacity(size)` and the default shard
//!   count (what a user gets; the `shards` column shows it), and again with `.shards(1)`, so
//!   that the cost of sharding is visible. Both use std's `DefaultHasher` with its fixed keys
//!   instead of the randomly seeded default, so that every run gives the same figures.
//! - `moka` (`moka::sync::Cache` with `max_capacity(size)`), with `run_pending_tasks()` after
//!   every insert so that its admission and eviction decisions are made before the next
//!   request. moka seeds its hasher randomly, so its figure is the mean of `MOKA_RUNS` runs.
//! - `quick_cache` (`quick_cache::unsync::Cache::new(size)`) and a plain LRU (`lru::LruCache`).
//!
//! The workloads are the traces of `../shared/traces` and the synthetic shapes of
//! `tests/shapes` (back-and-forth sweeps, a sliding window, a working set that shifts, regimes
//! that alternate, a loop, Zipf at four skews, scans over a hot set), each generated from a
//! fixed seed. The target for evanesce in each cell is `max(LRU, moka, quick_cache) - 1`
//! percentage point; `margin` is evanesce minus that target. OPT (Belady) is copied from the
//! traces' README where it gives one.
//!
//! Environment variables (all optional):
//! - `TRACES`: the trace directory (default `../shared/traces` from the crate root).
//! - `TRACE`: comma-separated subset of `oltp,gli,loop,sprite,multi2,web12,scarab`, or `none`.
//! - `SYNTH`: comma-separated subset of the synthetic shapes (see `tests/shapes/mod.rs`), or
//!   `none`.
//! - `CACHES`: comma-separated subset of `evanesce,evanesce1,moka,quick_cache,lru`.
//! - `MOKA_RUNS` (default 3): runs of moka per cell.
//! - `SEEDS` (default 1): hashers evanesce runs with per cell (both columns give the mean). The
//!   first is std's `DefaultHasher` with fixed keys (the table's figures); the others the same
//!   fed a seed 1, 2, ... first (`shapes::Seeded`, alike on every little-endian machine). The
//!   shards, the samples of the policies' contest and the ghost's fingerprints all follow the
//!   key hashes, so some cells move by several points from one hasher to another; with `SEEDS`
//!   above 1 the report lists the spread per cell.
//! - `JOBS` (default: the available parallelism): cells measured at once. Each cache is still
//!   driven by one thread; this only runs different (cache, cell) pairs side by side.
//! - `TIMELINE=workload:size[:windows]`: instead of the table, the hit ratio of every cache
//!   over successive windows of one workload (how a policy follows a change of regime).
//!   `TIMELINE_SEED=n` runs evanesce there with the hasher `SEEDS` numbers n (default 0, the
//!   table's).
//!
//! A full run takes about 40 s on 2 cores (moka is most of it); `SEEDS=8` with
//! `CACHES=evanesce,evanesce1` about 30 s.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

#[path = "../tests/shapes/mod.rs"]
mod shapes;

/// How a trace file is encoded (see the traces' README).
#[derive(Clone, Copy)]
enum Format {
    /// zstd ASCII, lines `start count x y` standing for keys `start..start + count`.
    ArcLis,
    /// gzip ASCII, one decimal key a line; `*` and empty lines skipped, `\r` stripped.
    LirsText,
    /// xz binary, big-endian i32 per request.
    Cache2k,
    /// xz binary, big-endian i64 per request.
    Scarab,
}

struct TraceSpec {
    name: &'static str,
    file: &'static str,
    format: Format,
    sizes: &'static [u64],
    /// Requests and unique keys as the README states them, to check the reader.
    requests: usize,
    unique: usize,
}

const TRACES: [TraceSpec; 7] = [
    TraceSpec {
        name: "OLTP",
        file: "arc/OLTP.lis.zst",
        format: Format::ArcLis,
        sizes: &[1000, 2000, 5000],
        requests: 914_145,
        unique: 186_880,
    },
    TraceSpec {
        name: "gli",
        file: "lirs/gli.trace.gz",
        format: Format::LirsText,
        sizes: &[500, 1000],
        requests: 6_015,
        unique: 2_529,
    },
    TraceSpec {
        name: "loop",
        file: "lirs/loop.trace.gz",
        format: Format::LirsText,
        sizes: &[500, 750],
        requests: 505_500,
        unique: 1_011,
    },
    TraceSpec {
        name: "sprite",
        file: "lirs/sprite.trace.gz",
        format: Format::LirsText,
        sizes: &[100, 1000],
        requests: 133_996,
        unique: 7_075,
    },
    TraceSpec {
        name: "multi2",
        file: "lirs/multi2.trace.gz",
        format: Format::LirsText,
        sizes: &[1000, 2000],
        requests: 26_311,
        unique: 5_684,
    },
    TraceSpec {
        name: "web12",
        file: "cache2k/web12.trace.xz",
        format: Format::Cache2k,
        sizes: &[500, 2000],
        requests: 95_607,
        unique: 13_756,
    },
    TraceSpec {
        name: "scarab",
        file: "scarab/scarab-recs.trace.xz",
        format: Format::Scarab,
        sizes: &[10_000, 50_000],
        requests: 1_245_184,
        unique: 258_368,
    },
];

/// OPT (Belady) hit ratios from the traces' README, where it gives one.
const OPT: [(&str, u64, f64); 6] = [
    ("OLTP", 1000, 53.62),
    ("OLTP", 2000, 60.40),
    ("OLTP", 5000, 68.27),
    ("gli", 1000, 53.15),
    ("loop", 500, 49.36),
    ("loop", 750, 74.04),
];

// ---------------------------------------------------------------------------------------------
// Trace readers

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn open(path: &Path) -> AnyResult<BufReader<File>> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Ok(BufReader::with_capacity(1 << 20, file))
}

fn read_trace(path: &Path, format: Format) -> AnyResult<Vec<u64>> {
    let mut keys = Vec::new();
    match format {
        Format::ArcLis => {
            let decoder = zstd::stream::read::Decoder::new(open(path)?)?;
            for line in BufReader::new(decoder).lines() {
                let line = line?;
                let mut fields = line.split_ascii_whitespace();
                let (Some(start), Some(count)) = (fields.next(), fields.next()) else {
                    continue;
                };
                let start: u64 = start.parse()?;
                let count: u64 = count.parse()?;
                keys.extend(start..start + count);
            }
        }
        Format::LirsText => {
            let decoder = flate2::read::GzDecoder::new(open(path)?);
            for line in BufReader::new(decoder).lines() {
                let line = line?;
                let key = line.trim_end_matches('\r').trim();
                if key.is_empty() || key == "*" {
                    continue;
                }
                keys.push(key.parse::<i64>()? as u64);
            }
        }
        Format::Cache2k | Format::Scarab => {
            let mut bytes = Vec::new();
            xz2::read::XzDecoder::new(open(path)?).read_to_end(&mut bytes)?;
            let width = if matches!(format, Format::Cache2k) {
                4
            } else {
                8
            };
            if bytes.len() % width != 0 {
                return Err(format!(
                    "{}: {} bytes, not a multiple of {width}",
                    path.display(),
                    bytes.len()
                )
                .into());
            }
            keys.extend(bytes.chunks_exact(width).map(|c| {
                if width == 4 {
                    i32::from_be_bytes([c[0], c[1], c[2], c[3]]) as i64 as u64
                } else {
                    i64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as u64
                }
            }));
        }
    }
    Ok(keys)
}

// ---------------------------------------------------------------------------------------------
// The caches, each driven get-then-insert-on-miss; each returns the number of hits.

/// Returns the hits and the shard count the cache was built with; `seed` 0 is the fixed
/// `DefaultHasher` (see `SEEDS`).
fn run_evanesce(keys: &[u64], size: u64, shards: Option<usize>, seed: u64) -> (u64, usize) {
    let hasher = shapes::Seeded(seed);
    let mut builder = evanesce::Cache::<u64, u64>::builder().max_capacity(size);
    if let Some(n) = shards {
        builder = builder.shards(n);
    }
    let cache = builder
        .hasher(hasher)
        .build()
        .expect("valid cache settings");
    let used =
        shard_count(&cache).unwrap_or_else(|| shards.unwrap_or_else(|| default_shards(size)));
    let mut hits = 0;
    for &k in keys {
        if cache.get(&k).is_some() {
            hits += 1;
        } else {
            cache.insert(k, k);
        }
    }
    let held = cache.weighted_size();
    assert!(
        held <= size,
        "evanesce holds {held} entries, capacity {size}"
    );
    (hits, used)
}

/// The shard count, read from the cache's `Debug` output (`Cache { len: .., shards: N, .. }`).
fn shard_count<S: std::hash::BuildHasher>(cache: &evanesce::Cache<u64, u64, S>) -> Option<usize> {
    let debug = format!("{cache:?}");
    let rest = &debug[debug.find("shards: ")? + "shards: ".len()..];
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

/// The default shard count as the builder documents it, in case `Debug` stops showing it.
fn default_shards(size: u64) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let by_capacity = (size / 512).max(1).next_power_of_two() as usize;
    (cores * 4).next_power_of_two().min(by_capacity)
}

fn run_moka(keys: &[u64], size: u64) -> u64 {
    let cache: moka::sync::Cache<u64, u64> =
        moka::sync::Cache::builder().max_capacity(size).build();
    let mut hits = 0;
    for &k in keys {
        if cache.get(&k).is_some() {
            hits += 1;
        } else {
            cache.insert(k, k);
            cache.run_pending_tasks();
        }
    }
    hits
}

fn run_quick_cache(keys: &[u64], size: u64) -> u64 {
    let mut cache: quick_cache::unsync::Cache<u64, u64> =
        quick_cache::unsync::Cache::new(size as usize);
    let mut hits = 0;
    for &k in keys {
        if cache.get(&k).is_some() {
            hits += 1;
        } else {
            cache.insert(k, k);
        }
    }
    hits
}

fn run_lru(keys: &[u64], size: u64) -> u64 {
    let cap = NonZeroUsize::new(size as usize).expect("size > 0");
    let mut cache: lru::LruCache<u64, u64> = lru::LruCache::new(cap);
    let mut hits = 0;
    for &k in keys {
        if cache.get(&k).is_some() {
            hits += 1;
        } else {
            cache.put(k, k);
        }
    }
    hits
}

// ---------------------------------------------------------------------------------------------
// Jobs: one (cell, cache, run) each, spread over JOBS threads, longest first.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Evanesce,
    Evanesce1,
    Moka,
    QuickCache,
    Lru,
}

const KINDS: [Kind; 5] = [
    Kind::Evanesce,
    Kind::Evanesce1,
    Kind::Moka,
    Kind::QuickCache,
    Kind::Lru,
];

impl Kind {
    /// Rough cost per request relative to LRU, to start the long jobs first.
    fn cost(self) -> usize {
        match self {
            Kind::Moka => 20,
            Kind::Evanesce | Kind::Evanesce1 => 3,
            Kind::QuickCache | Kind::Lru => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Evanesce => "evanesce",
            Kind::Evanesce1 => "evanesce1",
            Kind::Moka => "moka",
            Kind::QuickCache => "quick_cache",
            Kind::Lru => "lru",
        }
    }

    /// The hits on `keys` at capacity `size` (evanesce with hasher `seed`), and (for the
    /// default builder) the shard count.
    fn run(self, keys: &[u64], size: u64, seed: u64) -> (u64, Option<usize>) {
        match self {
            Kind::Evanesce => {
                let (h, n) = run_evanesce(keys, size, None, seed);
                (h, Some(n))
            }
            Kind::Evanesce1 => (run_evanesce(keys, size, Some(1), seed).0, None),
            Kind::Moka => (run_moka(keys, size), None),
            Kind::QuickCache => (run_quick_cache(keys, size), None),
            Kind::Lru => (run_lru(keys, size), None),
        }
    }
}

/// A workload: a real trace or a synthetic shape, with the sizes it is measured at.
struct Workload {
    name: &'static str,
    synthetic: bool,
    sizes: &'static [u64],
    keys: Vec<u64>,
}

struct Cell {
    workload: usize,
    size: u64,
}

#[derive(Default, Clone)]
struct CellResult {
    /// Hit ratios (%) per kind, in `KINDS` order; moka has one per run.
    ratios: [Vec<f64>; 5],
    shards: usize,
    /// evanesce's hit ratios (default shards, 1 shard) with the first hasher (see `SEEDS`).
    first_hasher: [f64; 2],
    /// Seconds spent per kind (summed over runs).
    secs: [f64; 5],
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={s}: not a number")),
        Err(_) => default,
    }
}

/// The names in a comma-separated environment variable, or `None` if it is unset.
fn env_list(name: &str) -> Option<Vec<String>> {
    let list = std::env::var(name).ok()?;
    Some(
        list.split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

fn main() -> AnyResult<()> {
    let started = Instant::now();
    let dir: PathBuf = match std::env::var_os("TRACES") {
        Some(d) => d.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/traces"),
    };
    let dir = dir.canonicalize().unwrap_or(dir);
    let selected_traces: Vec<usize> = match env_list("TRACE") {
        Some(list) => {
            let mut out = Vec::new();
            for name in list {
                if name == "none" {
                    continue;
                }
                let name = if name == "glimpse" {
                    "gli".into()
                } else {
                    name
                };
                let i = TRACES
                    .iter()
                    .position(|t| t.name.eq_ignore_ascii_case(&name))
                    .ok_or_else(|| {
                        let names: Vec<_> = TRACES.iter().map(|t| t.name).collect();
                        format!("TRACE: unknown trace {name:?} (known: {})", names.join(","))
                    })?;
                if !out.contains(&i) {
                    out.push(i);
                }
            }
            out.sort_unstable();
            out
        }
        None => (0..TRACES.len()).collect(),
    };
    let selected_shapes: Vec<usize> = match env_list("SYNTH") {
        Some(list) => {
            let mut out = Vec::new();
            for name in list {
                if name == "none" {
                    continue;
                }
                let i = shapes::SHAPES
                    .iter()
                    .position(|s| s.name == name)
                    .ok_or_else(|| {
                        let names: Vec<_> = shapes::SHAPES.iter().map(|s| s.name).collect();
                        format!("SYNTH: unknown shape {name:?} (known: {})", names.join(","))
                    })?;
                if !out.contains(&i) {
                    out.push(i);
                }
            }
            out.sort_unstable();
            out
        }
        None => (0..shapes::SHAPES.len()).collect(),
    };
    let kinds: Vec<bool> = match env_list("CACHES") {
        Some(list) => {
            for name in &list {
                if !KINDS.iter().any(|k| k.name() == name) {
                    let names: Vec<_> = KINDS.iter().map(|k| k.name()).collect();
                    return Err(format!(
                        "CACHES: unknown cache {name:?} (known: {})",
                        names.join(",")
                    )
                    .into());
                }
            }
            KINDS
                .iter()
                .map(|k| list.iter().any(|n| n == k.name()))
                .collect()
        }
        None => vec![true; KINDS.len()],
    };
    let moka_runs = env_usize("MOKA_RUNS", 3).max(1);
    let seeds = env_usize("SEEDS", 1).max(1);
    let jobs_threads = env_usize(
        "JOBS",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    )
    .max(1);

    // Load the traces and check them against the README's counts; generate the shapes.
    let mut workloads: Vec<Workload> = Vec::new();
    let mut trace_notes = String::new();
    for &i in &selected_traces {
        let spec = &TRACES[i];
        let path = dir.join(spec.file);
        let k = read_trace(&path, spec.format)?;
        let unique = k.iter().collect::<HashSet<_>>().len();
        let check = if k.len() == spec.requests && unique == spec.unique {
            "as the README states".to_string()
        } else {
            format!(
                "**README states {} requests, {} unique: the reader disagrees**",
                spec.requests, spec.unique
            )
        };
        writeln!(
            trace_notes,
            "  - {} (`{}`): {} requests, {} unique keys, {check}",
            spec.name,
            spec.file,
            k.len(),
            unique
        )?;
        workloads.push(Workload {
            name: spec.name,
            synthetic: false,
            sizes: spec.sizes,
            keys: k,
        });
    }
    for &i in &selected_shapes {
        let shape = &shapes::SHAPES[i];
        let k = (shape.keys)();
        let unique = k.iter().collect::<HashSet<_>>().len();
        writeln!(
            trace_notes,
            "  - {} (synthetic, `tests/shapes`): {} requests, {} unique keys",
            shape.name,
            k.len(),
            unique
        )?;
        workloads.push(Workload {
            name: shape.name,
            synthetic: true,
            sizes: shape.sizes,
            keys: k,
        });
    }
    let load_secs = started.elapsed().as_secs_f64();

    if let Some(spec) = std::env::var("TIMELINE").ok().filter(|s| !s.is_empty()) {
        return timeline(&spec, &workloads);
    }

    let cells: Vec<Cell> = workloads
        .iter()
        .enumerate()
        .flat_map(|(workload, w)| w.sizes.iter().map(move |&size| Cell { workload, size }))
        .collect();
    // (cell, kind index, run); moka once per run, evanesce once per hasher.
    let mut jobs: Vec<(usize, usize, u64)> = Vec::new();
    for c in 0..cells.len() {
        for (ki, kind) in KINDS.iter().enumerate() {
            if !kinds[ki] {
                continue;
            }
            let runs = match kind {
                Kind::Moka => moka_runs,
                Kind::Evanesce | Kind::Evanesce1 => seeds,
                Kind::QuickCache | Kind::Lru => 1,
            };
            jobs.extend((0..runs as u64).map(|run| (c, ki, run)));
        }
    }
    jobs.sort_by_key(|&(c, ki, _)| {
        std::cmp::Reverse(workloads[cells[c].workload].keys.len() * KINDS[ki].cost())
    });

    let progress = std::io::stderr().is_terminal();
    let results = Mutex::new(vec![CellResult::default(); cells.len()]);
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs_threads.min(jobs.len()) {
            s.spawn(|| {
                loop {
                    let j = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(c, ki, run)) = jobs.get(j) else {
                        break;
                    };
                    let cell = &cells[c];
                    let k = &workloads[cell.workload].keys;
                    let t = Instant::now();
                    let (hits, shards) = KINDS[ki].run(k, cell.size, run);
                    let secs = t.elapsed().as_secs_f64();
                    let ratio = 100.0 * hits as f64 / k.len() as f64;
                    let mut r = results.lock().unwrap_or_else(|e| e.into_inner());
                    r[c].ratios[ki].push(ratio);
                    if run == 0 && ki < 2 {
                        r[c].first_hasher[ki] = ratio;
                    }
                    r[c].secs[ki] += secs;
                    if let Some(n) = shards {
                        r[c].shards = n;
                    }
                    drop(r);
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if progress {
                        eprint!("\r{d}/{} measurements", jobs.len());
                    }
                }
            });
        }
    });
    if progress {
        eprintln!();
    }
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());

    // ---- Report ----
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let mut out = String::new();
    writeln!(
        out,
        "## Hit ratio (%), count-based, single-threaded get, then insert on miss\n"
    )?;
    let mut command = String::new();
    for var in [
        "TRACES",
        "TRACE",
        "SYNTH",
        "CACHES",
        "MOKA_RUNS",
        "SEEDS",
        "JOBS",
    ] {
        if let Ok(v) = std::env::var(var) {
            write!(command, "{var}={v} ")?;
        }
    }
    writeln!(
        out,
        "- command: `{command}cargo run --release --example hit_ratio`"
    )?;
    writeln!(
        out,
        "- machine: {}, {} logical CPUs available; {jobs_threads} measurement(s) at a time, each cache driven by one thread",
        cpu_model(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )?;
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock"))
        .unwrap_or_default();
    let hashers = if seeds == 1 {
        "std `DefaultHasher`, fixed keys, so its figures repeat exactly".to_string()
    } else {
        format!(
            "mean over {seeds} hashers: std `DefaultHasher` with fixed keys, alone and fed seeds 1..{}",
            seeds - 1
        )
    };
    writeln!(
        out,
        "- caches: evanesce {} ({hashers}; \
         `shards` = the default count it chose), moka {} (`sync::Cache`, `run_pending_tasks()` after \
         every insert, mean of {moka_runs} run(s): its hasher is randomly seeded), quick_cache {} \
         (`unsync::Cache::new(size)`), LRU = lru {} (`LruCache`)",
        env!("CARGO_PKG_VERSION"),
        locked_version(&lock, "moka"),
        locked_version(&lock, "quick_cache"),
        locked_version(&lock, "lru"),
    )?;
    writeln!(
        out,
        "- target = max(LRU, moka, quick_cache) - 1; margin = evanesce - target; OPT (Belady) from the traces' README"
    )?;
    writeln!(out, "- workloads:")?;
    out.push_str(&trace_notes);
    writeln!(out)?;

    writeln!(
        out,
        "| workload | size | shards | evanesce | evanesce 1 shard | moka | quick_cache | LRU | OPT | target | margin |"
    )?;
    writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    let fmt = |x: f64| {
        if x.is_nan() {
            "–".to_string()
        } else {
            format!("{x:.2}")
        }
    };
    // Column means over the traces and over the synthetic rows: 5 kinds, target, margin, best.
    let mut cols: [[Vec<f64>; 8]; 2] = Default::default();
    let mut misses = Vec::new();
    let mut misses_1 = Vec::new();
    let mut shard_losses = Vec::new();
    let mut worst: Option<(f64, String)> = None;
    let mut moka_spread: (f64, String) = (0.0, String::new());
    // Cells where evanesce's hit ratio moves by more than half a point between hashers.
    let mut seed_spreads = Vec::new();
    for (cell, r) in cells.iter().zip(&results) {
        let w = &workloads[cell.workload];
        let name = w.name;
        let v: Vec<f64> = r
            .ratios
            .iter()
            .map(|x| if x.is_empty() { f64::NAN } else { mean(x) })
            .collect();
        let (ev, ev1, moka, qc, lru) = (v[0], v[1], v[2], v[3], v[4]);
        let peers: Vec<f64> = [moka, qc, lru]
            .into_iter()
            .filter(|x| !x.is_nan())
            .collect();
        let best = peers.iter().cloned().fold(f64::NAN, f64::max);
        let target = best - 1.0;
        let margin = ev - target;
        let opt = OPT
            .iter()
            .find(|(t, s, _)| !w.synthetic && *t == name && *s == cell.size)
            .map_or(String::new(), |o| format!("{:.2}", o.2));
        let shards = if r.shards == 0 {
            "–".to_string()
        } else {
            r.shards.to_string()
        };
        writeln!(
            out,
            "| {name} | {} | {shards} | {} | {} | {} | {} | {} | {opt} | {} | {} |",
            cell.size,
            fmt(ev),
            fmt(ev1),
            fmt(moka),
            fmt(qc),
            fmt(lru),
            fmt(target),
            if margin.is_nan() {
                "–".to_string()
            } else {
                format!("{margin:+.2}")
            },
        )?;
        let group = &mut cols[usize::from(w.synthetic)];
        for (i, x) in v.iter().enumerate() {
            group[i].push(*x);
        }
        group[5].push(target);
        group[6].push(margin);
        group[7].push(best);
        if ev < target {
            misses.push(format!("{name} {} ({margin:+.2})", cell.size));
        }
        if ev1 < target {
            misses_1.push(format!("{name} {} ({:+.2})", cell.size, ev1 - target));
        }
        if ev1 - ev > 1.0 {
            shard_losses.push(format!(
                "{name} {} ({} shards: {ev:.2} vs 1 shard: {ev1:.2})",
                cell.size, r.shards
            ));
        }
        if !margin.is_nan() && worst.as_ref().is_none_or(|w| margin < w.0) {
            worst = Some((margin, format!("{name} {}", cell.size)));
        }
        for (ki, label) in [(0, "default shards"), (1, "1 shard")] {
            let x = &r.ratios[ki];
            let (lo, hi) = (
                x.iter().cloned().fold(f64::MAX, f64::min),
                x.iter().cloned().fold(f64::MIN, f64::max),
            );
            if x.len() > 1 && hi - lo > 0.5 {
                seed_spreads.push(format!(
                    "{name} {} {label}: {lo:.2}-{hi:.2} (first hasher {:.2})",
                    cell.size, r.first_hasher[ki]
                ));
            }
        }
        let m = &r.ratios[2];
        if m.len() > 1 {
            let spread = m.iter().cloned().fold(f64::MIN, f64::max)
                - m.iter().cloned().fold(f64::MAX, f64::min);
            if spread >= moka_spread.0 {
                moka_spread = (spread, format!("{name} {}", cell.size));
            }
        }
    }
    let mut best_means = [f64::NAN; 2];
    for (g, label) in [(0, "mean, traces"), (1, "mean, synthetic")] {
        if cols[g][0].is_empty() {
            continue;
        }
        let m: Vec<f64> = cols[g].iter().map(|c| mean(c)).collect();
        best_means[g] = m[7];
        writeln!(
            out,
            "| **{label}** | | | **{}** | {} | {} | {} | {} | | {} | {} |",
            fmt(m[0]),
            fmt(m[1]),
            fmt(m[2]),
            fmt(m[3]),
            fmt(m[4]),
            fmt(m[5]),
            if m[6].is_nan() {
                "–".to_string()
            } else {
                format!("{:+.2}", m[6])
            },
        )?;
    }
    writeln!(out)?;
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    for (g, label) in [(0, "traces"), (1, "synthetic workloads")] {
        if !best_means[g].is_nan() {
            writeln!(
                out,
                "- {label}: mean of the per-cell best of the peers {:.2}, evanesce {:.2}",
                best_means[g],
                mean(&cols[g][0])
            )?;
        }
    }
    if let Some((m, at)) = &worst {
        writeln!(out, "- worst margin: {m:+.2} ({at})")?;
    }
    if kinds[2] || kinds[3] || kinds[4] {
        writeln!(
            out,
            "- cells where evanesce (default shards) misses the target: {}",
            list(&misses)
        )?;
        writeln!(
            out,
            "- cells where evanesce with 1 shard misses the target: {}",
            list(&misses_1)
        )?;
    } else {
        writeln!(out, "- no target: no peer was measured (`CACHES`)")?;
    }
    writeln!(
        out,
        "- cells where the default shard count loses more than 1 point to 1 shard: {}",
        list(&shard_losses)
    )?;
    if seeds > 1 {
        writeln!(
            out,
            "- cells where evanesce moves by more than half a point between hashers (min-max): {}",
            list(&seed_spreads)
        )?;
    }
    if moka_runs > 1 && kinds[2] {
        writeln!(
            out,
            "- moka run-to-run spread (max - min over {moka_runs} runs): largest {:.2} points ({})",
            moka_spread.0, moka_spread.1
        )?;
    }
    let mut secs = [0.0; 5];
    for r in &results {
        for (s, x) in secs.iter_mut().zip(r.secs) {
            *s += x;
        }
    }
    writeln!(
        out,
        "- time: workloads loaded in {load_secs:.1} s; cache time (summed over cells) evanesce {:.1} s, \
         evanesce 1 shard {:.1} s, moka {:.1} s, quick_cache {:.1} s, LRU {:.1} s; wall {:.1} s",
        secs[0],
        secs[1],
        secs[2],
        secs[3],
        secs[4],
        started.elapsed().as_secs_f64()
    )?;
    writeln!(
        out,
        "\nTraces: OLTP from the ARC paper (Megiddo & Modha, FAST'03); gli, loop, sprite, multi2 \
         from LIRS (Jiang & Zhang, SIGMETRICS'02); web12 from cache2k (CC BY 4.0, headissue GmbH / \
         Jens Wilke); scarab from Scarab Research. Copies published in moka-rs/cache-trace and \
         Caffeine's simulator resources."
    )?;
    print!("{out}");
    Ok(())
}

/// `TIMELINE=workload:size[:windows]`: the hit ratio of each cache over successive windows of
/// the workload (default 30 windows), to show how a policy follows a change of regime.
fn timeline(spec: &str, workloads: &[Workload]) -> AnyResult<()> {
    let mut parts = spec.split(':');
    let name = parts.next().unwrap_or_default();
    let size: u64 = parts
        .next()
        .ok_or("TIMELINE=workload:size[:windows]")?
        .parse()?;
    let windows: usize = parts.next().map_or(Ok(30), str::parse)?;
    let w = workloads
        .iter()
        .find(|w| w.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| format!("TIMELINE: workload {name:?} not loaded (see TRACE, SYNTH)"))?;
    let keys = &w.keys;
    let per = keys.len().div_ceil(windows);
    let seed = env_usize("TIMELINE_SEED", 0) as u64;
    // Each cache as a closure answering "was this a hit?" (inserting on a miss).
    let ev = evanesce::Cache::<u64, u64>::builder()
        .max_capacity(size)
        .hasher(shapes::Seeded(seed))
        .build()?;
    let ev1 = evanesce::Cache::<u64, u64>::builder()
        .max_capacity(size)
        .shards(1)
        .hasher(shapes::Seeded(seed))
        .build()?;
    let mut qc: quick_cache::unsync::Cache<u64, u64> =
        quick_cache::unsync::Cache::new(size as usize);
    let mut lru: lru::LruCache<u64, u64> =
        lru::LruCache::new(NonZeroUsize::new(size as usize).ok_or("size > 0")?);
    let moka: moka::sync::Cache<u64, u64> = moka::sync::Cache::builder().max_capacity(size).build();
    println!("## Hit ratio (%) over time: {name} at {size}, {windows} windows of {per} requests\n");
    println!("| requests | evanesce | evanesce 1 shard | moka | quick_cache | LRU |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for (i, chunk) in keys.chunks(per).enumerate() {
        let mut hits = [0u64; 5];
        for &k in chunk {
            let hit = [
                ev.get(&k).is_some() || {
                    ev.insert(k, k);
                    false
                },
                ev1.get(&k).is_some() || {
                    ev1.insert(k, k);
                    false
                },
                moka.get(&k).is_some() || {
                    moka.insert(k, k);
                    moka.run_pending_tasks();
                    false
                },
                qc.get(&k).is_some() || {
                    qc.insert(k, k);
                    false
                },
                lru.get(&k).is_some() || {
                    lru.put(k, k);
                    false
                },
            ];
            for (h, x) in hits.iter_mut().zip(hit) {
                *h += u64::from(x);
            }
        }
        let pct = |h: u64| 100.0 * h as f64 / chunk.len() as f64;
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            (i + 1) * per.min(keys.len()),
            pct(hits[0]),
            pct(hits[1]),
            pct(hits[2]),
            pct(hits[3]),
            pct(hits[4])
        );
    }
    Ok(())
}

/// The CPU model from /proc/cpuinfo.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

/// The version of `name` in Cargo.lock (the first one listed), or `?`.
fn locked_version(lock: &str, name: &str) -> String {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted
            && let Some(v) = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = "))
        {
            return v.trim_matches('"').to_string();
        }
    }
    "?".to_string()
}
