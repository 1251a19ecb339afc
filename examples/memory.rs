//! Memory per entry of `evanesce` and its peers, measured as growth of the resident set.
//!
//! ```text
//! cargo run --release --example memory
//! ENTRIES=100K cargo run --release --example memory
//! ```
//!
//! Every cache maps `u64` to `u64` and runs in a child process of its own (this program run
//! again as `memory --child NAME`), so that one cache's freed memory cannot be reused by the
//! next. The child reads its resident set size (`/proc/self/statm`), builds the cache, inserts
//! `ENTRIES` distinct keys, applies pending work (`run_pending_tasks()` for evanesce and moka),
//! reads its resident set size again, and reports `(after - before) / ENTRIES` and how many
//! entries the cache holds. The parent prints one Markdown table row per cache.
//!
//! The caches:
//! - evanesce, bounded (`max_capacity(ENTRIES)`) with a time to live of an hour;
//! - moka (`sync::Cache`), bounded the same way with the same time to live;
//! - quick_cache (`sync::Cache::new(ENTRIES)`), bounded, without time to live (it has none);
//! - for scale: evanesce unbounded without time to live (`Cache::new()`), and two plain
//!   concurrent maps, dashmap and papaya.
//!
//! Environment variables (all optional):
//! - `ENTRIES` (default 1M; `K`/`M` suffixes accepted): distinct keys inserted.
//! - `CACHES`: comma-separated subset of
//!   `evanesce,moka,quick_cache,evanesce_unbounded,dashmap,papaya`.
//!
//! The figure includes everything the cache allocated and still holds resident: tables,
//! entries, policy and timer structures, and memory the allocator keeps after a table grew
//! (freed old tables that were not returned to the system). Pages the cache reserved but never
//! touched are not counted. Linux only (`/proc`).

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

const CACHES: [(&str, &str); 6] = [
    ("evanesce", "`max_capacity(N)`, `time_to_live(1h)`"),
    (
        "moka",
        "`sync::Cache`, `max_capacity(N)`, `time_to_live(1h)`",
    ),
    (
        "quick_cache",
        "`sync::Cache::new(N)` (no time to live: it has none)",
    ),
    (
        "evanesce_unbounded",
        "`Cache::new()`: unbounded, no time to live",
    ),
    ("dashmap", "`DashMap::new()`: plain map"),
    ("papaya", "`HashMap::new()`: plain map"),
];

const TTL: Duration = Duration::from_secs(3600);

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> AnyResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let entries = entries()?;
    if args.get(1).map(String::as_str) == Some("--child") {
        let name = args.get(2).ok_or("--child needs a cache name")?;
        return child(name, entries);
    }
    parent(entries)
}

fn entries() -> AnyResult<u64> {
    let Ok(s) = std::env::var("ENTRIES") else {
        return Ok(1_000_000);
    };
    let t = s.trim();
    let (digits, scale) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 1_000),
        Some(b'm' | b'M') => (&t[..t.len() - 1], 1_000_000),
        _ => (t, 1),
    };
    let n: u64 = digits
        .parse::<u64>()
        .map_err(|e| format!("ENTRIES={s}: {e}"))?
        * scale;
    if n == 0 {
        return Err("ENTRIES must be at least 1".into());
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Parent: one child per cache, then the table.

struct Measured {
    bytes_per_entry: f64,
    held: u64,
    before: u64,
    after: u64,
    secs: f64,
}

fn parent(entries: u64) -> AnyResult<()> {
    let selected: Vec<&(&str, &str)> = match std::env::var("CACHES") {
        Ok(list) => {
            let mut out = Vec::new();
            for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let c = CACHES.iter().find(|(n, _)| *n == name).ok_or_else(|| {
                    let names: Vec<_> = CACHES.iter().map(|(n, _)| *n).collect();
                    format!(
                        "CACHES: unknown cache {name:?} (known: {})",
                        names.join(",")
                    )
                })?;
                out.push(c);
            }
            out
        }
        Err(_) => CACHES.iter().collect(),
    };
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    for (name, config) in selected {
        let output = Command::new(&exe)
            .args(["--child", name])
            .env("ENTRIES", entries.to_string())
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "child {name} failed ({}):\n{stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        let m = parse_child(&stdout)
            .ok_or_else(|| format!("child {name}: no RESULT line in its output:\n{stdout}"))?;
        rows.push((name, config, m));
    }

    let mut out = String::new();
    writeln!(
        out,
        "## Memory per entry, `u64` keys and values, {entries} distinct keys inserted\n"
    )?;
    let env = match std::env::var("ENTRIES") {
        Ok(v) => format!("ENTRIES={v} "),
        Err(_) => String::new(),
    };
    let env = match std::env::var("CACHES") {
        Ok(v) => format!("{env}CACHES={v} "),
        Err(_) => env,
    };
    writeln!(
        out,
        "- command: `{env}cargo run --release --example memory`"
    )?;
    writeln!(
        out,
        "- machine: {}, {} logical CPUs available; system allocator",
        cpu_model(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )?;
    writeln!(
        out,
        "- bytes per entry = growth of the resident set (`/proc/self/statm`) from before the \
         cache was built to after the last insert (and `run_pending_tasks()` for evanesce and \
         moka), divided by {entries}; each cache in a child process of its own; N = {entries}\n"
    )?;
    writeln!(
        out,
        "| cache | configuration | bytes per entry | entries held |"
    )?;
    writeln!(out, "|---|---|---:|---:|")?;
    for (name, config, m) in &rows {
        writeln!(
            out,
            "| {name} | {config} | {:.1} | {} |",
            m.bytes_per_entry, m.held
        )?;
    }
    writeln!(out)?;
    for (name, _, m) in &rows {
        writeln!(
            out,
            "- {name}: resident {:.1} MiB before, {:.1} MiB after; inserts took {:.2} s",
            m.before as f64 / (1 << 20) as f64,
            m.after as f64 / (1 << 20) as f64,
            m.secs
        )?;
    }
    print!("{out}");
    Ok(())
}

fn parse_child(stdout: &str) -> Option<Measured> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("RESULT "))?;
    let mut m = Measured {
        bytes_per_entry: 0.0,
        held: 0,
        before: 0,
        after: 0,
        secs: 0.0,
    };
    for field in line.split_ascii_whitespace() {
        let (k, v) = field.split_once('=')?;
        match k {
            "bytes_per_entry" => m.bytes_per_entry = v.parse().ok()?,
            "held" => m.held = v.parse().ok()?,
            "before" => m.before = v.parse().ok()?,
            "after" => m.after = v.parse().ok()?,
            "secs" => m.secs = v.parse().ok()?,
            _ => {}
        }
    }
    Some(m)
}

// ---------------------------------------------------------------------------------------------
// Child: one cache, measured.

/// The `i`-th key: a bijection on u64 (multiplication by an odd constant), so that the keys are
/// distinct and spread over the whole range.
fn key(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn child(name: &str, entries: u64) -> AnyResult<()> {
    page_size(); // read it now, so that reading it allocates nothing between the two samples
    let before = rss_bytes()?;
    let started = Instant::now();
    // Each arm builds the cache, fills it, applies pending work, and returns the number of
    // entries held and the cache itself (kept alive until the resident set has been read).
    let (held, cache): (u64, Box<dyn std::any::Any>) = match name {
        "evanesce" => {
            let c: evanesce::Cache<u64, u64> = evanesce::Cache::builder()
                .max_capacity(entries)
                .time_to_live(TTL)
                .build()?;
            for i in 0..entries {
                c.insert(key(i), i);
            }
            c.run_pending_tasks();
            (c.len() as u64, Box::new(c))
        }
        "evanesce_unbounded" => {
            let c: evanesce::Cache<u64, u64> = evanesce::Cache::new();
            for i in 0..entries {
                c.insert(key(i), i);
            }
            c.run_pending_tasks();
            (c.len() as u64, Box::new(c))
        }
        "moka" => {
            let c: moka::sync::Cache<u64, u64> = moka::sync::Cache::builder()
                .max_capacity(entries)
                .time_to_live(TTL)
                .build();
            for i in 0..entries {
                c.insert(key(i), i);
            }
            c.run_pending_tasks();
            (c.entry_count(), Box::new(c))
        }
        "quick_cache" => {
            let c: quick_cache::sync::Cache<u64, u64> =
                quick_cache::sync::Cache::new(entries as usize);
            for i in 0..entries {
                c.insert(key(i), i);
            }
            (c.len() as u64, Box::new(c))
        }
        "dashmap" => {
            let c: dashmap::DashMap<u64, u64> = dashmap::DashMap::new();
            for i in 0..entries {
                c.insert(key(i), i);
            }
            (c.len() as u64, Box::new(c))
        }
        "papaya" => {
            let c: papaya::HashMap<u64, u64> = papaya::HashMap::new();
            {
                let pinned = c.pin();
                for i in 0..entries {
                    pinned.insert(key(i), i);
                }
            }
            (c.len() as u64, Box::new(c))
        }
        other => return Err(format!("unknown cache {other:?}").into()),
    };
    let secs = started.elapsed().as_secs_f64();
    let after = rss_bytes()?;
    std::hint::black_box(&cache);
    let bytes_per_entry = after.saturating_sub(before) as f64 / entries as f64;
    println!(
        "RESULT bytes_per_entry={bytes_per_entry:.2} held={held} before={before} after={after} secs={secs:.3}"
    );
    // Skip the drop (moka's takes a while); the process ends here.
    std::mem::forget(cache);
    Ok(())
}

/// Resident set size in bytes: the second field of /proc/self/statm (pages) times the page size.
fn rss_bytes() -> AnyResult<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_ascii_whitespace()
        .nth(1)
        .ok_or("/proc/self/statm: no resident field")?
        .parse()?;
    Ok(pages * page_size())
}

/// The page size, from the first `KernelPageSize:` line of /proc/self/smaps (4 KiB if absent).
fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        std::fs::read_to_string("/proc/self/smaps")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("KernelPageSize:"))
                    .and_then(|v| v.trim().strip_suffix("kB"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .map_or(4096, |kb| kb * 1024)
    })
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
