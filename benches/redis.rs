//! Sessions in Redis: `get`, `set` and `touch` throughput against Redis alone
//! ([`RedisRecordStore`]) and against the two-tier store ([`TieredStore`]: evanesce's near
//! cache in front of the same Redis), loopback, 2 tasks on a 2-thread tokio runtime, in one
//! criterion run. The bench starts its own `redis-server` (it must be on PATH).
//!
//! ```text
//! cargo bench --bench redis
//! cargo bench --bench redis -- --test      # each bench once, as a smoke test
//! ```
//!
//! Bench ids are `redis/<op>/<store>`; throughput counts the operations of both tasks.
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

mod common;

use common::Op;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use evanesce::integrations::redis::{RedisRecordStore, TieredStore, redis_record_store};
use tower_sessions::session::Record;
use tower_sessions::session_store::SessionStore;

const SESSIONS: usize = 10_000;
const TASKS: usize = 2;
/// Operations per task in one criterion iteration.
const ITER_OPS: u64 = 1 << 8;

/// A `redis-server` of the bench's own, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    fn start() -> Self {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("evanesce-redis-bench-{port}"));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `redis-server` ({e}): the bench needs it on PATH")
            });
        let server = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.answers() {
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
            return false;
        };
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
                (Subject::Tiered(s), Op::Touch) => assert!(s.touch(renewed).await.unwrap()),
            }
        }
    }
}

fn redis(c: &mut Criterion) {
    let server = RedisServer::start();
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

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = redis
}
criterion_main!(benches);
