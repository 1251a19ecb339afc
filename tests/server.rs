//! The example server (`examples/server.rs`) as people deploy it, driven over real sockets
//! in a child process: SIGTERM saves the sessions and a restart continues them, idle and
//! half-sent connections are closed and cannot hold a shutdown, settings are checked with
//! the variable named, the absolute lifetime ends a session however active, the `Secure`
//! cookie setting, and a Redis password that is never printed.
//!
//! The example is compiled into this test binary (`#[path]` below), and the binary runs it
//! in a child process of itself (`server_child`, selected by an environment variable), so
//! that `cargo test` needs no separately built example and the child can be sent signals.

#[allow(dead_code)]
#[path = "../examples/server.rs"]
mod server;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Set in the child: run the server instead of the test.
const CHILD: &str = "EVANESCE_SERVER_CHILD";

/// How long anything may take before the test fails instead of hanging.
const WATCHDOG: Duration = Duration::from_secs(30);

/// The child half: the server itself, with the environment the parent gave it.
#[test]
fn server_child() {
    if std::env::var_os(CHILD).is_some() {
        std::process::exit(i32::from(server::run_from_env()));
    }
}

/// A private directory for a test's files (0700: the server's files are nobody else's),
/// removed on drop.
struct Private(tempfile::TempDir);

impl Private {
    fn new() -> Self {
        Self(
            tempfile::Builder::new()
                .prefix("evanesce-server-")
                .tempdir()
                .unwrap(),
        )
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

/// A running example server; killed on drop if still running.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// Every line of its standard output so far (collected by a thread).
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

/// The settings every test server gets unless told otherwise: any free port, no inherited
/// settings of the developer's shell.
const SETTINGS: &[&str] = &[
    "HOST",
    "PORT",
    "SESSION_IDLE_SECS",
    "SESSION_MAX_SECS",
    "MAX_SESSIONS",
    "COOKIE_SECURE",
    "SESSIONS_FILE",
    "SESSIONS_KEY",
    "HEADER_TIMEOUT_SECS",
    "SHUTDOWN_DRAIN_SECS",
    "REDIS_URL",
    "REDIS_PREFIX",
    "NEAR_CACHE_MS",
];

fn command(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "server_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, "1");
    for name in SETTINGS {
        command.env_remove(name);
    }
    command.env("PORT", "0");
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

impl Server {
    /// Starts a server and waits (at most the watchdog) until it listens.
    fn start(env: &[(&str, &str)]) -> Self {
        let mut child = command(env)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            lines,
            seen: Vec::new(),
        };
        let line = server.wait_for("listening on http://");
        let addr = line
            .split("listening on http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap();
        server.addr = addr.parse().unwrap();
        server
    }

    /// The first output line (from now on, or already seen) containing `text`.
    fn wait_for(&mut self, text: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(text)) {
            return line.clone();
        }
        loop {
            match self.lines.recv_timeout(WATCHDOG) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "the server did not print {text:?} within {WATCHDOG:?}; it printed {:#?}",
                    self.seen
                ),
            }
        }
    }

    fn signal(&self, signal: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), signal)
            .unwrap();
    }

    /// Waits (at most the watchdog) for the server to exit; its exit code and everything it
    /// printed.
    fn wait(mut self) -> (Option<i32>, Vec<String>) {
        let (tx, rx) = mpsc::channel();
        let mut child = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap());
        std::thread::spawn(move || {
            let _ = tx.send(child.wait().map(|s| s.code()));
        });
        let code = match rx.recv_timeout(WATCHDOG) {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "the server did not exit within {WATCHDOG:?}; it printed {:#?}",
                self.seen
            ),
        };
        // The rest of its output (the pipe is closed now).
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (code, std::mem::take(&mut self.seen))
    }

    /// One request on a fresh connection; the status, the `id` cookie set (if any), the whole
    /// `Set-Cookie` header, and the body.
    fn get(&self, path: &str, cookie: Option<&str>) -> Response {
        get(self.addr, path, cookie)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Response {
    status: u16,
    set_cookie: Option<String>,
    id: Option<String>,
    body: String,
}

impl Response {
    /// The view count the index page shows.
    fn views(&self) -> u64 {
        self.body
            .split("<b>")
            .nth(1)
            .and_then(|rest| rest.split("</b>").next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no view count in {:?}", self.body))
    }
}

fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WATCHDOG)).unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(cookie) = cookie {
        request.push_str(&format!("Cookie: id={cookie}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .unwrap_or_else(|e| panic!("GET {path}: {e} after {raw:?}"));
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let set_cookie = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("set-cookie")
            .then(|| value.trim().to_string())
    });
    let id = set_cookie
        .as_deref()
        .and_then(|c| c.split(';').next())
        .and_then(|c| c.trim().strip_prefix("id="))
        .filter(|id| !id.is_empty())
        .map(str::to_string);
    Response {
        status,
        set_cookie,
        id,
        body: body.to_string(),
    }
}

/// Whether the server closed `stream` (read gives end of file or a reset) within the
/// watchdog; false if it is still open then.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(WATCHDOG)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // A 408 or 400 before closing is fine.
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn sigterm_saves_the_sessions_and_a_restart_continues_the_count() {
    let dir = Private::new();
    let file = dir.file("sessions.snap");
    let key = "8f".repeat(32);
    let env = [
        ("SESSIONS_FILE", path_str(&file)),
        ("SESSIONS_KEY", key.as_str()),
    ];
    let server = Server::start(&env);
    let first = server.get("/", None);
    assert_eq!((first.status, first.views()), (200, 1));
    let id = first.id.expect("a session cookie");
    assert_eq!(server.get("/", Some(&id)).views(), 2);
    assert_eq!(server.get("/", Some(&id)).views(), 3);

    // docker stop / systemctl stop: SIGTERM.
    server.signal(rustix::process::Signal::TERM);
    let (code, printed) = server.wait();
    assert_eq!(code, Some(0), "{printed:#?}");
    assert!(
        printed
            .iter()
            .any(|l| l.starts_with("sessions saved to") && l.ends_with(": 1 sessions")),
        "{printed:#?}"
    );
    let mode = std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(&file).unwrap());
    assert_eq!(mode & 0o777, 0o600);

    let again = Server::start(&env);
    assert_eq!(again.get("/", Some(&id)).views(), 4, "the count went on");
    // And ctrl-c (SIGINT) saves too.
    again.signal(rustix::process::Signal::INT);
    let (code, printed) = again.wait();
    assert_eq!(code, Some(0), "{printed:#?}");
    let third = Server::start(&env);
    assert_eq!(third.get("/", Some(&id)).views(), 5);
}

#[test]
fn a_failed_save_at_shutdown_is_reported_not_claimed() {
    let dir = Private::new();
    let sub = dir.file("state");
    std::fs::create_dir(&sub).unwrap();
    let file = sub.join("sessions.snap");
    let server = Server::start(&[("SESSIONS_FILE", path_str(&file))]);
    assert_eq!(server.get("/", None).views(), 1);
    // The directory goes away under the server: the save at shutdown cannot be done.
    std::fs::remove_dir_all(&sub).unwrap();
    server.signal(rustix::process::Signal::TERM);
    let (code, printed) = server.wait();
    assert_eq!(code, Some(1), "{printed:#?}");
    assert!(
        !printed.iter().any(|l| l.contains("sessions saved")),
        "{printed:#?}"
    );

    // And a sessions file whose directory is missing stops the server at start.
    let mut child = command(&[("SESSIONS_FILE", path_str(&file))])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert!(stderr.contains("cannot be written"), "{stderr}");
}

#[test]
fn idle_and_half_sent_connections_are_closed_and_cannot_hold_a_shutdown() {
    let server = Server::start(&[("HEADER_TIMEOUT_SECS", "1"), ("SHUTDOWN_DRAIN_SECS", "1")]);
    // Idle connections (nothing sent) and a half-sent request: the server closes them.
    let mut idle: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    let mut half = TcpStream::connect(server.addr).unwrap();
    half.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    // Meanwhile it answers.
    assert_eq!(server.get("/", None).status, 200);
    for (i, stream) in idle.iter_mut().enumerate() {
        assert!(
            closed_by_server(stream),
            "idle connection {i} still open after {WATCHDOG:?}"
        );
    }
    assert!(
        closed_by_server(&mut half),
        "the half-sent request still open"
    );
    // A kept-alive connection that goes idle after a request is closed too.
    let mut kept = TcpStream::connect(server.addr).unwrap();
    kept.write_all(format!("GET /stats HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes())
        .unwrap();
    assert!(
        closed_by_server(&mut kept),
        "an idle kept-alive connection still open"
    );
    drop(server);

    // A shutdown is not held by a half-sent request, even with a header timeout longer than
    // the watchdog: the drain bound (1 s) cuts it.
    let server = Server::start(&[
        ("HEADER_TIMEOUT_SECS", "3600"),
        ("SHUTDOWN_DRAIN_SECS", "1"),
    ]);
    let mut half = TcpStream::connect(server.addr).unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nCookie: a")
        .unwrap();
    let mut idle = TcpStream::connect(server.addr).unwrap();
    // Let the server accept both before the signal.
    assert_eq!(server.get("/stats", None).status, 200);
    server.signal(rustix::process::Signal::TERM);
    let (code, printed) = server.wait();
    assert_eq!(code, Some(0), "{printed:#?}");
    assert!(closed_by_server(&mut half));
    assert!(closed_by_server(&mut idle));
}

#[test]
fn bad_settings_are_refused_with_the_variable_named() {
    let refused = |env: &[(&str, &str)]| -> String {
        let mut child = command(env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let code = child.wait().unwrap().code();
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        stderr
    };
    let cases: &[(&str, &str, &str)] = &[
        ("PORT", "99999", "from 0 to 65535"),
        ("PORT", "-1", "from 0 to 65535"),
        (
            "SESSION_IDLE_SECS",
            "18446744073709551615",
            "from 1 to 34560000",
        ),
        ("SESSION_IDLE_SECS", "0", "from 1 to 34560000"),
        ("SESSION_MAX_SECS", "1e9", "from 1 to 34560000"),
        ("MAX_SESSIONS", "0", "from 1 to 1000000000"),
        ("HEADER_TIMEOUT_SECS", "0", "from 1 to 3600"),
        ("SHUTDOWN_DRAIN_SECS", "lots", "from 0 to 3600"),
        ("NEAR_CACHE_MS", "-5", "from 0 to 86400000"),
        ("COOKIE_SECURE", "maybe", "true or false"),
        ("HOST", "localhost:80", "an IP address"),
    ];
    for (name, value, accepted) in cases {
        let mut env = vec![(*name, *value)];
        if *name == "NEAR_CACHE_MS" {
            env.push(("REDIS_URL", "redis://127.0.0.1:1/"));
        }
        let stderr = refused(&env);
        assert!(
            stderr.contains(&format!("{name}={value:?}")) && stderr.contains(accepted),
            "{name}={value}: {stderr}"
        );
    }
    // A key is a secret: named, never repeated.
    let stderr = refused(&[
        ("SESSIONS_FILE", "/nonexistent/s"),
        ("SESSIONS_KEY", "not-hex-secret-value"),
    ]);
    assert!(stderr.contains("SESSIONS_KEY"), "{stderr}");
    assert!(!stderr.contains("not-hex-secret-value"), "{stderr}");
    let stderr = refused(&[("SESSIONS_KEY", &"ab".repeat(32))]);
    assert!(stderr.contains("SESSIONS_FILE"), "{stderr}");
}

#[test]
fn a_session_ends_at_its_absolute_lifetime_however_active() {
    let server = Server::start(&[("SESSION_MAX_SECS", "3"), ("SESSION_IDLE_SECS", "3600")]);
    let first = server.get("/", None);
    let id = first.id.clone().unwrap();
    // The cookie carries the earlier end (about 3 s, not the idle hour).
    let cookie = first.set_cookie.unwrap();
    let max_age: i64 = cookie
        .split(';')
        .find_map(|a| a.trim().strip_prefix("Max-Age="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{cookie}"));
    assert!((0..=3).contains(&max_age), "{cookie}");
    // Active within the lifetime: the session goes on (3 s of margin on a loaded machine).
    assert_eq!(server.get("/", Some(&id)).views(), 2);
    std::thread::sleep(Duration::from_millis(3500));
    let after = server.get("/", Some(&id));
    assert_eq!(after.views(), 1, "the session ended");
    assert_ne!(after.id.as_deref(), Some(id.as_str()), "with a new id");
}

#[test]
fn cookies_are_secure_unless_on_loopback_or_told_otherwise() {
    let secure = |env: &[(&str, &str)]| {
        let server = Server::start(env);
        let cookie = server.get("/", None).set_cookie.unwrap();
        cookie
            .split(';')
            .any(|a| a.trim().eq_ignore_ascii_case("secure"))
    };
    assert!(
        !secure(&[]),
        "on 127.0.0.1 the README's first command works over http"
    );
    assert!(secure(&[("COOKIE_SECURE", "true")]));
    // Bound beyond loopback (here all addresses): Secure by default.
    assert!(secure(&[("HOST", "0.0.0.0")]));
    assert!(!secure(&[("HOST", "0.0.0.0"), ("COOKIE_SECURE", "0")]));
}

#[test]
fn the_redis_password_is_never_printed() {
    let password = "hunter2-in-the-url";
    let closed_port = {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.local_addr().unwrap().port()
    };
    for url in [
        format!("redis://app:{password}@127.0.0.1:{closed_port}/"),
        format!("redis://:{password}@[::not-an-address/"),
    ] {
        let output = command(&[("REDIS_URL", &url)]).output().unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(output.status.code(), Some(1), "{printed}");
        assert!(printed.contains("Redis"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }
    // Against a real server that wants the password, the start-up line shows the URL
    // redacted.
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED (in part): no redis-server on PATH");
        return;
    }
    let dir = Private::new();
    let port = {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--requirepass", password])
        .arg("--dir")
        .arg(dir.0.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("redis://:{password}@127.0.0.1:{port}/");
    let mut started = None;
    for _ in 0..100 {
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            started = Some(Server::start(&[("REDIS_URL", &url)]));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut server = started.expect("redis-server listens");
    let line = server.wait_for("store: Redis at");
    assert!(
        line.contains(&format!("redis://:***@127.0.0.1:{port}/")),
        "{line}"
    );
    assert_eq!(server.get("/", None).views(), 1);
    server.signal(rustix::process::Signal::TERM);
    let (code, printed) = server.wait();
    assert_eq!(code, Some(0), "{printed:#?}");
    assert!(
        !printed.iter().any(|l| l.contains("hunter2")),
        "{printed:#?}"
    );
    let _ = redis.kill();
    let _ = redis.wait();
}
