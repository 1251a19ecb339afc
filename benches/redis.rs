//! Sessions in Redis, in one criterion run against redis-servers the bench starts itself
//! (`redis-server` must be on PATH; loopback, 2 tasks on a 2-thread tokio runtime):
//!
//! ```text
//! cargo bench --bench redis
//! cargo bench --bench redis -- --test      # each bench once, as a smoke test
//! ```
//!
//! **Store operations**, `redis/<op>/<store>`: `get`, `set` and `touch` against Redis alone
//! ([`RedisRecordStore`]) and against the two-tier store ([`TieredStore`]: evanesce's near
//! cache in front of the same Redis); throughput counts the operations of both tasks.
//!
//! - get: `SessionStore::load`. Redis alone: one `GET`. Two-tier: served from the near cache
//!   (every session is cached: the staleness bound is set to a minute for the bench).
//! - set: `SessionStore::save`, `SET XX PX` in Redis (and, two-tier, the near cache's copy).
//! - touch: Redis alone: [`RedisStore::touch`](evanesce::integrations::redis::RedisStore::touch)
//!   (`GET`, then the compare-and-set script); two-tier: [`TieredStore::touch`] (the same,
//!   and the near copy is dropped).
//!
//! 10,000 sessions of about 200 bytes of data, picked uniformly at random (a fixed sequence
//! per task).
//!
//! **Requests**, `redis-requests/<store>/<renewal>`: a read-mostly session workload through
//! tower-sessions (an axum app called in process, `Expiry::OnInactivity` with
//! `with_always_save(true)`, so that every request renews the session): 1,000 sessions, 95%
//! of requests read the session, 5% change it. `touch-every-request` renews on every request
//! (the default); `touch-after-60s` is `touch_after(60 s)`. The stores: `redis` (Redis
//! alone), `two-tier` (near cache, bound 1 s), and `redis-tls` (Redis alone over
//! `rediss://`, to set against `redis` for the cost of TLS on loopback). Before the timed
//! runs, each is counted: the Redis commands per request (`INFO commandstats` after
//! `CONFIG RESETSTAT`, over 4,000 requests), and measured: requests per second over 7
//! rounds in which the variants take turns (medians; the machine is shared and noisy, and
//! interleaving spreads a slow minute over every variant), both printed as tables.

mod common;
#[path = "../tests/redis_support/mod.rs"]
mod redis_support;

use common::Op;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use evanesce::integrations::redis::{RedisRecordStore, TieredStore, redis_record_store};
use tower::ServiceExt;
use tower_sessions::session::Record;
use tower_sessions::session_store::SessionStore;
use tower_sessions::{Expiry, SessionManagerLayer};

const SESSIONS: usize = 10_000;
const TASKS: usize = 2;
/// Operations per task in one criterion iteration.
const ITER_OPS: u64 = 1 << 8;

/// A plain `redis-server` of the bench's own, killed on drop.
fn plain_server() -> redis_support::Server {
    redis_support::Server::plain(&[])
}

/// The sessions, and the same sessions with an expiry an hour later (for touch).
struct Fixture {
    records: Vec<Record>,
    renewed: Vec<Record>,
}

impl Fixture {
    fn new() -> Self {
        let (records, renewed) =
            common::records(SESSIONS, 0x0ed1_5000_0000_0000_0000_0000_0000_0000);
        Self { records, renewed }
    }
}

#[derive(Clone)]
enum Subject {
    Redis(RedisRecordStore),
    Tiered(TieredStore),
}

impl Subject {
    fn name(&self) -> &'static str {
        match self {
            Subject::Redis(_) => "redis",
            Subject::Tiered(_) => "two-tier",
        }
    }

    /// `n` operations on sessions picked by a per-task random sequence.
    async fn run(self, f: Arc<Fixture>, op: Op, task: usize, n: u64) {
        let mut x = 0x2545_f491_4f6c_dd1d_u64 ^ (task as u64 + 1).wrapping_mul(0x9e37_79b9);
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % SESSIONS as u64) as usize;
            let (record, renewed) = (&f.records[i], &f.renewed[i]);
            match (&self, op) {
                (Subject::Redis(s), Op::Get) => {
                    assert!(s.load(&record.id).await.unwrap().is_some());
                }
                (Subject::Tiered(s), Op::Get) => {
                    assert!(s.load(&record.id).await.unwrap().is_some());
                }
                (Subject::Redis(s), Op::Set) => s.save(record).await.unwrap(),
                (Subject::Tiered(s), Op::Set) => s.save(record).await.unwrap(),
                (Subject::Redis(s), Op::Touch) => {
                    assert!(s.touch(&record.id.to_string(), renewed).await.unwrap());
                }
                (Subject::Tiered(s), Op::Touch) => {
                    assert!(s.touch(&record.id.to_string(), renewed).await.unwrap());
                }
            }
        }
    }
}

fn redis(c: &mut Criterion) {
    let server = plain_server();
    let fixture = Arc::new(Fixture::new());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let subjects = rt.block_on(async {
        let redis = redis_record_store(server.url())
            .build()
            .await
            .expect("a Redis store");
        for record in &fixture.records {
            redis.create(&mut record.clone()).await.unwrap();
        }
        let tiered = TieredStore::new(redis.clone(), Duration::from_secs(60)).unwrap();
        // Fill the near cache.
        for record in &fixture.records {
            tiered.load(&record.id).await.unwrap().unwrap();
        }
        [Subject::Redis(redis), Subject::Tiered(tiered)]
    });
    for op in [Op::Get, Op::Set, Op::Touch] {
        let mut group = c.benchmark_group(format!("redis/{}", op.name()));
        group.throughput(Throughput::Elements(TASKS as u64 * ITER_OPS));
        for subject in &subjects {
            group.bench_function(subject.name(), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        let tasks: Vec<_> = (0..TASKS)
                            .map(|t| {
                                tokio::spawn(subject.clone().run(
                                    Arc::clone(&fixture),
                                    op,
                                    t,
                                    iters * ITER_OPS,
                                ))
                            })
                            .collect();
                        for task in tasks {
                            task.await.expect("a bench task");
                        }
                        start.elapsed()
                    })
                });
            });
        }
        group.finish();
    }
    drop(server);
}

// ---- requests: touch_after on a read-mostly workload; TLS against plain ----

/// Sessions of the request workload.
const REQUEST_SESSIONS: usize = 1_000;
/// Requests per task in one criterion iteration.
const ITER_REQUESTS: u64 = 1 << 6;
/// Requests of the counting pass.
const COUNTED_REQUESTS: u64 = 4_000;
/// Interleaved rounds of the requests-per-second table.
const ROUNDS: usize = 7;
/// Requests per task in one round.
const ROUND_REQUESTS: u64 = 2_000;
/// One request in this many changes its session.
const WRITE_EVERY: u64 = 20;

/// Reads the session's view counter (a read-mostly page).
async fn peek(session: tower_sessions::Session) -> String {
    let views: u64 = session.get("views").await.unwrap().unwrap_or(0);
    views.to_string()
}

/// Changes the session.
async fn write(session: tower_sessions::Session) -> String {
    let views: u64 = session.get("views").await.unwrap().unwrap_or(0) + 1;
    session.insert("views", views).await.unwrap();
    views.to_string()
}

fn app<S: SessionStore + Clone>(store: S) -> Router {
    Router::new()
        .route("/", axum::routing::get(peek))
        .route("/write", axum::routing::get(write))
        .layer(
            SessionManagerLayer::new(store)
                .with_secure(false)
                .with_always_save(true)
                .with_expiry(Expiry::OnInactivity(time::Duration::hours(1))),
        )
}

/// One request variant: a store behind an app, and the Redis it talks to (for counting).
#[derive(Clone)]
struct Requests {
    name: String,
    app: Router,
    cookies: Arc<Vec<String>>,
}

impl Requests {
    /// `n` requests by task `task`: a fixed pseudo-random sequence of sessions, one in
    /// [`WRITE_EVERY`] a write.
    async fn run(self, task: usize, n: u64) {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ (task as u64 + 1).wrapping_mul(0x2545_f491);
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let cookie = &self.cookies[(x % self.cookies.len() as u64) as usize];
            let path = if (x >> 32).is_multiple_of(WRITE_EVERY) {
                "/write"
            } else {
                "/"
            };
            let request = Request::builder()
                .uri(path)
                .header(header::COOKIE, format!("id={cookie}"))
                .body(Body::empty())
                .unwrap();
            let response = self.app.clone().oneshot(request).await.unwrap();
            assert!(response.status().is_success(), "{}", response.status());
        }
    }
}

/// Calls per command since the last `CONFIG RESETSTAT` (commands run by scripts included).
async fn command_calls(admin: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(admin)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            (!name.starts_with("info") && !name.starts_with("config"))
                .then(|| (name.to_string(), calls))
        })
        .collect()
}

async fn reset_stats(admin: &mut redis::aio::MultiplexedConnection) {
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(admin)
        .await
        .unwrap();
}

fn requests(c: &mut Criterion) {
    let plain = plain_server();
    let tls_dir = redis_support::temp_dir("bench-tls");
    let certs = redis_support::Certs::make(&tls_dir);
    let tls_port = redis_support::free_port();
    let tls = redis_support::Server::spawn(tls_port, &tls_dir, &certs.server_args(tls_port, false))
        .owning_dir();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let plain_url = plain.url();
    let tls_url = format!("rediss://127.0.0.1:{tls_port}/");
    let ca = certs.ca_pem.clone();
    let variants: Vec<(Requests, String)> = rt.block_on(async {
        let mut variants = Vec::new();
        for (store, url, after) in [
            ("redis", &plain_url, None),
            ("redis", &plain_url, Some(Duration::from_secs(60))),
            ("two-tier", &plain_url, None),
            ("two-tier", &plain_url, Some(Duration::from_secs(60))),
            ("redis-tls", &tls_url, None),
            ("redis-tls", &tls_url, Some(Duration::from_secs(60))),
        ] {
            let renewal = match after {
                None => "touch-every-request",
                Some(_) => "touch-after-60s",
            };
            let name = format!("{store}/{renewal}");
            let mut builder = redis_record_store(url.as_str()).prefix(format!("{name}:"));
            if store == "redis-tls" {
                builder = builder.tls_ca_pem(ca.clone());
            }
            if let Some(period) = after {
                builder = builder.touch_after(period);
            }
            let far = builder.build().await.expect("a Redis store");
            let (records, _) = common::records(
                REQUEST_SESSIONS,
                0x0ed1_5000_0000_0000_0000_0000_0000_0000 + variants.len() as i128,
            );
            let mut cookies = Vec::with_capacity(records.len());
            for record in &records {
                far.create(&mut record.clone()).await.unwrap();
                cookies.push(record.id.to_string());
            }
            let app = if store == "two-tier" {
                app(TieredStore::new(far, Duration::from_secs(1)).unwrap())
            } else {
                app(far)
            };
            variants.push((
                Requests {
                    name,
                    app,
                    cookies: Arc::new(cookies),
                },
                url.clone(),
            ));
        }
        variants
    });

    // Commands per request, each variant on its own (after one warm-up pass, so that the
    // stores with touch_after have written every session once, as in a steady state).
    let quick = std::env::args().any(|a| a == "--test");
    let counted = if quick { 200 } else { COUNTED_REQUESTS };
    println!(
        "\nRedis commands per request ({counted} requests, {REQUEST_SESSIONS} sessions, 1 in \
         {WRITE_EVERY} a write; INFO commandstats):"
    );
    println!("| store/renewal | commands per request | of which |");
    println!("|---|--:|---|");
    rt.block_on(async {
        for (variant, url) in &variants {
            let mut admin = admin_connection(url, &ca).await;
            variant.clone().run(99, counted).await;
            reset_stats(&mut admin).await;
            variant.clone().run(0, counted).await;
            let mut calls = command_calls(&mut admin).await;
            calls.sort_by_key(|c| std::cmp::Reverse(c.1));
            let total: u64 = calls.iter().map(|(_, n)| n).sum();
            let detail: Vec<String> = calls
                .iter()
                .map(|(name, n)| format!("{name} {:.3}", *n as f64 / counted as f64))
                .collect();
            println!(
                "| {} | {:.3} | {} |",
                variant.name,
                total as f64 / counted as f64,
                detail.join(", ")
            );
        }
    });

    // Requests per second, the variants interleaved round by round (this machine is shared
    // and noisy: a slow minute hits every variant alike), medians printed.
    let rounds = if quick { 1 } else { ROUNDS };
    let per_round = if quick { 100 } else { ROUND_REQUESTS };
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    rt.block_on(async {
        for _ in 0..rounds {
            for (i, (variant, _)) in variants.iter().enumerate() {
                let start = Instant::now();
                let tasks: Vec<_> = (0..TASKS)
                    .map(|t| tokio::spawn(variant.clone().run(t + 10, per_round)))
                    .collect();
                for task in tasks {
                    task.await.expect("a bench task");
                }
                rates[i].push((TASKS as u64 * per_round) as f64 / start.elapsed().as_secs_f64());
            }
        }
    });
    println!(
        "\nRequests per second ({TASKS} tasks, {rounds} interleaved rounds of {per_round} \
         requests per task; median, min-max):"
    );
    println!("| store/renewal | requests/s | min-max |");
    println!("|---|--:|--:|");
    for ((variant, _), rates) in variants.iter().zip(&mut rates) {
        rates.sort_by(f64::total_cmp);
        println!(
            "| {} | {:.0} | {:.0}-{:.0} |",
            variant.name,
            rates[rates.len() / 2],
            rates[0],
            rates[rates.len() - 1]
        );
    }

    let mut group = c.benchmark_group("redis-requests");
    group.throughput(Throughput::Elements(TASKS as u64 * ITER_REQUESTS));
    for (variant, _) in &variants {
        group.bench_function(variant.name.as_str(), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..TASKS)
                        .map(|t| tokio::spawn(variant.clone().run(t, iters * ITER_REQUESTS)))
                        .collect();
                    for task in tasks {
                        task.await.expect("a bench task");
                    }
                    start.elapsed()
                })
            });
        });
    }
    group.finish();
    drop(variants);
    drop(rt);
    drop((plain, tls));
}

/// A plain connection to the server at `url` (TLS with `ca` for `rediss://`).
async fn admin_connection(url: &str, ca: &str) -> redis::aio::MultiplexedConnection {
    let client = if url.starts_with("rediss://") {
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.as_bytes().to_vec()),
            },
        )
        .unwrap()
    } else {
        redis::Client::open(url).unwrap()
    };
    client.get_multiplexed_async_connection().await.unwrap()
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = redis, requests
}
criterion_main!(benches);
