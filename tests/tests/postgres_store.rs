//! Two brokers sharing one PostgreSQL database (`[store] url`), on a throwaway server: what
//! one node writes, the other serves. A hybrid connection created on A takes listeners on
//! B within a second; a person added on A is listed by B.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use relay_broker::store::TestPostgres;
use relay_tests::{KEY, KEY_NAME, TestBroker, http_request, token_for, ws_connect};

fn store_section() -> String {
    let server = TestPostgres::shared();
    let config = server.fresh_database("two_brokers");
    format!(
        "[store]\nurl = 'postgres://postgres@127.0.0.1:{}/{}'\n",
        server.port,
        config.get_dbname().unwrap()
    )
}

fn manage(broker: &TestBroker) -> String {
    token_for(&format!("http://{}/", broker.addr), KEY_NAME, KEY, 60)
}

#[tokio::test]
async fn two_brokers_on_one_database_serve_each_others_writes() {
    let store = store_section();
    let a = TestBroker::start(&store).await;
    let b = TestBroker::start(&store).await;

    // A hybrid connection created on A.
    let token = manage(&a);
    let auth = [
        ("ServiceBusAuthorization", token.as_str()),
        ("Content-Type", "application/json"),
    ];
    let url = format!("{}/$admin/v1/hybrid-connections/made-on-a", a.http());
    let (status, _, body) = http_request("PUT", &url, &auth, b"{}".to_vec()).await;
    assert!(
        (200..300).contains(&status),
        "{status} {}",
        String::from_utf8_lossy(&body)
    );

    // B takes a listener for it within a second.
    let listen = format!("{}/$hc/made-on-a?sb-hc-action=listen", b.ws());
    let started = Instant::now();
    let conn = loop {
        match ws_connect(&listen, Some(&b.token("made-on-a")), &[], &[]).await {
            Ok(conn) => break conn,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "B did not serve A's hybrid connection within 1 s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    eprintln!(
        "B served A's new hybrid connection after {:?}",
        started.elapsed()
    );
    b.wait_listeners("made-on-a", 1).await;
    drop(conn);

    // A person added on A is listed by B.
    let alice = br#"{"name":"alice","password":"correct horse battery"}"#.to_vec();
    let (status, _, _) = http_request(
        "POST",
        &format!("{}/$admin/v1/persons", a.http()),
        &auth,
        alice,
    )
    .await;
    assert!((200..300).contains(&status), "{status}");
    let token_b = manage(&b);
    let auth_b = [("ServiceBusAuthorization", token_b.as_str())];
    let (status, _, body) = http_request(
        "GET",
        &format!("{}/$admin/v1/persons", b.http()),
        &auth_b,
        vec![],
    )
    .await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("\"alice\""));

    a.shutdown().await;
    b.shutdown().await;
}
