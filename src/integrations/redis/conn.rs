//! Where the store's commands go: one server (an auto-reconnecting `ConnectionManager`), the
//! master a set of Sentinels names ([`SentinelConn`]), or a Redis Cluster (the `redis` crate's
//! `cluster_async::ClusterConnection`), behind one [`Conn`] that is a `ConnectionLike`, so that
//! commands and scripts are sent the same way to all three.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisError,
    RedisFuture, Value,
};

use super::sentinel::SentinelConn;
use super::{Secrets, redact_url, timed_out};
use crate::session::Error;

/// How many times the cluster client retries a command (after a `MOVED`, a lost connection,
/// `TRYAGAIN`...) before the error reaches the store. Each try is bounded by the response
/// timeout, and the whole operation by the store's deadline anyway.
const CLUSTER_RETRIES: u32 = 2;

/// The connection settings of a store's builder that apply to every kind of target.
#[derive(Clone)]
pub(crate) struct Settings {
    /// Overrides the URLs' user name (ACL user) for the data nodes.
    pub(crate) username: Option<String>,
    /// Overrides the URLs' password for the data nodes.
    pub(crate) password: Option<String>,
    /// Overrides the URL's database (one server, Sentinel's master).
    pub(crate) db: Option<i64>,
    pub(crate) connection_timeout: Duration,
    pub(crate) response_timeout: Duration,
    #[cfg(feature = "redis-tls")]
    pub(crate) tls: Tls,
}

impl Settings {
    /// The bound on one round trip: connection plus response timeout.
    pub(crate) fn deadline(&self) -> Duration {
        self.connection_timeout
            .saturating_add(self.response_timeout)
    }

    /// The data nodes' connection info from `url`, with the builder's credentials and
    /// database applied.
    pub(crate) fn node_info(&self, url: &str, secrets: &Secrets) -> Result<ConnectionInfo, Error> {
        let info = url
            .into_connection_info()
            .map_err(|e| invalid_url(url, e, secrets))?;
        Ok(self.apply(info))
    }

    /// `info` with the builder's credentials and database.
    pub(crate) fn apply(&self, info: ConnectionInfo) -> ConnectionInfo {
        let mut redis = info.redis_settings().clone();
        if let Some(username) = &self.username {
            redis = redis.set_username(username);
        }
        if let Some(password) = &self.password {
            redis = redis.set_password(password);
        }
        if let Some(db) = self.db {
            redis = redis.set_db(db);
        }
        info.set_redis_settings(redis)
    }

    /// A client for `info`, with the TLS settings when its address is `rediss://`.
    pub(crate) fn client(&self, info: ConnectionInfo) -> Result<Client, Error> {
        let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        #[cfg(feature = "redis-tls")]
        {
            if tls {
                return self.tls.client(info);
            }
            if self.tls.configured() {
                return Err(Error::Config(
                    "TLS options (CA, client certificate) were given for a redis:// URL: use \
                     rediss:// to connect with TLS"
                        .into(),
                ));
            }
        }
        #[cfg(not(feature = "redis-tls"))]
        if tls {
            return Err(Error::Config(
                "rediss:// (TLS) needs evanesce's `redis-tls` feature".into(),
            ));
        }
        Client::open(info).map_err(|e| Error::Config(format!("invalid Redis settings: {e}")))
    }

    /// The async connection settings of one connection (Sentinel and its master).
    pub(crate) fn async_config(&self) -> redis::AsyncConnectionConfig {
        redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            .set_response_timeout(Some(self.response_timeout))
    }
}

/// The TLS settings of a store's builder (feature `redis-tls`).
#[cfg(feature = "redis-tls")]
#[derive(Clone, Default)]
pub(crate) struct Tls {
    /// PEM certificates of the CAs to trust instead of the system's.
    pub(crate) ca: Option<Vec<u8>>,
    /// PEM client certificate chain and key, for servers that ask for one.
    pub(crate) client: Option<(Vec<u8>, Vec<u8>)>,
    /// Accept any server certificate (no verification at all).
    pub(crate) danger_accept_invalid_certs: bool,
}

#[cfg(feature = "redis-tls")]
impl Tls {
    fn configured(&self) -> bool {
        self.ca.is_some() || self.client.is_some() || self.danger_accept_invalid_certs
    }

    /// The certificates for the `redis` crate, if any were given.
    pub(crate) fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.ca.is_none() && self.client.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca.clone(),
        })
    }

    /// `info` (a TLS address) with verification as configured: a URL's `#insecure` is refused
    /// unless [`danger_accept_invalid_certs`](Self::danger_accept_invalid_certs) is set, which
    /// in turn sets it.
    pub(crate) fn checked(&self, info: ConnectionInfo) -> Result<ConnectionInfo, Error> {
        let ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            tls_params,
        } = info.addr().clone()
        else {
            return Ok(info);
        };
        if insecure && !self.danger_accept_invalid_certs {
            return Err(Error::Config(
                "the Redis URL ends in #insecure, which turns off certificate verification: \
                 set danger_accept_invalid_certs(true) on the builder if that is really meant"
                    .into(),
            ));
        }
        Ok(info.set_addr(ConnectionAddr::TcpTls {
            host,
            port,
            insecure: self.danger_accept_invalid_certs,
            tls_params,
        }))
    }

    fn client(&self, info: ConnectionInfo) -> Result<Client, Error> {
        install_crypto_provider();
        let info = self.checked(info)?;
        let client = match self.certificates() {
            Some(certificates) => Client::build_with_tls(info, certificates),
            None => Client::open(info),
        };
        client.map_err(|e| Error::Config(format!("invalid TLS settings for Redis: {e}")))
    }
}

/// rustls needs a process-wide crypto provider; install `ring`'s unless the application
/// already chose one (installing fails harmlessly then, if another thread won the race).
///
/// rustls 0.23.48 deprecates `ring`'s provider because it has no post-quantum key exchange;
/// the alternative, aws-lc-rs, builds a large C library. Redis servers negotiate the classic
/// groups (X25519, P-256) that `ring` has; an application that wants post-quantum key
/// exchange installs aws-lc-rs's provider before building a store, and that one is used.
#[cfg(feature = "redis-tls")]
pub(crate) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        let _ = provider.install_default();
    }
}

/// An invalid URL as a configuration error that shows the URL redacted, and no secret.
pub(crate) fn invalid_url(url: &str, e: RedisError, secrets: &Secrets) -> Error {
    let hint = if url.starts_with("rediss:") && !cfg!(feature = "redis-tls") {
        " (rediss:// needs evanesce's `redis-tls` feature)"
    } else {
        ""
    };
    Error::Config(secrets.mask(&format!(
        "invalid Redis URL {:?}: {e}{hint}",
        redact_url(url)
    )))
}

/// Where a store sends its commands. Cheap to clone (every kind is a shared handle).
#[derive(Clone)]
pub(crate) enum Conn {
    /// One server, reconnected on its own when the connection drops.
    Single(ConnectionManager),
    /// The master a set of Sentinels names, rediscovered after a failure.
    Sentinel(std::sync::Arc<SentinelConn>),
    /// A Redis Cluster: commands routed by key slot.
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connects to one server at `info` (within `deadline`).
    pub(crate) async fn single(
        client: Client,
        settings: &Settings,
        secrets: &Secrets,
    ) -> Result<Self, Error> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connection_timeout))
            .set_response_timeout(Some(settings.response_timeout))
            // Reconnection is retried on the next command anyway: keep each attempt short so
            // that a command waiting on one stays within its deadline.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(settings.connection_timeout);
        let deadline = settings.deadline();
        match tokio::time::timeout(deadline, ConnectionManager::new_with_config(client, config))
            .await
        {
            Ok(conn) => Ok(Conn::Single(conn.map_err(|e| secrets.backend(e))?)),
            Err(_) => Err(timed_out(deadline)),
        }
    }

    /// Connects to the cluster that the `nodes` belong to (any of them will do: the client
    /// learns the others from it).
    pub(crate) async fn cluster(
        nodes: &[String],
        settings: &Settings,
        secrets: &Secrets,
    ) -> Result<Self, Error> {
        if nodes.is_empty() {
            return Err(Error::Config(
                "a Redis Cluster needs at least one node URL".into(),
            ));
        }
        if settings.db.is_some_and(|db| db != 0) {
            return Err(Error::Config("a Redis Cluster has only database 0".into()));
        }
        let mut infos = Vec::with_capacity(nodes.len());
        for url in nodes {
            let info = settings.node_info(url, secrets)?;
            if info.redis_settings().db() != 0 {
                return Err(Error::Config(secrets.mask(&format!(
                    "{:?}: a Redis Cluster has only database 0",
                    redact_url(url)
                ))));
            }
            infos.push(info);
        }
        let tls = matches!(infos[0].addr(), ConnectionAddr::TcpTls { .. });
        #[cfg(not(feature = "redis-tls"))]
        if tls {
            return Err(Error::Config(
                "rediss:// (TLS) needs evanesce's `redis-tls` feature".into(),
            ));
        }
        #[cfg(feature = "redis-tls")]
        if tls {
            install_crypto_provider();
            infos = infos
                .into_iter()
                .map(|info| settings.tls.checked(info))
                .collect::<Result<_, _>>()?;
        } else if settings.tls.configured() {
            return Err(Error::Config(
                "TLS options were given for redis:// cluster nodes: use rediss:// to connect \
                 with TLS"
                    .into(),
            ));
        }
        #[cfg_attr(not(feature = "redis-tls"), allow(unused_mut))]
        let mut builder = ClusterClientBuilder::new(infos)
            .connection_timeout(settings.connection_timeout)
            .response_timeout(settings.response_timeout)
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(10)
            .max_retry_wait(u64::try_from(settings.response_timeout.as_millis()).unwrap_or(1000));
        #[cfg(feature = "redis-tls")]
        if tls {
            if settings.tls.danger_accept_invalid_certs {
                builder = builder.tls(redis::TlsMode::Insecure);
            }
            if let Some(certificates) = settings.tls.certificates() {
                builder = builder.certs(certificates);
            }
        }
        let client = builder.build().map_err(|e| {
            Error::Config(secrets.mask(&format!("invalid Redis Cluster settings: {e}")))
        })?;
        let deadline = settings.deadline();
        match tokio::time::timeout(deadline, client.get_async_connection()).await {
            Ok(conn) => Ok(Conn::Cluster(conn.map_err(|e| secrets.backend(e))?)),
            Err(_) => Err(timed_out(deadline)),
        }
    }

    /// The first step of a `SCAN` over every primary that holds keys: each node's next cursor
    /// (0 when that node is done) and the keys it returned. One server has one node; a
    /// cluster's primaries are those that `CLUSTER SLOTS` names, so that a primary that cannot
    /// be reached fails the scan instead of being left out of it.
    pub(crate) async fn scan_start(
        &self,
        scan: &Cmd,
    ) -> Result<Vec<(Node, u64, Vec<Vec<u8>>)>, RedisError> {
        match self {
            Conn::Cluster(conn) => {
                let mut conn = conn.clone();
                let slots = conn
                    .route_command(
                        redis::cmd("CLUSTER").arg("SLOTS").clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    )
                    .await?;
                let mut steps = Vec::new();
                for (host, port) in primaries(slots)? {
                    let node = Node::Address { host, port };
                    let (cursor, keys) = self.scan_on(&node, scan).await?;
                    steps.push((node, cursor, keys));
                }
                Ok(steps)
            }
            _ => {
                let mut conn = self.clone();
                let (cursor, keys) = scan.query_async(&mut conn).await?;
                Ok(vec![(Node::Only, cursor, keys)])
            }
        }
    }

    /// A later `SCAN` step on one node.
    pub(crate) async fn scan_on(
        &self,
        node: &Node,
        scan: &Cmd,
    ) -> Result<(u64, Vec<Vec<u8>>), RedisError> {
        match (self, node) {
            (Conn::Cluster(conn), Node::Address { host, port }) => {
                let mut conn = conn.clone();
                let reply = conn
                    .route_command(
                        scan.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        }),
                    )
                    .await?;
                Ok(redis::from_redis_value(reply)?)
            }
            _ => {
                let mut conn = self.clone();
                scan.query_async(&mut conn).await
            }
        }
    }
}

/// The node a `SCAN` cursor belongs to.
#[derive(Clone, Debug)]
pub(crate) enum Node {
    /// The only node (one server, Sentinel's master).
    Only,
    /// A cluster primary.
    Address { host: String, port: u16 },
}

/// The distinct primaries (host, port) of a `CLUSTER SLOTS` reply: a list of
/// `[start, end, [host, port, id, ...], replicas...]`.
fn primaries(slots: Value) -> Result<Vec<(String, u16)>, RedisError> {
    let Value::Array(ranges) = slots else {
        return Err(unexpected(format!("CLUSTER SLOTS: {slots:?}")));
    };
    let mut found = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            return Err(unexpected(format!("a slot range: {range:?}")));
        };
        let Some(Value::Array(primary)) = fields.get(2) else {
            return Err(unexpected(format!("a slot range's primary: {fields:?}")));
        };
        let (Some(host), Some(port)) = (primary.first(), primary.get(1)) else {
            return Err(unexpected(format!("a primary: {primary:?}")));
        };
        let host: String = redis::from_redis_value(host.clone())?;
        let port: u16 = redis::from_redis_value(port.clone())?;
        if !found.contains(&(host.clone(), port)) {
            found.push((host, port));
        }
    }
    if found.is_empty() {
        return Err(unexpected("CLUSTER SLOTS names no primary".to_string()));
    }
    Ok(found)
}

fn unexpected(what: String) -> RedisError {
    RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply from Redis",
        what,
    ))
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
            Conn::Sentinel(conn) => Box::pin(async move { conn.command(cmd).await }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
            Conn::Sentinel(conn) => {
                Box::pin(async move { conn.pipeline(cmd, offset, count).await })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(_) => 0,
            Conn::Sentinel(conn) => conn.db(),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_primaries_of_cluster_slots() {
        let node = |port: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |start, end, primary: i64, replica: i64| {
            Value::Array(vec![
                Value::Int(start),
                Value::Int(end),
                node(primary),
                node(replica),
            ])
        };
        let slots = Value::Array(vec![
            range(0, 5460, 7000, 7003),
            range(5461, 10922, 7001, 7004),
            range(10923, 16383, 7000, 7005),
        ]);
        assert_eq!(
            primaries(slots).unwrap(),
            vec![
                ("127.0.0.1".to_string(), 7000),
                ("127.0.0.1".to_string(), 7001)
            ]
        );
        assert!(primaries(Value::Array(vec![])).is_err());
        assert!(primaries(Value::Int(1)).is_err());
        assert!(primaries(Value::Array(vec![Value::Int(1)])).is_err());
    }
}
