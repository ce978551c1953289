//! A PostgreSQL server for the tests that need one: the one `QEB_TEST_POSTGRES_URL` names, or
//! one this test binary starts from the distribution's binaries (`initdb` + `pg_ctl`, Debian's
//! `postgresql` package) in a temporary folder on a free port, as the `postgres` user when run
//! as root (PostgreSQL refuses to run as root). It is started once and stopped when the test
//! binary exits; each test gets a database of its own.
//!
//! Without a server the PostgreSQL tests say, in one line, what to install and pass without
//! running, unless `QEB_REQUIRE_POSTGRES=1` (CI), which makes that a failure. Every test that ran
//! against a real server adds a line to the file `QEB_POSTGRES_RAN` names, so CI can count them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// What to install, said when no server can be had.
const INSTALL: &str = "PostgreSQL tests not run: install the server (apt-get install -y \
     postgresql) or set QEB_TEST_POSTGRES_URL=postgres://user@host:port/db";

/// The URL of a fresh, empty database for the test `name`, or `None` (said) when there is no
/// server and none is required.
pub async fn database(name: &str) -> Option<String> {
    let Some(server) = server() else {
        assert!(
            std::env::var("QEB_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "{INSTALL}"
        );
        eprintln!("{INSTALL}");
        return None;
    };
    let db = format!("qeb_{}", uuid::Uuid::new_v4().simple());
    let (client, connection) = tokio_postgres::connect(server, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {server}: {e}"));
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    if let Ok(path) = std::env::var("QEB_POSTGRES_RAN") {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        // One write per line: appends from tests running at once do not interleave.
        f.write_all(format!("{name}\n").as_bytes()).unwrap();
    }
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    Some(format!("{base}/{db}"))
}

/// The server's URL (to its `postgres` database), started on first use.
fn server() -> Option<&'static String> {
    static SERVER: OnceLock<Option<String>> = OnceLock::new();
    SERVER
        .get_or_init(|| match std::env::var("QEB_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => start(),
        })
        .as_ref()
}

/// Where the distribution keeps `name` (`/usr/lib/postgresql/<version>/bin`), or on `PATH`.
fn binary(name: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|v| v.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop().or_else(|| {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|d| Path::new(d).join(name))
            .find(|p| p.is_file())
    })
}

/// Runs `program` as the `postgres` user when we are root, else as ourselves.
fn command(program: &Path) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Starts a server in a temporary folder; `None` when the binaries are missing.
fn start() -> Option<String> {
    let (initdb, pg_ctl) = (binary("initdb")?, binary("pg_ctl")?);
    let dir = std::env::temp_dir().join(format!("qeb-pg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot give {} to the postgres user", dir.display());
    }
    let data = dir.join("data");
    let init = command(&initdb)
        .args(["-A", "trust", "-U", "qeb", "-E", "UTF8", "--no-sync", "-D"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
        dir.display()
    );
    let started = command(&pg_ctl)
        .args(["-w", "-t", "60", "-o", &options, "-l"])
        .arg(dir.join("log"))
        .arg("-D")
        .arg(&data)
        .arg("start")
        .output()
        .unwrap();
    assert!(
        started.status.success(),
        "pg_ctl start failed: {}{}",
        String::from_utf8_lossy(&started.stderr),
        std::fs::read_to_string(dir.join("log")).unwrap_or_default()
    );
    STOP.set((pg_ctl, data)).ok();
    // SAFETY: `stop` is an `extern "C" fn()` that only reads a set OnceLock.
    unsafe { libc::atexit(stop) };
    Some(format!("postgres://qeb@127.0.0.1:{port}/postgres"))
}

/// How to stop the server this binary started.
static STOP: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();

extern "C" fn stop() {
    if let Some((pg_ctl, data)) = STOP.get() {
        let _ = command(pg_ctl)
            .args(["-m", "immediate", "-D"])
            .arg(data)
            .arg("stop")
            .output();
    }
}
