//! The store under faults: while another process holds the SQLite file locked, registration
//! and admin calls get 503 with a tracking id and `Retry-After`, relaying goes on, and
//! nothing is half-written: once the lock is gone the same call succeeds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use relay_core::control::{self, ListenerCommand};
use relay_tests::{KEY, KEY_NAME, RawListener, TestBroker, http_request, temp_dir, token_for};

#[tokio::test]
async fn a_locked_store_is_503_for_admin_calls_and_relaying_goes_on() {
    let dir = temp_dir("store-locked");
    let db = dir.join("relay.db");
    let broker = TestBroker::start(&format!("[store]\npath = '{}'", db.display())).await;
    let base = format!("{}/$admin/v1", broker.http());
    let manage = token_for(&format!("http://{}/", broker.addr), KEY_NAME, KEY, 60);
    let auth = [
        ("ServiceBusAuthorization", manage.as_str()),
        ("Content-Type", "application/json"),
    ];
    let alice = br#"{"name":"alice","password":"correct horse battery"}"#.to_vec();

    // Another process takes the database: no writer gets in until it lets go.
    let other = rusqlite::Connection::open(&db).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let persons = format!("{base}/persons");
    let add = http_request("POST", &persons, &auth, alice.clone());
    let relayed = async {
        let mut listener = RawListener::open(&broker, "open").await;
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
    };
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
