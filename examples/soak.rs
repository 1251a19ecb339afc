//! Soak: unique keys inserted as fast as one thread can, each with a 200 ms time to live, for
//! a fixed time; every second, the live entries and the resident memory of the process. Run
//! for evanesce and for moka, each in its own child process (so that one's freed memory does
//! not flatter the other), and printed side by side.
//!
//! ```text
//! cargo run --release --example soak                 # 10 s each
//! SOAK_SECS=30 cargo run --release --example soak
//! ```
//!
//! What to look for: live entries stay near `insert rate x (TTL + about a millisecond)`,
//! without any read of the old keys, and resident memory stays flat.

use std::process::Command;
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_millis(200);

/// Resident set size of this process, in bytes (Linux; 0 elsewhere).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// One second's line: `second inserted_total live rss_bytes`.
fn report(second: u64, inserted: u64, live: u64) {
    println!("{second} {inserted} {live} {}", rss());
}

fn run(which: &str, secs: u64) {
    let start = Instant::now();
    let mut key: u64 = 0;
    let mut next_report = 1;
    match which {
        "evanesce" => {
            let cache: evanesce::Cache<u64, u64> = evanesce::Cache::builder()
                .time_to_live(TTL)
                .build()
                .expect("valid settings");
            while next_report <= secs {
                for _ in 0..1024 {
                    cache.insert(key, key);
                    key += 1;
                }
                if start.elapsed() >= Duration::from_secs(next_report) {
                    report(next_report, key, cache.len() as u64);
                    next_report += 1;
                }
            }
        }
        "moka" => {
            let cache: moka::sync::Cache<u64, u64> =
                moka::sync::Cache::builder().time_to_live(TTL).build();
            while next_report <= secs {
                for _ in 0..1024 {
                    cache.insert(key, key);
                    key += 1;
                }
                if start.elapsed() >= Duration::from_secs(next_report) {
                    cache.run_pending_tasks();
                    report(next_report, key, cache.entry_count());
                    next_report += 1;
                }
            }
        }
        other => panic!("unknown cache {other}"),
    }
}

fn main() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut args = std::env::args().skip(1);
    if let (Some(flag), Some(which)) = (args.next(), args.next())
        && flag == "--child"
    {
        run(&which, secs);
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    let mut runs = Vec::new();
    for which in ["evanesce", "moka"] {
        let out = Command::new(&exe)
            .args(["--child", which])
            .output()
            .expect("child runs");
        assert!(out.status.success(), "{which} child failed: {:?}", out);
        let lines: Vec<[u64; 4]> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let v: Vec<u64> = l
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                (v.len() == 4).then(|| [v[0], v[1], v[2], v[3]])
            })
            .collect();
        runs.push((which, lines));
    }
    println!(
        "soak: unique u64 keys, one writer thread, TTL {} ms, {secs} s per cache",
        TTL.as_millis()
    );
    println!();
    println!(
        "| s | evanesce inserts/s | evanesce live | expected live | evanesce RSS MiB | moka inserts/s | moka live | moka RSS MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let (ev, mk) = (&runs[0].1, &runs[1].1);
    for i in 0..ev.len().min(mk.len()) {
        let rate = |rows: &Vec<[u64; 4]>| {
            let prev = if i == 0 { 0 } else { rows[i - 1][1] };
            rows[i][1] - prev
        };
        let (er, mr) = (rate(ev), rate(mk));
        let expected = er as f64 * (TTL.as_secs_f64() + 0.001);
        println!(
            "| {} | {} | {} | {:.0} | {:.1} | {} | {} | {:.1} |",
            ev[i][0],
            er,
            ev[i][2],
            expected,
            mib(ev[i][3]),
            mr,
            mk[i][2],
            mib(mk[i][3])
        );
    }
}
