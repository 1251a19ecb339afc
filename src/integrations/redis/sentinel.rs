//! Redis Sentinel: the store talks to the master that the Sentinels name for a service, and
//! asks them again after a failure, so that it follows a failover.
//!
//! Discovery (the [Sentinel client protocol]): ask each Sentinel in turn for
//! `SENTINEL GET-MASTER-ADDR-BY-NAME service`, connect to the address it gives, and check with
//! `ROLE` that the server really is a master (a Sentinel that has not yet seen a failover names
//! the old one). Every step is bounded by the connection and response timeouts.
//!
//! The master connection is dropped, and the next command discovers the master again:
//! - when a Sentinel announces a failover of the service (`+switch-master`; a background task
//!   listens to one Sentinel at a time, and moves to the next when it loses it);
//! - when a command fails in a way that says the server may no longer be the master: a lost
//!   or refused connection, a timeout, or a `READONLY` / `MASTERDOWN` / `LOADING` reply.
//!
//! A command refused with `READONLY` (the server had become a replica, so it did nothing) is
//! sent once more to the newly discovered master; any other failed command returns its error
//! (whether it took effect is unknown).
//!
//! Sentinel's failover is asynchronous: between the promotion of a replica and the moment a
//! client hears of it (or the old master is turned into a replica), writes that reach the old
//! master are lost when it resyncs from the new one. The `+switch-master` listener keeps that
//! window to a Sentinel round trip for this store.
//!
//! [Sentinel client protocol]: https://redis.io/docs/latest/develop/reference/sentinel-clients/

use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Client, Cmd, ConnectionAddr, ConnectionInfo, Pipeline, RedisError, Value};

use super::conn::Settings;
use crate::sync::{Arc, Mutex, Weak};

/// How often the `+switch-master` listener checks that its store still exists (it ends when
/// the store is dropped), and waits before it tries the Sentinels again after losing them all.
const WATCH_TICK: Duration = Duration::from_secs(1);

/// The master connection, and a generation number that tells a connection dropped after a
/// failure from the one discovered since.
struct Current {
    generation: u64,
    conn: Option<MultiplexedConnection>,
}

/// The connection to a Sentinel-monitored master.
pub(crate) struct SentinelConn {
    /// The Sentinels, in the order given.
    sentinels: Vec<ConnectionInfo>,
    service: String,
    settings: Settings,
    current: Mutex<Current>,
    /// Held while discovering, so that concurrent failures discover once.
    discovering: tokio::sync::Mutex<()>,
}

impl SentinelConn {
    /// A connection to the master of `service`, discovered at once (so that a wrong service
    /// name or unreachable Sentinels fail the build), with its `+switch-master` listener
    /// started on the current tokio runtime.
    pub(crate) async fn connect(
        sentinels: Vec<ConnectionInfo>,
        service: String,
        settings: Settings,
    ) -> Result<Arc<Self>, RedisError> {
        let conn = Arc::new(Self {
            sentinels,
            service,
            settings,
            current: Mutex::new(Current {
                generation: 0,
                conn: None,
            }),
            discovering: tokio::sync::Mutex::new(()),
        });
        conn.master().await?;
        tokio::spawn(watch(Arc::downgrade(&conn)));
        Ok(conn)
    }

    /// Drops the master connection, whatever its generation (a failover was announced).
    fn forget_any(&self) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current.conn = None;
    }

    /// The database commands go to.
    pub(crate) fn db(&self) -> i64 {
        self.settings.db.unwrap_or(0)
    }

    /// Sends one command to the master.
    pub(crate) async fn command(&self, cmd: &Cmd) -> Result<Value, RedisError> {
        let (generation, mut conn) = self.master().await?;
        match conn.req_packed_command(cmd).await {
            Err(e) if stale(&e) => {
                self.forget(generation);
                if e.code() != Some("READONLY") {
                    return Err(e);
                }
                let (_, mut conn) = self.master().await?;
                conn.req_packed_command(cmd).await
            }
            other => other,
        }
    }

    /// Sends a pipeline to the master.
    pub(crate) async fn pipeline(
        &self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> Result<Vec<Value>, RedisError> {
        let (generation, mut conn) = self.master().await?;
        let result = conn.req_packed_commands(pipeline, offset, count).await;
        if let Err(e) = &result
            && stale(e)
        {
            self.forget(generation);
        }
        result
    }

    /// The master connection, discovered if there is none.
    async fn master(&self) -> Result<(u64, MultiplexedConnection), RedisError> {
        if let Some(found) = self.known() {
            return Ok(found);
        }
        let _discovering = self.discovering.lock().await;
        // Another task may have discovered it while this one waited.
        if let Some(found) = self.known() {
            return Ok(found);
        }
        let conn = self.discover().await?;
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current.generation += 1;
        current.conn = Some(conn.clone());
        Ok((current.generation, conn))
    }

    fn known(&self) -> Option<(u64, MultiplexedConnection)> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current
            .conn
            .as_ref()
            .map(|conn| (current.generation, conn.clone()))
    }

    /// Drops the master connection of `generation` (not a newer one).
    fn forget(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.generation == generation {
            current.conn = None;
        }
    }

    /// Asks each Sentinel in turn for the master, and connects to the first address that
    /// answers `ROLE` as a master.
    async fn discover(&self) -> Result<MultiplexedConnection, RedisError> {
        let mut last = None;
        for sentinel in &self.sentinels {
            match self.ask(sentinel).await {
                Ok(Some(conn)) => return Ok(conn),
                Ok(None) => {}
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown),
                "no Sentinel named a reachable master",
                format!("service {:?}", self.service),
            ))
        }))
    }

    /// The master as `sentinel` names it, if that server is a master now.
    async fn ask(
        &self,
        sentinel: &ConnectionInfo,
    ) -> Result<Option<MultiplexedConnection>, RedisError> {
        let client = self.client(sentinel.clone())?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&self.settings.async_config())
            .await?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.service)
            .query_async(&mut conn)
            .await?;
        let Some((host, port)) = addr else {
            return Ok(None);
        };
        let addr = match sentinel.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        let info = self.settings.apply(
            sentinel
                .clone()
                .set_addr(addr)
                .set_redis_settings(redis::RedisConnectionInfo::default()),
        );
        let mut master = self
            .client(info)?
            .get_multiplexed_async_connection_with_config(&self.settings.async_config())
            .await?;
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut master).await?;
        let is_master = matches!(role.first(), Some(Value::BulkString(r)) if r == b"master")
            || matches!(role.first(), Some(Value::SimpleString(r)) if r == "master");
        Ok(is_master.then_some(master))
    }

    fn client(&self, info: ConnectionInfo) -> Result<Client, RedisError> {
        self.settings.client(info).map_err(|e| {
            RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "invalid Sentinel settings",
                e.to_string(),
            ))
        })
    }
}

/// Whether a failure says the connection may no longer lead to the master.
fn stale(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}

/// Listens to the Sentinels' `+switch-master` announcements (one Sentinel at a time, the next
/// when it is lost) and drops the store's master connection when the service fails over. Ends
/// when the store is dropped.
async fn watch(store: Weak<SentinelConn>) {
    let mut next = 0;
    loop {
        let (client, deadline) = {
            let Some(conn) = store.upgrade() else { return };
            let sentinel = conn.sentinels[next % conn.sentinels.len()].clone();
            next += 1;
            (conn.client(sentinel), conn.settings.deadline())
        };
        if let Ok(client) = client
            && let Ok(Ok(mut pubsub)) =
                tokio::time::timeout(deadline, client.get_async_pubsub()).await
            && let Ok(Ok(())) =
                tokio::time::timeout(deadline, pubsub.subscribe("+switch-master")).await
        {
            let mut messages = pubsub.into_on_message();
            loop {
                match tokio::time::timeout(WATCH_TICK, messages.next()).await {
                    Ok(Some(message)) => {
                        let Some(conn) = store.upgrade() else { return };
                        // "<service> <old ip> <old port> <new ip> <new port>"
                        let payload: String = message.get_payload().unwrap_or_default();
                        if payload.split(' ').next() == Some(conn.service.as_str()) {
                            conn.forget_any();
                        }
                    }
                    // The Sentinel is gone: listen to the next one.
                    Ok(None) => break,
                    Err(_) => {
                        if store.strong_count() == 0 {
                            return;
                        }
                    }
                }
            }
        }
        if store.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(WATCH_TICK).await;
    }
}
