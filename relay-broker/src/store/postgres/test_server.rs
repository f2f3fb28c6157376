//! A throwaway PostgreSQL server for tests: one per test process, in a temp folder, on a
//! free loopback port, with `fsync=off`; each test takes a fresh database of its own.
//!
//! The server runs under a small shell that holds a pipe from this process: when the
//! process ends (passing, failing or killed), the pipe closes and the shell stops the server
//! and removes its folder, so no server outlives the tests. As root (CI), the server runs
//! as the `postgres` user, which initdb requires.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::client::Db;

/// The shared server of this test process.
#[derive(Debug)]
pub struct TestPostgres {
    /// Its loopback port.
    pub port: u16,
    /// The folder of its Unix socket (`.s.PGSQL.<port>`), which a process in another
    /// network namespace still reaches.
    pub socket_dir: std::path::PathBuf,
    /// Keeps the watchdog's pipe open for the life of the process.
    _watchdog: Mutex<Child>,
}

static SERVER: OnceLock<TestPostgres> = OnceLock::new();

impl TestPostgres {
    /// The server, started on first use.
    ///
    /// # Panics
    /// When PostgreSQL is not installed (`apt-get install postgresql`; `.ci/run` does) or
    /// does not start within 30 s.
    pub fn shared() -> &'static Self {
        SERVER.get_or_init(start)
    }

    /// A new, empty database on the shared server; returns how to connect to it.
    ///
    /// # Panics
    /// When the server refuses to create it.
    pub fn fresh_database(&self, name: &str) -> tokio_postgres::Config {
        let name = format!(
            "{}_{}",
            name.to_ascii_lowercase()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            rand::random::<u32>()
        );
        let admin = Db::new(self.config("postgres")).expect("driver");
        admin
            .run(async |c| Ok(c.batch_execute(&format!("CREATE DATABASE {name}")).await?))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        self.config(&name)
    }

    /// Runs SQL as the superuser on `database` (the server's own `postgres` for
    /// `ALTER DATABASE` and the like).
    ///
    /// # Panics
    /// When the SQL fails.
    pub fn execute(&self, database: &str, sql: &str) {
        Db::new(self.config(database))
            .expect("driver")
            .run(async |c| Ok(c.batch_execute(sql).await?))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// How to connect to `database` as the superuser.
    pub fn config(&self, database: &str) -> tokio_postgres::Config {
        superuser(self.port, database)
    }
}

fn superuser(port: u16, database: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname(database);
    config
}

fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!("PostgreSQL is needed for this test: apt-get install postgresql (.ci/run does)")
    })
}

fn start() -> TestPostgres {
    let bin = bin_dir();
    let dir = std::env::temp_dir().join(format!("relay-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    // initdb and postgres refuse to run as root.
    let as_user: Vec<&str> = if root {
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status();
        vec![
            "setpriv",
            "--reuid",
            "postgres",
            "--regid",
            "postgres",
            "--clear-groups",
        ]
    } else {
        vec![]
    };
    let data = dir.join("data");
    let mut initdb = command(&as_user, &bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = initdb.output().expect("initdb runs");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut server = as_user.join(" ");
    server.push_str(&format!(
        " {} -D {} -p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
        bin.join("postgres").display(),
        data.display(),
        dir.display(),
    ));
    // The watchdog: the server in the background, then a read that returns when this
    // process's end of the pipe closes; then an immediate shutdown and the folder removed.
    let script = format!(
        "{server} >{log} 2>&1 & pid=$!; read _; kill -QUIT $pid; wait $pid; rm -rf {dir}",
        log = dir.join("server.log").display(),
        dir = dir.display(),
    );
    let mut watchdog = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh runs");
    wait_ready(port, &dir, &mut watchdog);
    TestPostgres {
        port,
        socket_dir: dir.clone(),
        _watchdog: Mutex::new(watchdog),
    }
}

fn command(prefix: &[&str], program: &Path) -> Command {
    match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn wait_ready(port: u16, dir: &Path, watchdog: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let probe = Db::new(superuser(port, "postgres")).expect("driver");
    loop {
        if probe
            .run(async |c| Ok(c.simple_query("SELECT 1").await?))
            .is_ok()
        {
            return;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            if let Some(stdin) = watchdog.stdin.as_mut() {
                let _ = stdin.write_all(b"\n");
            }
            panic!("PostgreSQL did not start on port {port} within 30 s: {log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
