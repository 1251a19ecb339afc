//! Real Redis servers for the Redis tests (and the Redis benchmark): `redis-server` processes
//! started on free loopback ports in temporary directories (no persistence), killed on drop;
//! TLS certificates made with rcgen; and the behaviour suite every topology runs.
//!
//! Without `redis-server` on PATH a test says so on stderr and passes, so that `cargo test`
//! works on a machine without Redis; with `EVANESCE_REDIS_TESTS=required` (which `.ci/run`
//! sets, after installing the server) a missing server fails the test.

#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use evanesce::integrations::redis::{RedisStore, RedisStoreBuilder};
use evanesce::session::{Cookie, Error, Session};
use serde_json::json;

/// Whether the Redis tests must run (`EVANESCE_REDIS_TESTS=required`).
pub fn required() -> bool {
    std::env::var("EVANESCE_REDIS_TESTS").as_deref() == Ok("required")
}

/// Whether `program --version` runs.
fn present(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the tests can go on: true if `redis-server` (and `redis-cli`, if `cli`) are on
/// PATH; false (after saying so) if not and the tests are not required. Panics if they are
/// required and missing.
pub fn available(cli: bool) -> bool {
    let mut missing = Vec::new();
    if !present("redis-server") {
        missing.push("redis-server");
    }
    if cli && !present("redis-cli") {
        missing.push("redis-cli");
    }
    if missing.is_empty() {
        return true;
    }
    assert!(
        !required(),
        "EVANESCE_REDIS_TESTS=required, but {missing:?} not on PATH (Debian: apt-get install \
         redis-server redis-tools)"
    );
    eprintln!(
        "SKIPPED: {missing:?} not on PATH (Debian: apt-get install redis-server redis-tools); \
         set EVANESCE_REDIS_TESTS=required to make this a failure"
    );
    false
}

/// A free loopback port.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free loopback ports (all held until all are chosen, so that the system does
/// not hand out one twice).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A fresh temporary directory of the test's own.
pub fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "evanesce-{what}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `redis-server` of our own (a server, a replica, a Sentinel or a cluster node), killed
/// (and its directory removed) on drop.
pub struct Server {
    child: Option<Child>,
    /// The port it listens on (the TLS port for a TLS server).
    pub port: u16,
    pub dir: PathBuf,
    args: Vec<String>,
    owns_dir: bool,
}

impl Server {
    /// `redis-server` with `args` (after the defaults: loopback, no persistence, `dir`),
    /// answering on `port` within 10 s.
    pub fn spawn(port: u16, dir: &Path, args: &[String]) -> Self {
        let mut server = Self {
            child: None,
            port,
            dir: dir.to_path_buf(),
            args: args.to_vec(),
            owns_dir: false,
        };
        server.start();
        server
    }

    /// A plain server on a free port with `extra` arguments, in a directory of its own.
    pub fn plain(extra: &[&str]) -> Self {
        let port = free_port();
        let dir = temp_dir("redis");
        let mut args = vec!["--port".to_string(), port.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = Self::spawn(port, &dir, &args);
        server.owns_dir = true;
        server
    }

    /// The server's own directory is removed on drop.
    pub fn owning_dir(mut self) -> Self {
        self.owns_dir = true;
        self
    }

    fn start(&mut self) {
        let mut command = Command::new("redis-server");
        // A Sentinel reads its configuration file, which must come first.
        let config = self.args.first().filter(|a| a.ends_with(".conf"));
        if let Some(config) = config {
            command.arg(config);
        }
        command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args[usize::from(config.is_some())..])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start `redis-server` ({e}): the Redis tests need a real server on PATH \
                 (Debian: apt-get install redis-server)"
            )
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.listening() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("redis-server {:?} exited at start: {status}", self.args);
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not listen within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the port accepts connections (and, unless it is TLS, answers `PING` with
    /// `+PONG` or `-NOAUTH`).
    fn listening(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
            return false;
        };
        if self.args.iter().any(|a| a == "--tls-port") {
            return true;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && (&reply == b"+PONG\r\n" || reply.starts_with(b"-NOAUTH"))
    }

    /// `redis://127.0.0.1:port/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends the server a signal (`STOP`, `CONT`).
    pub fn signal(&self, signal: &str) {
        signal_pid(self.pid(), signal);
    }

    /// A plain client, for looking behind the store's back (not for TLS or password servers).
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap()
    }

    /// A command's reply from a plain client.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        cmd.query(&mut self.client()).unwrap()
    }
}

/// Sends process `pid` a signal (`STOP`, `CONT`).
pub fn signal_pid(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `op` (a step that must succeed: a store's build, a first write) again while it fails,
/// for up to 10 s. Some tests give their store short timeouts so that its failures come fast;
/// a server or a test thread descheduled that long (a loaded machine) times such a step out
/// once in a while, which is not what those tests are about.
pub async fn until_ok<T, E: std::fmt::Debug, F: std::future::Future<Output = Result<T, E>>>(
    mut op: impl FnMut() -> F,
) -> T {
    let started = Instant::now();
    loop {
        match op().await {
            Ok(value) => return value,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(10),
                "still failing after 10 s: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `f` on a thread and fails if it has not returned within `limit` (a hang is a bug).
pub fn watchdog<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(value) => {
            let _ = handle.join();
            value
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread ended without a value"),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("watchdog: the test did not finish within {limit:?} (a hang)")
        }
    }
}

/// `body` on a fresh multi-threaded tokio runtime, under a watchdog of `limit`.
pub fn run<F>(limit: Duration, body: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()>,
{
    watchdog(limit, move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(body())
    })
}

// ---- TLS ----

/// A CA, a server certificate it signed (for `localhost` and `127.0.0.1`), a client
/// certificate it signed, and a second, unrelated CA; files for redis-server, PEM for the
/// store.
pub struct Certs {
    pub ca_pem: String,
    pub other_ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    pub ca_file: PathBuf,
    pub server_cert_file: PathBuf,
    pub server_key_file: PathBuf,
}

impl Certs {
    /// Makes them in `dir`.
    pub fn make(dir: &Path) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.distinguished_name.push(DnType::CommonName, name);
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        };
        let ca_issuer = ca("evanesce test CA");
        let other = ca("evanesce other CA");
        let leaf = |names: Vec<String>, cn: &str| {
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca_issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) =
            leaf(vec!["localhost".into(), "127.0.0.1".into()], "localhost");
        let (client_cert, client_key) = leaf(vec!["evanesce-client".into()], "evanesce-client");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Self {
            ca_pem: ca_issuer.pem(),
            other_ca_pem: other.pem(),
            client_cert_pem: client_cert,
            client_key_pem: client_key,
            ca_file: write("ca.pem", &ca_issuer.pem()),
            server_cert_file: write("server.pem", &server_cert),
            server_key_file: write("server.key", &server_key),
        }
    }

    /// The `redis-server` arguments of a TLS-only server on `port` (`--port 0`), asking
    /// clients for a certificate if `clients`.
    pub fn server_args(&self, port: u16, clients: bool) -> Vec<String> {
        let path = |p: &PathBuf| p.display().to_string();
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path(&self.server_cert_file),
            "--tls-key-file".into(),
            path(&self.server_key_file),
            "--tls-ca-cert-file".into(),
            path(&self.ca_file),
            "--tls-auth-clients".into(),
            if clients { "yes" } else { "no" }.into(),
        ]
    }
}

// ---- the behaviour suite ----

pub fn expiring(ttl: Duration) -> Session {
    Session::with_cookie(Cookie::expiring_in(ttl, SystemTime::now()))
}

fn assert_near(actual: Option<Duration>, expected: Duration) {
    let actual = actual.expect("the key has a lifetime");
    let slack = Duration::from_secs(3);
    assert!(
        actual <= expected && actual + slack >= expected,
        "lifetime {actual:?}, expected about {expected:?}"
    );
}

/// The session store's behaviour against whatever `builder()` talks to (each call gives a
/// fresh builder for the same target, with its credentials and TLS options): set/get round
/// trip, lifetimes, zero lifetimes, conditional writes, touch (cookie only, never
/// resurrecting), destroy of one and many, ids/all/length/clear across more than one SCAN
/// step and kept to the prefix, Redis's own expiry, and bytes that do not decode. Uses the
/// prefixes `{base}suite:` and `{base}other:`.
pub async fn behaviour_suite(base: &str, builder: impl Fn() -> RedisStoreBuilder) {
    let (suite, other) = (format!("{base}suite:"), format!("{base}other:"));
    let store = async |prefix: &str| builder().prefix(prefix).build().await.unwrap();
    let s = store(&suite).await;
    let hour = Duration::from_secs(3600);

    // Round trip, replace, not found.
    let mut session = expiring(hour);
    session.insert("user", json!({"name": "ada", "roles": ["admin"]}));
    s.set("a", &session).await.unwrap();
    assert_eq!(s.get("a").await.unwrap(), Some(session.clone()));
    session.insert("views", 2);
    s.set("a", &session).await.unwrap();
    assert_eq!(s.get("a").await.unwrap(), Some(session.clone()));
    assert_eq!(s.get("never-set").await.unwrap(), None);
    assert_near(s.expires_in("a").await.unwrap(), hour);

    // A zero lifetime deletes; conditional writes.
    let past = Session::with_cookie(Cookie::new().with_expires(SystemTime::UNIX_EPOCH));
    s.set("a", &past).await.unwrap();
    assert_eq!(s.get("a").await.unwrap(), None);
    assert!(!s.set_if_present("a", &session).await.unwrap());
    assert!(s.set_if_absent("a", &session).await.unwrap());
    assert!(!s.set_if_absent("a", &expiring(hour)).await.unwrap());
    assert_eq!(s.get("a").await.unwrap(), Some(session.clone()));
    assert!(s.set_if_present("a", &session).await.unwrap());

    // touch: the cookie and the lifetime only; never a resurrection.
    let mut newer = expiring(2 * hour);
    newer.insert("views", 100);
    assert!(s.touch("a", &newer).await.unwrap());
    let touched = s.get("a").await.unwrap().unwrap();
    assert_eq!(touched.get("views"), Some(&json!(2)), "user data kept");
    assert_eq!(touched.cookie(), newer.cookie(), "cookie replaced");
    assert_near(s.expires_in("a").await.unwrap(), 2 * hour);
    assert!(!s.touch("missing", &newer).await.unwrap());
    assert_eq!(s.get("missing").await.unwrap(), None);

    // destroy one and many.
    for id in ["b", "c", "d"] {
        s.set(id, &session).await.unwrap();
    }
    assert_eq!(s.destroy("a").await.unwrap(), 1);
    assert_eq!(s.destroy(["b", "c", "missing"]).await.unwrap(), 2);
    assert_eq!(s.ids().await.unwrap(), vec!["d".to_string()]);

    // ids, all, length, clear: more than one SCAN step, only the prefix.
    let other = store(&other).await;
    other.set("theirs", &session).await.unwrap();
    let mut expected = std::collections::HashMap::new();
    for i in 0..700 {
        let mut s_i = expiring(hour);
        s_i.insert("i", i);
        let id = format!("s{i}");
        s.set(&id, &s_i).await.unwrap();
        expected.insert(id, s_i);
    }
    s.destroy("d").await.unwrap();
    assert_eq!(s.length().await.unwrap(), 700);
    let mut ids = s.ids().await.unwrap();
    ids.sort();
    let mut expected_ids: Vec<String> = expected.keys().cloned().collect();
    expected_ids.sort();
    assert_eq!(ids, expected_ids);
    assert_eq!(s.all().await.unwrap(), expected);
    assert_eq!(s.clear().await.unwrap(), 700);
    assert_eq!(s.length().await.unwrap(), 0);
    assert_eq!(other.ids().await.unwrap(), vec!["theirs".to_string()]);
    assert_eq!(other.clear().await.unwrap(), 1);

    // Redis expires sessions itself.
    let short = Session::with_cookie(Cookie::new().with_max_age_field(Duration::from_millis(200)));
    s.set("short", &short).await.unwrap();
    let started = Instant::now();
    while s.get("short").await.unwrap().is_some() {
        assert!(started.elapsed() < Duration::from_secs(5), "not expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Bytes that do not decode: one typed error, then gone. (Planted through a store of
    // another serializer, so that the suite needs no side channel to the server.)
    let raw = builder()
        .prefix(suite.as_str())
        .serializer(Raw)
        .build()
        .await
        .unwrap();
    undecodable_bytes_are_reported_once(&s, &raw).await;
    s.clear().await.unwrap();
}

/// A serializer that stores a session's bytes as they are (to plant undecodable values).
pub struct Raw;

/// Sessions as raw bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct RawSession(pub Vec<u8>);

impl evanesce::session::SessionData for RawSession {
    fn cookie_ttl(&self, _now: SystemTime) -> Option<Duration> {
        Some(Duration::from_secs(60))
    }
    fn touch_from(&mut self, _newer: &Self) {}
}

impl evanesce::session::Serializer for Raw {
    type Session = RawSession;
    fn encode(&self, session: &RawSession) -> Result<Vec<u8>, evanesce::session::BoxError> {
        Ok(session.0.clone())
    }
    fn decode(&self, bytes: &[u8]) -> Result<RawSession, evanesce::session::BoxError> {
        Ok(RawSession(bytes.to_vec()))
    }
}

/// Plants bytes that do not decode through `raw` (a store of [`Raw`] with the suite's
/// prefix), and checks that `s` reports them once and removes them.
pub async fn undecodable_bytes_are_reported_once(s: &RedisStore, raw: &RedisStore<Raw>) {
    raw.set("bad", &RawSession(b"{not json".to_vec()))
        .await
        .unwrap();
    match s.get("bad").await {
        Err(Error::Decode { id, .. }) => assert_eq!(id, "bad"),
        other => panic!("expected a decode error, got {other:?}"),
    }
    assert_eq!(s.get("bad").await.unwrap(), None, "removed");
    raw.set("bad2", &RawSession(b"[1, 2]".to_vec()))
        .await
        .unwrap();
    assert!(matches!(s.all().await, Err(Error::Decode { .. })));
    assert!(s.all().await.unwrap().is_empty());
}
