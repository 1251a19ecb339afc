//! Redis as production runs it, against real servers started on loopback: TLS (`rediss://`,
//! a CA and certificates made here, client certificates), ACL users and passwords,
//! Sentinel (a failover mid-test) and Cluster (three primaries). Each topology runs the
//! behaviour suite of `redis_support`, and the attacks that matter for it: a wrong CA, a
//! wrong password, a dead Sentinel, a cluster node down. Every test runs under a watchdog.

mod common;
mod redis_support;

use std::time::{Duration, Instant};

use evanesce::integrations::redis::{RedisStore, Target, TieredStore, redis_record_store};
use evanesce::session::Error;
use redis_support::{
    Certs, Server, available, behaviour_suite, expiring, free_port, run, until_ok,
};

const LIMIT: Duration = Duration::from_secs(90);

/// The text of an error and its sources, in every form.
fn error_text(e: &Error) -> String {
    let mut text = format!("{e} {e:?} {e:#?}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(" {s} {s:?}"));
        source = s.source();
    }
    text
}

/// The `redis::RedisError` behind a backend error.
fn redis_error(e: &Error) -> &redis::RedisError {
    match e {
        Error::Backend(source) => source
            .downcast_ref::<redis::RedisError>()
            .unwrap_or_else(|| panic!("not a RedisError: {source:?}")),
        other => panic!("expected a backend error, got {other:?}"),
    }
}

// ---- TLS ----

/// A TLS-only server (`--port 0 --tls-port ...`) with fresh certificates.
fn tls_server(clients: bool) -> (Server, Certs) {
    let dir = redis_support::temp_dir("tls");
    let certs = Certs::make(&dir);
    let port = free_port();
    let server = Server::spawn(port, &dir, &certs.server_args(port, clients)).owning_dir();
    (server, certs)
}

#[test]
fn tls_the_behaviour_suite_passes_over_rediss() {
    if !available(false) {
        return;
    }
    let (server, certs) = tls_server(false);
    let port = server.port;
    let ca = certs.ca_pem.clone();
    run(LIMIT, move || async move {
        for host in ["127.0.0.1", "localhost"] {
            let url = format!("rediss://{host}:{port}/");
            behaviour_suite(host, || {
                RedisStore::builder(url.as_str()).tls_ca_pem(ca.clone())
            })
            .await;
        }
    });
}

#[test]
fn tls_a_wrong_ca_or_no_ca_is_a_prompt_typed_error() {
    if !available(false) {
        return;
    }
    let (server, certs) = tls_server(false);
    let port = server.port;
    let other_ca = certs.other_ca_pem.clone();
    run(LIMIT, move || async move {
        let url = format!("rediss://127.0.0.1:{port}/");
        for builder in [
            RedisStore::builder(url.as_str()).tls_ca_pem(other_ca.clone()),
            // The system's roots do not know the test CA either.
            RedisStore::builder(url.as_str()),
        ] {
            let started = Instant::now();
            let e = builder.build().await.unwrap_err();
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "took {:?}",
                started.elapsed()
            );
            let redis = redis_error(&e);
            assert!(
                error_text(&e).to_lowercase().contains("certificate"),
                "the error says what failed: {e}"
            );
            assert!(
                !redis.is_timeout(),
                "a handshake failure, not a timeout: {redis}"
            );
        }
        // A PEM that is not a certificate is a configuration error.
        let e = RedisStore::builder(url.as_str())
            .tls_ca_pem("not a certificate")
            .build()
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Config(_) | Error::Backend(_)), "{e:?}");
    });
}

#[test]
fn tls_verification_is_off_only_when_asked_for_loudly() {
    if !available(false) {
        return;
    }
    let (server, certs) = tls_server(false);
    let port = server.port;
    let other_ca = certs.other_ca_pem.clone();
    run(LIMIT, move || async move {
        // `#insecure` in a URL (which the redis crate alone would honour) is refused.
        let insecure = format!("rediss://127.0.0.1:{port}/#insecure");
        let e = RedisStore::builder(insecure.as_str())
            .build()
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Config(why) if why.contains("danger_accept_invalid_certs")),
            "{e:?}"
        );
        // The loudly named option turns it off (here with a CA that would not verify).
        let store = RedisStore::builder(insecure.as_str())
            .tls_ca_pem(other_ca.clone())
            .danger_accept_invalid_certs(true)
            .build()
            .await
            .unwrap();
        store
            .set("a", &expiring(Duration::from_secs(60)))
            .await
            .unwrap();
        assert!(store.get("a").await.unwrap().is_some());
        // TLS options on a plain URL are a mistake, said as such.
        let e = RedisStore::builder("redis://127.0.0.1:1/")
            .tls_ca_pem(other_ca)
            .build()
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Config(why) if why.contains("rediss://")),
            "{e:?}"
        );
    });
}

#[test]
fn tls_client_certificates_when_the_server_requires_them() {
    if !available(false) {
        return;
    }
    let (server, certs) = tls_server(true);
    let port = server.port;
    let (ca, cert, key) = (
        certs.ca_pem.clone(),
        certs.client_cert_pem.clone(),
        certs.client_key_pem.clone(),
    );
    run(LIMIT, move || async move {
        let url = format!("rediss://127.0.0.1:{port}/");
        let e = RedisStore::builder(url.as_str())
            .tls_ca_pem(ca.clone())
            .build()
            .await
            .unwrap_err();
        redis_error(&e);
        let store = RedisStore::builder(url.as_str())
            .tls_ca_pem(ca)
            .tls_client_cert_pem(cert, key)
            .build()
            .await
            .unwrap();
        store
            .set("a", &expiring(Duration::from_secs(60)))
            .await
            .unwrap();
        assert!(store.get("a").await.unwrap().is_some());
    });
}

// ---- ACL users and passwords ----

const APP_PASSWORD: &str = "app-Pa55word-acl";

/// A server whose default user is off, with one user `app` allowed keys `app:*` only.
fn acl_server() -> Server {
    let password = format!(">{APP_PASSWORD}");
    Server::plain(&[
        "--user",
        "default",
        "off",
        "--user",
        "app",
        "on",
        &password,
        "~app:*",
        "&*",
        "+@all",
        "-@dangerous",
    ])
}

#[test]
fn acl_a_user_restricted_to_the_prefix_passes_the_suite() {
    if !available(false) {
        return;
    }
    let server = acl_server();
    let port = server.port;
    run(LIMIT, move || async move {
        // Credentials in the URL...
        let url = format!("redis://app:{APP_PASSWORD}@127.0.0.1:{port}/");
        behaviour_suite("app:", || RedisStore::builder(url.as_str())).await;
        // ... or from the builder (a URL without them).
        let bare = format!("redis://127.0.0.1:{port}/");
        behaviour_suite("app:", || {
            RedisStore::builder(bare.as_str())
                .username("app")
                .password(APP_PASSWORD)
        })
        .await;
        // A prefix outside the user's keys: refused by Redis, a prompt typed error.
        let outside = RedisStore::builder(url.as_str())
            .prefix("sess:")
            .build()
            .await
            .unwrap();
        let e = outside
            .set("a", &expiring(Duration::from_secs(60)))
            .await
            .unwrap_err();
        assert_eq!(redis_error(&e).code(), Some("NOPERM"), "{e}");
        assert!(!error_text(&e).contains(APP_PASSWORD));
    });
}

#[test]
fn acl_a_wrong_password_is_a_typed_error_that_does_not_show_it() {
    if !available(false) {
        return;
    }
    let server = acl_server();
    let port = server.port;
    run(LIMIT, move || async move {
        let wrong = format!("{APP_PASSWORD}-wrong");
        for builder in [
            RedisStore::builder(format!("redis://app:{wrong}@127.0.0.1:{port}/")),
            RedisStore::builder(format!("redis://127.0.0.1:{port}/"))
                .username("app")
                .password(wrong.clone()),
            // The right password for a user that does not exist.
            RedisStore::builder(format!("redis://nobody:{APP_PASSWORD}@127.0.0.1:{port}/")),
        ] {
            let shown = format!("{builder:?}");
            assert!(!shown.contains(APP_PASSWORD), "{shown}");
            let started = Instant::now();
            let e = builder.build().await.unwrap_err();
            assert!(started.elapsed() < Duration::from_secs(3));
            assert_eq!(
                redis_error(&e).kind(),
                redis::ErrorKind::AuthenticationFailed,
                "{e}"
            );
            let text = error_text(&e);
            assert!(!text.contains(APP_PASSWORD), "the password shows: {text}");
        }
        // No credentials at all: the default user is off.
        let e = RedisStore::builder(format!("redis://127.0.0.1:{port}/"))
            .build()
            .await
            .unwrap_err();
        redis_error(&e);
        // A store that works shows no password either.
        let store = RedisStore::builder(format!("redis://127.0.0.1:{port}/"))
            .username("app")
            .password(APP_PASSWORD)
            .prefix("app:")
            .build()
            .await
            .unwrap();
        assert!(!format!("{store:?}").contains(APP_PASSWORD));
    });
}

// ---- Sentinel ----

/// One master, one replica and one Sentinel on loopback, with tight failover settings.
struct SentinelSetup {
    master: Server,
    replica: Server,
    sentinel: Server,
}

impl SentinelSetup {
    fn start() -> Self {
        let master = Server::plain(&[]);
        let replica = Server::plain(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
        let port = free_port();
        let dir = redis_support::temp_dir("sentinel");
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\n\
                 sentinel monitor mymaster 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 4000\n\
                 sentinel parallel-syncs mymaster 1\n",
                master.port
            ),
        )
        .unwrap();
        let sentinel = Server::spawn(
            port,
            &dir,
            &[conf.display().to_string(), "--sentinel".to_string()],
        )
        .owning_dir();
        let setup = Self {
            master,
            replica,
            sentinel,
        };
        // The replica in sync, and known to the Sentinel.
        setup.wait_for("the replica to sync", |s| {
            let info: String = s.replica.query(redis::cmd("INFO").arg("replication"));
            info.contains("master_link_status:up")
        });
        setup.wait_for("the Sentinel to see the replica", |s| {
            let replicas: Vec<redis::Value> = s
                .sentinel
                .query(redis::cmd("SENTINEL").arg("REPLICAS").arg("mymaster"));
            !replicas.is_empty()
        });
        setup
    }

    fn wait_for(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn master_port(&self) -> u16 {
        let (_, port): (String, u16) = self.sentinel.query(
            redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg("mymaster"),
        );
        port
    }
}

#[test]
fn sentinel_the_suite_passes_and_a_failover_is_followed() {
    if !available(false) {
        return;
    }
    let setup = SentinelSetup::start();
    let sentinel_url = setup.sentinel.url();
    let (old_master, new_master) = (setup.master.port, setup.replica.port);
    assert_eq!(setup.master_port(), old_master);
    let sentinel_port = setup.sentinel.port;
    run(LIMIT, move || async move {
        let target = || Target::sentinel([sentinel_url.as_str()], "mymaster");
        behaviour_suite("", || RedisStore::builder(target())).await;

        let store = RedisStore::builder(target())
            .prefix("fo:")
            .build()
            .await
            .unwrap();
        assert!(
            store
                .url()
                .starts_with("sentinel:mymaster@redis://127.0.0.1:")
        );
        let mut written = Vec::new();
        for i in 0..50 {
            let mut s = expiring(Duration::from_secs(600));
            s.insert("i", i);
            store.set(&format!("s{i}"), &s).await.unwrap();
            written.push(s);
        }
        // Wait until the replica has every write, then fail over.
        let mut replica = redis::Client::open(format!("redis://127.0.0.1:{new_master}/"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let started = Instant::now();
        loop {
            let n: usize = redis::cmd("DBSIZE")
                .query_async(&mut replica)
                .await
                .unwrap();
            if n >= 50 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "replication lags"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut sentinel = redis::Client::open(format!("redis://127.0.0.1:{sentinel_port}/"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        // (A Sentinel that has not yet had the replica's INFO answers NOGOODSLAVE: retry.)
        let started = Instant::now();
        loop {
            let failover: redis::RedisResult<()> = redis::cmd("SENTINEL")
                .arg("FAILOVER")
                .arg("mymaster")
                .query_async(&mut sentinel)
                .await;
            match failover {
                Ok(()) => break,
                Err(e) if started.elapsed() < Duration::from_secs(15) => {
                    eprintln!("SENTINEL FAILOVER: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("SENTINEL FAILOVER: {e}"),
            }
        }
        let started = Instant::now();
        loop {
            let (_, port): (String, u16) = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg("mymaster")
                .query_async(&mut sentinel)
                .await
                .unwrap();
            if port == new_master {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "no failover");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Sentinel names the new master before it has turned the old one into a replica;
        // a client that writes to the old master in between loses the write when it
        // resyncs (Sentinel's asynchronous failover; see the module documentation). Wait
        // for the demotion, as the next requests of a real app would come after it.
        let old = redis::Client::open(format!("redis://127.0.0.1:{old_master}/")).unwrap();
        let started = Instant::now();
        loop {
            // (A fresh connection each time: the demotion closes the old master's clients.)
            let role: Option<Vec<redis::Value>> = match old.get_multiplexed_async_connection().await
            {
                Ok(mut conn) => redis::cmd("ROLE").query_async(&mut conn).await.ok(),
                Err(_) => None,
            };
            if matches!(role.as_deref().and_then(<[_]>::first),
                Some(redis::Value::BulkString(r)) if r == b"slave")
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the old master stays one"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The same store reaches the new master: reads find what was written before, and
        // writes succeed (on a replica they would be refused with READONLY). An error or
        // two while the roles change is allowed; a hang is not.
        let started = Instant::now();
        let mut errors = 0;
        loop {
            let step = async {
                for (i, s) in written.iter().enumerate() {
                    assert_eq!(store.get(&format!("s{i}")).await?.as_ref(), Some(s));
                }
                store
                    .set("after", &expiring(Duration::from_secs(600)))
                    .await
            };
            match step.await {
                Ok(()) => break,
                Err(e) => {
                    errors += 1;
                    assert!(
                        started.elapsed() < Duration::from_secs(20),
                        "the store did not follow the failover: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        eprintln!("followed the failover after {errors} failed attempts");
        let mut master = redis::Client::open(format!("redis://127.0.0.1:{new_master}/"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let after: Option<Vec<u8>> = redis::cmd("GET")
            .arg("fo:after")
            .query_async(&mut master)
            .await
            .unwrap();
        assert!(
            after.is_some(),
            "written to the new master ({new_master}, was {old_master})"
        );
    });
    drop(setup);
}

/// The old master frozen (SIGSTOP: it can neither answer nor be demoted), the Sentinel fails
/// over on its own. The store hears `+switch-master` and drops its connection to the frozen
/// master, so its next command goes to the new master at once, instead of waiting out a
/// response timeout on the old one.
#[test]
fn sentinel_a_switch_master_announcement_moves_the_store_at_once() {
    if !available(false) {
        return;
    }
    let setup = SentinelSetup::start();
    let sentinel_url = setup.sentinel.url();
    let (master_pid, old_master, new_master) =
        (setup.master.pid(), setup.master.port, setup.replica.port);
    run(LIMIT, move || async move {
        let store = RedisStore::builder(Target::sentinel([sentinel_url.as_str()], "mymaster"))
            .response_timeout(Duration::from_secs(2))
            .build()
            .await
            .unwrap();
        store
            .set("before", &expiring(Duration::from_secs(600)))
            .await
            .unwrap();
        let mut replica = redis::Client::open(format!("redis://127.0.0.1:{new_master}/"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let started = Instant::now();
        loop {
            let n: usize = redis::cmd("DBSIZE")
                .query_async(&mut replica)
                .await
                .unwrap();
            if n >= 1 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "replication lags"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(connected) = connected_to(old_master) {
            assert!(connected, "the store holds no connection to the master");
        }
        redis_support::signal_pid(master_pid, "STOP");
        let mut sentinel = redis::Client::open(sentinel_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let started = Instant::now();
        loop {
            let (_, port): (String, u16) = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg("mymaster")
                .query_async(&mut sentinel)
                .await
                .unwrap();
            if port == new_master {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "no failover");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The announcement reaches the store's listener, which drops its connection to the
        // frozen master. Wait for that rather than for a fixed moment: a listener task run
        // late (a loaded machine) is no failure, one that never drops it is (10 s).
        match connected_to(old_master) {
            Some(_) => {
                let started = Instant::now();
                while connected_to(old_master) == Some(true) {
                    assert!(
                        started.elapsed() < Duration::from_secs(10),
                        "the store kept its connection to the frozen master"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            None => tokio::time::sleep(Duration::from_millis(300)).await,
        }
        let started = Instant::now();
        let result = store.get("before").await;
        let took = started.elapsed();
        redis_support::signal_pid(master_pid, "CONT");
        assert!(result.unwrap().is_some(), "read from the new master");
        assert!(
            took < Duration::from_millis(1500),
            "waited on the frozen master: {took:?}"
        );
    });
    drop(setup);
}

/// Whether this process holds an established TCP connection to `port` on 127.0.0.1: its
/// sockets (by inode, from `/proc/self/fd`) in `/proc/net/tcp`. `None` where there is no
/// such table (not Linux).
fn connected_to(port: u16) -> Option<bool> {
    let ours: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .ok()?
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let inode = link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_string())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    // 127.0.0.1, as the table writes it (the address in host byte order on x86), and the port.
    let remote = format!("{:08X}:{port:04X}", u32::from_ne_bytes([127, 0, 0, 1]));
    Some(table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // rem_address, st (01: ESTABLISHED), inode.
        fields.len() > 9 && fields[2] == remote && fields[3] == "01" && ours.contains(fields[9])
    }))
}

/// Sentinel over TLS: a TLS-only master and Sentinel (`--port 0`); the store reaches the
/// Sentinel with `rediss://` and the master with TLS too, checking both certificates.
#[test]
fn sentinel_over_tls_passes_the_suite() {
    if !available(false) {
        return;
    }
    let dir = redis_support::temp_dir("sentinel-tls");
    let certs = Certs::make(&dir);
    let [master_port, sentinel_port] = redis_support::free_ports(2)[..] else {
        unreachable!()
    };
    let master_dir = dir.join("master");
    std::fs::create_dir_all(&master_dir).unwrap();
    let mut args = certs.server_args(master_port, false);
    args.extend(["--tls-replication".into(), "yes".into()]);
    let master = Server::spawn(master_port, &master_dir, &args);
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "sentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
             sentinel down-after-milliseconds mymaster 1000\n"
        ),
    )
    .unwrap();
    let mut args = vec![conf.display().to_string(), "--sentinel".to_string()];
    args.extend(certs.server_args(sentinel_port, false));
    args.extend(["--tls-replication".into(), "yes".into()]);
    let sentinel = Server::spawn(sentinel_port, &dir, &args);
    let (ca, other_ca) = (certs.ca_pem.clone(), certs.other_ca_pem.clone());
    run(LIMIT, move || async move {
        let url = format!("rediss://127.0.0.1:{sentinel_port}/");
        let target = || Target::sentinel([url.as_str()], "mymaster");
        // The Sentinel learns of the master at once (it connects at start).
        let started = Instant::now();
        let store = loop {
            match RedisStore::builder(target())
                .tls_ca_pem(ca.clone())
                .build()
                .await
            {
                Ok(store) => break store,
                Err(e) => {
                    assert!(started.elapsed() < Duration::from_secs(10), "{e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        drop(store);
        behaviour_suite("", || RedisStore::builder(target()).tls_ca_pem(ca.clone())).await;
        let e = RedisStore::builder(target())
            .tls_ca_pem(other_ca)
            .build()
            .await
            .unwrap_err();
        redis_error(&e);
    });
    drop((sentinel, master));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sentinel_dead_sentinels_and_unknown_services_are_prompt_errors() {
    if !available(false) {
        return;
    }
    let setup = SentinelSetup::start();
    let live = setup.sentinel.url();
    run(LIMIT, move || async move {
        let dead = format!("redis://127.0.0.1:{}/", free_port());
        // A dead Sentinel first: the next one answers.
        let store =
            RedisStore::builder(Target::sentinel([dead.as_str(), live.as_str()], "mymaster"))
                .build()
                .await
                .unwrap();
        store
            .set("a", &expiring(Duration::from_secs(60)))
            .await
            .unwrap();
        assert!(store.get("a").await.unwrap().is_some());
        // Only dead Sentinels, or a service nobody monitors: a prompt backend error.
        for target in [
            Target::sentinel([dead.as_str()], "mymaster"),
            Target::sentinel([live.as_str()], "nosuchmaster"),
        ] {
            let started = Instant::now();
            let e = RedisStore::builder(target).build().await.unwrap_err();
            assert!(started.elapsed() < Duration::from_secs(3));
            redis_error(&e);
        }
        // No Sentinel at all is a configuration error.
        let e = RedisStore::builder(Target::sentinel(Vec::<String>::new(), "mymaster"))
            .build()
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e:?}");
    });
    drop(setup);
}

// ---- Cluster ----

/// Three primaries (no replicas), their slots assigned by `redis-cli --cluster create`; over
/// TLS only (`--port 0`, `--tls-cluster yes`) with `certs`.
struct Cluster {
    nodes: Vec<Server>,
    tls: bool,
}

impl Cluster {
    fn start() -> Self {
        Self::start_with(None)
    }

    fn start_with(certs: Option<&Certs>) -> Self {
        let ports = redis_support::free_ports(6);
        let nodes: Vec<Server> = (0..3)
            .map(|i| {
                let (port, bus) = (ports[2 * i], ports[2 * i + 1]);
                let dir = redis_support::temp_dir("cluster");
                let mut args: Vec<String> = match certs {
                    None => vec!["--port".into(), port.to_string()],
                    Some(certs) => {
                        let mut args = certs.server_args(port, false);
                        args.extend(["--tls-cluster".into(), "yes".into()]);
                        args
                    }
                };
                args.extend([
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    "nodes.conf".into(),
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                    "--cluster-port".into(),
                    bus.to_string(),
                ]);
                Server::spawn(port, &dir, &args).owning_dir()
            })
            .collect();
        let cli = |args: &[String]| {
            let mut command = std::process::Command::new("redis-cli");
            if let Some(certs) = certs {
                command.arg("--tls").arg("--cacert").arg(&certs.ca_file);
            }
            command.args(args).output().expect("redis-cli")
        };
        let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
        create.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let output = cli(&create);
        assert!(
            output.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = Self {
            nodes,
            tls: certs.is_some(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &cluster.nodes {
            loop {
                let info = cli(&[
                    "-p".into(),
                    node.port.to_string(),
                    "CLUSTER".into(),
                    "INFO".into(),
                ]);
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not come up");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    fn urls(&self) -> Vec<String> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        self.nodes
            .iter()
            .map(|n| format!("{scheme}://127.0.0.1:{}/", n.port))
            .collect()
    }
}

#[test]
fn cluster_over_tls_passes_the_suite() {
    if !available(true) {
        return;
    }
    let dir = redis_support::temp_dir("cluster-tls");
    let certs = Certs::make(&dir);
    let cluster = Cluster::start_with(Some(&certs));
    let urls = cluster.urls();
    let (ca, other_ca) = (certs.ca_pem.clone(), certs.other_ca_pem.clone());
    run(LIMIT, move || async move {
        behaviour_suite("", || {
            RedisStore::builder(Target::cluster(urls.clone())).tls_ca_pem(ca.clone())
        })
        .await;
        let e = RedisStore::builder(Target::cluster(urls.clone()))
            .tls_ca_pem(other_ca)
            .build()
            .await
            .unwrap_err();
        redis_error(&e);
    });
    drop(cluster);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cluster_the_suite_passes_and_two_apps_share_a_session() {
    if !available(true) {
        return;
    }
    let cluster = Cluster::start();
    let urls = cluster.urls();
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    run(LIMIT, move || async move {
        behaviour_suite("", || RedisStore::builder(Target::cluster(urls.clone()))).await;
        // A cluster connection of your own.
        let own = redis::cluster::ClusterClient::new(urls.clone())
            .unwrap()
            .get_async_connection()
            .await
            .unwrap();
        behaviour_suite("own:", || RedisStore::builder(own.clone())).await;

        // The suite's 700 sessions were spread over every primary (SCAN visited them all).
        let store = RedisStore::builder(Target::cluster(urls.clone()))
            .prefix("spread:")
            .build()
            .await
            .unwrap();
        for i in 0..300 {
            store
                .set(&format!("s{i}"), &expiring(Duration::from_secs(60)))
                .await
                .unwrap();
        }
        for port in &ports {
            let mut node = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let n: usize = redis::cmd("DBSIZE").query_async(&mut node).await.unwrap();
            assert!(n > 30, "node {port} holds {n} of 300 sessions");
        }
        assert_eq!(store.length().await.unwrap(), 300);
        let ids: Vec<String> = (0..300).map(|i| format!("s{i}")).collect();
        assert_eq!(store.destroy(&ids).await.unwrap(), 300, "DEL split by slot");

        // Two app instances, each knowing a different node, share a session.
        let a = TieredStore::new(
            redis_record_store(Target::cluster([urls[0].as_str()]))
                .build()
                .await
                .unwrap(),
            Duration::ZERO,
        )
        .unwrap();
        let b = TieredStore::new(
            redis_record_store(Target::cluster([urls[2].as_str()]))
                .build()
                .await
                .unwrap(),
            Duration::ZERO,
        )
        .unwrap();
        let (app_a, app_b) = (tower_app(a), tower_app(b));
        let (body, cookie) = common::call(&app_a, "/", None).await;
        assert_eq!(body, "1");
        let cookie = cookie.expect("a session cookie");
        assert_eq!(common::call(&app_b, "/", Some(&cookie)).await.0, "2");
        assert_eq!(common::call(&app_a, "/", Some(&cookie)).await.0, "3");
        assert_eq!(common::call(&app_b, "/", Some(&cookie)).await.0, "4");
    });
    drop(cluster);
}

fn tower_app(store: TieredStore) -> axum::Router {
    axum::Router::new()
        .route("/", axum::routing::get(common::count))
        .layer(
            tower_sessions::SessionManagerLayer::new(store)
                .with_secure(false)
                .with_expiry(tower_sessions::Expiry::OnInactivity(
                    time::Duration::seconds(600),
                )),
        )
}

#[test]
fn cluster_a_node_down_gives_prompt_errors_never_a_hang() {
    if !available(true) {
        return;
    }
    let mut cluster = Cluster::start();
    let urls = cluster.urls();
    // Sessions on every node, then one node gone.
    let ids: Vec<String> = (0..60).map(|i| format!("s{i}")).collect();
    {
        let (urls, ids) = (urls.clone(), ids.clone());
        run(LIMIT, move || async move {
            let store = RedisStore::builder(Target::cluster(urls))
                .build()
                .await
                .unwrap();
            for id in &ids {
                store
                    .set(id, &expiring(Duration::from_secs(600)))
                    .await
                    .unwrap();
            }
        });
    }
    cluster.nodes[1].kill();
    let live = vec![urls[0].clone(), urls[2].clone()];
    run(LIMIT, move || async move {
        // (The build again if it times out: see `until_ok`.)
        let store = until_ok(|| {
            RedisStore::builder(Target::cluster(live.clone()))
                .response_timeout(Duration::from_millis(500))
                .connection_timeout(Duration::from_millis(500))
                .build()
        })
        .await;
        let mut failed = 0;
        for id in &ids {
            let started = Instant::now();
            match store.get(id).await {
                Ok(found) => assert!(found.is_some()),
                Err(e) => {
                    redis_error(&e);
                    failed += 1;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "took {:?}",
                started.elapsed()
            );
        }
        assert!(failed > 0, "the sessions on the dead node cannot be read");
        let started = Instant::now();
        assert!(
            store.length().await.is_err(),
            "SCAN cannot cover the dead node"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    });
    drop(cluster);
}
