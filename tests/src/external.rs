//! Real third-party processes the suites drive: a Node web application (with the `ws`
//! package), tinyproxy (HTTP CONNECT with Basic authentication) and Dante (SOCKS5). Each
//! binds 127.0.0.1 and is killed when its guard drops. `.ci/run` installs them.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child process killed when the test ends, pass or fail.
#[derive(Debug)]
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port nothing listens on right now, for programs that must be told their port.
pub fn free_port() -> SocketAddr {
    free_port_on(std::net::Ipv4Addr::LOCALHOST.into())
}

/// [`free_port`] on `ip` (an address of this host, or of a namespace the test made).
pub fn free_port_on(ip: std::net::IpAddr) -> SocketAddr {
    std::net::TcpListener::bind((ip, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
}

/// Waits (bounded) until something accepts on `addr`.
pub fn wait_accepting(addr: SocketAddr, what: &str, log: &Path) {
    for _ in 0..500 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = std::fs::read_to_string(log).unwrap_or_default();
    panic!("{what} did not start on {addr}: {log}");
}

pub(crate) fn installed(binary: &str, package: &str) -> String {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        let path = Path::new(dir).join(binary);
        if path.exists() {
            return path.display().to_string();
        }
    }
    panic!("{binary} is needed for this suite: apt-get install {package} (.ci/run does)");
}

/// The `relay-broker` binary serving `config`; returns it and the address it printed.
pub fn relay_broker(config: &Path) -> (Process, String) {
    let mut command = Command::new(crate::bin("relay-broker"));
    command
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null());
    spawn_broker(command)
}

/// Starts a broker from a prepared command (under `prlimit`, with a fake clock, ...) and
/// waits for the address it prints on stdout.
pub fn spawn_broker(mut command: Command) -> (Process, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?} runs (see build_binaries): {e}"));
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("broker prints its address")
            .expect("broker stdout");
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.to_owned();
        }
    };
    (Process(child), addr)
}

/// The Node web application in `interop/apps/webapp.js`; returns it and its address.
pub fn web_app() -> (Process, SocketAddr) {
    let script = crate::workspace().join("interop/apps/webapp.js");
    let mut child = Command::new("node")
        .arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs (install Node.js; .ci/run does)");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("web app prints its port");
    let port: u16 = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected web app output: {line}"));
    (Process(child), SocketAddr::from(([127, 0, 0, 1], port)))
}

/// tinyproxy on 127.0.0.1 requiring `user`/`password`; its log is `dir/tinyproxy.log`.
pub fn tinyproxy(dir: &Path, user: &str, password: &str) -> (Process, SocketAddr) {
    let addr = free_port();
    let log = dir.join("tinyproxy.log");
    let conf = format!(
        "Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 64\nAllow 127.0.0.1\n\
         BasicAuth {user} {password}\nLogLevel Connect\nLogFile \"{log}\"\nPidFile \"{pid}\"\n",
        port = addr.port(),
        log = log.display(),
        pid = dir.join("tinyproxy.pid").display(),
    );
    let path = dir.join("tinyproxy.conf");
    std::fs::write(&path, conf).expect("write tinyproxy.conf");
    let child = Command::new(installed("tinyproxy", "tinyproxy"))
        .args(["-d", "-c"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tinyproxy runs");
    let process = Process(child);
    wait_accepting(addr, "tinyproxy", &log);
    (process, addr)
}

/// Dante's SOCKS5 server on 127.0.0.1 without authentication; log in `dir/danted.log`.
pub fn danted(dir: &Path) -> (Process, SocketAddr) {
    let addr = free_port();
    let log = dir.join("danted.log");
    let conf = format!(
        "logoutput: {log}\ninternal: 127.0.0.1 port = {port}\nexternal: 127.0.0.1\n\
         clientmethod: none\nsocksmethod: none\nuser.privileged: root\nuser.unprivileged: nobody\n\
         client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}\n\
         socks pass {{ from: 127.0.0.0/8 to: 127.0.0.0/8 log: connect disconnect }}\n",
        log = log.display(),
        port = addr.port(),
    );
    let path = dir.join("danted.conf");
    std::fs::write(&path, conf).expect("write danted.conf");
    let child = Command::new(installed("danted", "dante-server"))
        .arg("-f")
        .arg(&path)
        .arg("-p")
        .arg(dir.join("danted.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("danted runs");
    let process = Process(child);
    wait_accepting(addr, "danted", &log);
    (process, addr)
}

/// Like [`echo_server`], on threads, for synchronous tests that drive the binaries.
pub fn echo_thread(greeting: &'static str) -> SocketAddr {
    use std::io::Write as _;
    let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = server.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut conn in server.incoming().flatten() {
            std::thread::spawn(move || {
                if conn.write_all(greeting.as_bytes()).is_ok() {
                    if let Ok(mut writer) = conn.try_clone() {
                        let _ = std::io::copy(&mut conn, &mut writer);
                    }
                }
            });
        }
    });
    addr
}

/// A TCP echo server that first writes `greeting`, so a test can tell targets apart.
pub async fn echo_server(greeting: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt as _;
                if tcp.write_all(greeting.as_bytes()).await.is_ok() {
                    let (mut r, mut w) = tcp.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    addr
}
