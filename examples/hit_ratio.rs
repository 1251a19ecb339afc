//! Hit ratio of `evanesce` and its peers on real, third-party cache traces.
//!
//! ```text
//! cargo run --release --example hit_ratio
//! TRACE=oltp,loop cargo run --release --example hit_ratio
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
//! The target for evanesce in each cell is `max(moka, quick_cache) - 1` percentage point;
//! `margin` is evanesce minus that target. OPT (Belady) is copied from the traces' README
//! where it gives one.
//!
//! Environment variables (all optional):
//! - `TRACES`: the trace directory (default `../shared/traces` from the crate root).
//! - `TRACE`: comma-separated subset of `oltp,gli,loop,sprite,multi2,web12,scarab`.
//! - `MOKA_RUNS` (default 3): runs of moka per cell.
//! - `JOBS` (default: the available parallelism): cells measured at once. Each cache is still
//!   driven by one thread; this only runs different (cache, cell) pairs side by side.
//!
//! A full run takes 20 to 40 seconds on 2 cores (moka is most of it).

use std::collections::HashSet;
use std::collections::hash_map::DefaultHasher;
use std::fmt::Write as _;
use std::fs::File;
use std::hash::BuildHasherDefault;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// A hasher with fixed keys, so that evanesce's results repeat from run to run.
type FixedState = BuildHasherDefault<DefaultHasher>;

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

/// Returns the hits and the shard count the cache was built with.
fn run_evanesce(keys: &[u64], size: u64, shards: Option<usize>) -> (u64, usize) {
    let mut builder = evanesce::Cache::<u64, u64>::builder().max_capacity(size);
    if let Some(n) = shards {
        builder = builder.shards(n);
    }
    let cache = builder
        .hasher(FixedState::default())
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
}

struct Cell {
    trace: usize,
    size: u64,
}

#[derive(Default, Clone)]
struct CellResult {
    /// Hit ratios (%) per kind, in `KINDS` order; moka has one per run.
    ratios: [Vec<f64>; 5],
    shards: usize,
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

fn main() -> AnyResult<()> {
    let started = Instant::now();
    let dir: PathBuf = match std::env::var_os("TRACES") {
        Some(d) => d.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/traces"),
    };
    let dir = dir.canonicalize().unwrap_or(dir);
    let selected: Vec<usize> = match std::env::var("TRACE") {
        Ok(list) => {
            let mut out = Vec::new();
            for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let name = if name.eq_ignore_ascii_case("glimpse") {
                    "gli"
                } else {
                    name
                };
                let i = TRACES
                    .iter()
                    .position(|t| t.name.eq_ignore_ascii_case(name))
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
        Err(_) => (0..TRACES.len()).collect(),
    };
    let moka_runs = env_usize("MOKA_RUNS", 3).max(1);
    let jobs_threads = env_usize(
        "JOBS",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    )
    .max(1);

    // Load the traces and check them against the README's counts.
    let mut keys: Vec<Vec<u64>> = vec![Vec::new(); TRACES.len()];
    let mut trace_notes = String::new();
    for &i in &selected {
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
        keys[i] = k;
    }
    let load_secs = started.elapsed().as_secs_f64();

    let cells: Vec<Cell> = selected
        .iter()
        .flat_map(|&trace| {
            TRACES[trace]
                .sizes
                .iter()
                .map(move |&size| Cell { trace, size })
        })
        .collect();
    // (cell, kind index); moka once per run.
    let mut jobs: Vec<(usize, usize)> = Vec::new();
    for c in 0..cells.len() {
        for (ki, kind) in KINDS.iter().enumerate() {
            let runs = if *kind == Kind::Moka { moka_runs } else { 1 };
            jobs.extend(std::iter::repeat_n((c, ki), runs));
        }
    }
    jobs.sort_by_key(|&(c, ki)| std::cmp::Reverse(keys[cells[c].trace].len() * KINDS[ki].cost()));

    let progress = std::io::stderr().is_terminal();
    let results = Mutex::new(vec![CellResult::default(); cells.len()]);
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs_threads.min(jobs.len()) {
            s.spawn(|| {
                loop {
                    let j = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(c, ki)) = jobs.get(j) else { break };
                    let cell = &cells[c];
                    let k = &keys[cell.trace];
                    let t = Instant::now();
                    let mut shards = None;
                    let hits = match KINDS[ki] {
                        Kind::Evanesce => {
                            let (h, n) = run_evanesce(k, cell.size, None);
                            shards = Some(n);
                            h
                        }
                        Kind::Evanesce1 => run_evanesce(k, cell.size, Some(1)).0,
                        Kind::Moka => run_moka(k, cell.size),
                        Kind::QuickCache => run_quick_cache(k, cell.size),
                        Kind::Lru => run_lru(k, cell.size),
                    };
                    let secs = t.elapsed().as_secs_f64();
                    let ratio = 100.0 * hits as f64 / k.len() as f64;
                    let mut r = results.lock().unwrap_or_else(|e| e.into_inner());
                    r[c].ratios[ki].push(ratio);
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
    for var in ["TRACES", "TRACE", "MOKA_RUNS", "JOBS"] {
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
    writeln!(
        out,
        "- caches: evanesce {} (std `DefaultHasher`, fixed keys, so its figures repeat exactly; \
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
        "- target = max(moka, quick_cache) - 1; margin = evanesce - target; OPT (Belady) from the traces' README"
    )?;
    writeln!(out, "- traces, from `{}`:", dir.display())?;
    out.push_str(&trace_notes);
    writeln!(out)?;

    writeln!(
        out,
        "| trace | size | shards | evanesce | evanesce 1 shard | moka | quick_cache | LRU | OPT | target | margin |"
    )?;
    writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    let mut cols: [Vec<f64>; 7] = Default::default(); // 5 kinds, target, margin
    let mut misses = Vec::new();
    let mut misses_1 = Vec::new();
    let mut shard_losses = Vec::new();
    let mut moka_spread: (f64, String) = (0.0, String::new());
    for (cell, r) in cells.iter().zip(&results) {
        let name = TRACES[cell.trace].name;
        let v: Vec<f64> = r.ratios.iter().map(|x| mean(x)).collect();
        let (ev, ev1, moka, qc, lru) = (v[0], v[1], v[2], v[3], v[4]);
        let target = moka.max(qc) - 1.0;
        let margin = ev - target;
        let opt = OPT
            .iter()
            .find(|(t, s, _)| *t == name && *s == cell.size)
            .map_or(String::new(), |o| format!("{:.2}", o.2));
        writeln!(
            out,
            "| {name} | {} | {} | {ev:.2} | {ev1:.2} | {moka:.2} | {qc:.2} | {lru:.2} | {opt} | {target:.2} | {margin:+.2} |",
            cell.size, r.shards
        )?;
        for (i, x) in v.iter().enumerate() {
            cols[i].push(*x);
        }
        cols[5].push(target);
        cols[6].push(margin);
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
        let m = &r.ratios[2];
        let spread =
            m.iter().cloned().fold(f64::MIN, f64::max) - m.iter().cloned().fold(f64::MAX, f64::min);
        if spread >= moka_spread.0 {
            moka_spread = (spread, format!("{name} {}", cell.size));
        }
    }
    let m: Vec<f64> = cols.iter().map(|c| mean(c)).collect();
    writeln!(
        out,
        "| **mean** | | | **{:.2}** | {:.2} | {:.2} | {:.2} | {:.2} | | {:.2} | {:+.2} |",
        m[0], m[1], m[2], m[3], m[4], m[5], m[6]
    )?;
    writeln!(out)?;
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
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
    writeln!(
        out,
        "- cells where the default shard count loses more than 1 point to 1 shard: {}",
        list(&shard_losses)
    )?;
    if moka_runs > 1 {
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
        "- time: traces loaded in {load_secs:.1} s; cache time (summed over cells) evanesce {:.1} s, \
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
        if line.trim() == wanted {
            if let Some(v) = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = "))
            {
                return v.trim_matches('"').to_string();
            }
        }
    }
    "?".to_string()
}
