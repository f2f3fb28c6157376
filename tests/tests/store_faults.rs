//! The store under faults: while another process holds the SQLite file locked, or its disk
//! is full, registration and admin calls get 503 with a tracking id and `Retry-After`,
//! relaying goes on, and nothing is half-written: once the fault is gone the same call
//! succeeds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use relay_core::control::{self, ListenerCommand};
use relay_tests::{KEY, KEY_NAME, RawListener, TestBroker, http_request, temp_dir, token_for};

/// Relays one HTTP request through a raw listener on `open`; returns the sender's status.
async fn relay_one(broker: &TestBroker) -> u16 {
    let mut listener = RawListener::open(broker, "open").await;
    let url = format!("{}/open/x", broker.http());
    let request = tokio::spawn(async move { http_request("GET", &url, &[], vec![]).await });
    let ListenerCommand::Request(req) = listener.command().await else {
        panic!("expected a request")
    };
    let answer = ListenerCommand::Response(control::Response {
        request_id: req.id,
        status_code: 200,
        status_description: None,
        response_headers: control::Headers::default(),
        body: false,
    });
    listener.conn.writer.text(&answer.encode()).await.unwrap();
    listener.conn.writer.flush().await.unwrap();
    request.await.unwrap().0
}

/// The admin API's base address and a token with Manage for it.
fn admin(broker: &TestBroker) -> (String, String) {
    let manage = token_for(&format!("http://{}/", broker.addr), KEY_NAME, KEY, 60);
    (format!("{}/$admin/v1", broker.http()), manage)
}

fn json_auth(token: &str) -> [(&'static str, &str); 2] {
    [
        ("ServiceBusAuthorization", token),
        ("Content-Type", "application/json"),
    ]
}

#[tokio::test]
async fn a_locked_store_is_503_for_admin_calls_and_relaying_goes_on() {
    let dir = temp_dir("store-locked");
    let db = dir.join("relay.db");
    let broker = TestBroker::start(&format!("[store]\npath = '{}'", db.display())).await;
    let (base, manage) = admin(&broker);
    let auth = json_auth(&manage);
    let alice = br#"{"name":"alice","password":"correct horse battery"}"#.to_vec();

    // Another process takes the database: no writer gets in until it lets go.
    let other = rusqlite::Connection::open(&db).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let persons = format!("{base}/persons");
    let add = http_request("POST", &persons, &auth, alice.clone());
    let relayed = relay_one(&broker);
    let ((status, headers, body), relayed) = tokio::join!(add, relayed);
    assert_eq!(relayed, 200, "relaying goes on while the store is locked");
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 503, "{text}");
    assert_eq!(headers["retry-after"], "1");
    assert!(
        text.contains("StoreUnavailable") && text.contains("TrackingId:"),
        "{text}"
    );

    other.execute_batch("ROLLBACK").unwrap();
    drop(other);
    // Nothing of the refused call was written: the same call now succeeds, once.
    let (status, _, body) =
        http_request("POST", &format!("{base}/persons"), &auth, alice.clone()).await;
    assert!(
        status == 200 || status == 201,
        "{status} {}",
        String::from_utf8_lossy(&body)
    );
    let (status, _, _) = http_request("POST", &format!("{base}/persons"), &auth, alice).await;
    assert_eq!(status, 409, "exactly one alice");
}

/// A small tmpfs of its own, unmounted when dropped: a disk that really fills up.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// Mounts one, or says why not: mounting needs root (CI runs as root and sets
    /// `RELAY_TESTS_NEED_MOUNTS=1`, which turns a failed mount into a failed test).
    fn mount(at: std::path::PathBuf, size: &str) -> Option<Self> {
        std::fs::create_dir_all(&at).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var_os("RELAY_TESTS_NEED_MOUNTS").is_none(),
                "could not mount a tmpfs at {}",
                at.display()
            );
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        Some(Self(at))
    }

    /// Fills what is left with one file, until the kernel says ENOSPC.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write as _;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        for _ in 0..100_000 {
            if let Err(e) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
                assert_eq!(e.raw_os_error(), Some(28), "ENOSPC, not {e}");
                return path;
            }
        }
        panic!("the disk never filled up");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_is_503_for_admin_calls_and_relaying_goes_on() {
    let dir = temp_dir("store-full");
    let Some(disk) = SmallDisk::mount(dir.join("disk"), "2m") else {
        return;
    };
    let db = disk.0.join("relay.db");
    let broker = TestBroker::start(&format!("[store]\npath = '{}'", db.display())).await;
    let (base, manage) = admin(&broker);
    let auth = json_auth(&manage);
    // Long names, so that each write grows the journal by pages of its own.
    let url = |i: usize| format!("{base}/hybrid-connections/full/{i}-{}", "x".repeat(200));
    let filler = disk.fill();

    // The journal still has room for a few writes; the first one that needs more fails.
    let mut made = 0;
    let (status, headers, body) = loop {
        let (status, headers, body) = http_request("PUT", &url(made), &auth, b"{}".to_vec()).await;
        if !(200..300).contains(&status) {
            break (status, headers, body);
        }
        made += 1;
        assert!(made < 500, "the full disk never refused a write");
    };
    eprintln!("{made} writes fitted in the journal after the disk filled");
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 503, "{text}");
    assert_eq!(headers["retry-after"], "1");
    assert!(
        text.contains("StoreUnavailable") && text.contains("TrackingId:"),
        "{text}"
    );
    assert_eq!(
        relay_one(&broker).await,
        200,
        "relaying goes on on a full disk"
    );

    std::fs::remove_file(filler).unwrap();
    // Nothing of the refused write is there: it is made now, once, and everything made
    // before the disk filled is still there.
    let (status, _, body) = http_request("PUT", &url(made), &auth, b"{}".to_vec()).await;
    assert!(
        (200..300).contains(&status),
        "{status} {}",
        String::from_utf8_lossy(&body)
    );
    let (status, _, _) = http_request("PUT", &url(made), &auth, b"{}".to_vec()).await;
    assert_eq!(status, 409, "made exactly once");
    for i in 0..=made {
        let url = format!(
            "{}/full/{i}-{}?api-version=2017-04&x=1",
            broker.http(),
            "x".repeat(200)
        );
        let (status, _, _) = http_request("GET", &url, &[], vec![]).await;
        assert_ne!(status, 404, "hybrid connection {i} exists");
    }
    broker.shutdown().await;
}
