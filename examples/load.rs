//! A load run against the example server: many distinct visitors (each request carries no
//! cookie, so each one starts a session), then a watch of `/stats` while the sessions expire.
//!
//! ```sh
//! SESSION_IDLE_SECS=10 cargo run --release --example server &
//! cargo run --release --example load            # VISITORS=1000000 CONNECTIONS=64 ROUNDS=3
//! ```
//!
//! Settings from the environment: `ADDR` (127.0.0.1:3000), `VISITORS` per round (1000000),
//! `CONNECTIONS` (64, HTTP/1.1 keep-alive), `ROUNDS` (3), `EXPIRY_TIMEOUT_SECS` (120: how long
//! to wait for the live sessions to reach zero after a round).
//!
//! It prints, per round, the request rate and the server's live sessions and resident memory
//! right after the round and once every session has expired: live sessions must drop to
//! zero, and resident memory must not keep growing from one round to the next.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn env_u64(name: &str, default: u64) -> Result<u64, Error> {
    match std::env::var(name) {
        Ok(v) => Ok(v.trim().parse().map_err(|e| format!("{name}={v:?}: {e}"))?),
        Err(_) => Ok(default),
    }
}

/// A keep-alive HTTP/1.1 connection that sends GETs and reads whole responses.
struct Connection {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Connection {
    async fn open(addr: &str) -> Result<Self, Error> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(stream),
            host: addr.to_string(),
        })
    }

    /// GET `path`; returns the status and the body.
    async fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>), Error> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .ok_or("no status line")?
            .parse()?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err("connection closed in the headers".into());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok((status, body))
    }
}

#[derive(Debug)]
struct Snapshot {
    live: u64,
    resident_mib: f64,
}

async fn stats(addr: &str) -> Result<Snapshot, Error> {
    let (status, body) = Connection::open(addr).await?.get("/stats").await?;
    if status != 200 {
        return Err(format!("/stats answered {status}").into());
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(Snapshot {
        live: v["live_sessions"].as_u64().ok_or("no live_sessions")?,
        resident_mib: v["resident_bytes"].as_u64().ok_or("no resident_bytes")? as f64
            / (1024.0 * 1024.0),
    })
}

/// Sends `visitors` cookie-less requests over `connections` connections; returns the time.
async fn round(addr: &str, visitors: u64, connections: u64) -> Result<Duration, Error> {
    let tickets = Arc::new(AtomicU64::new(visitors));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let tickets = tickets.clone();
        let addr = addr.to_string();
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::open(&addr).await?;
            // Relaxed: a ticket counter; nothing else is ordered by it.
            while tickets
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let (status, _) = conn.get("/").await?;
                if status != 200 {
                    return Err(format!("GET / answered {status}").into());
                }
            }
            Ok::<(), Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(start.elapsed())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_string());
    let visitors = env_u64("VISITORS", 1_000_000)?;
    let connections = env_u64("CONNECTIONS", 64)?.max(1);
    let rounds = env_u64("ROUNDS", 3)?.max(1);
    let timeout = Duration::from_secs(env_u64("EXPIRY_TIMEOUT_SECS", 120)?);

    let before = stats(&addr)
        .await
        .map_err(|e| format!("cannot reach the example server at {addr} ({e}); start it first"))?;
    println!(
        "load: {visitors} visitors per round, {connections} connections, {rounds} rounds, against {addr}"
    );
    println!(
        "server before: {} live sessions, {:.1} MiB resident\n",
        before.live, before.resident_mib
    );
    println!(
        "| round | requests/s | live after the round | MiB resident after the round | seconds until 0 live | MiB resident at 0 live |"
    );
    println!("|--:|--:|--:|--:|--:|--:|");
    for r in 1..=rounds {
        let took = round(&addr, visitors, connections).await?;
        let after = stats(&addr).await?;
        let waited = Instant::now();
        let drained = loop {
            let now = stats(&addr).await?;
            if now.live == 0 {
                break Some(now);
            }
            if waited.elapsed() > timeout {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let rate = visitors as f64 / took.as_secs_f64();
        match drained {
            Some(empty) => println!(
                "| {r} | {rate:.0} | {} | {:.1} | {:.1} | {:.1} |",
                after.live,
                after.resident_mib,
                waited.elapsed().as_secs_f64(),
                empty.resident_mib
            ),
            None => {
                println!(
                    "| {r} | {rate:.0} | {} | {:.1} | not within {} s | – |",
                    after.live,
                    after.resident_mib,
                    timeout.as_secs()
                );
                return Err("live sessions did not drop to zero".into());
            }
        }
    }
    Ok(())
}
