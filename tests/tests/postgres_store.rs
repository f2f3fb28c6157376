//! Two brokers sharing one PostgreSQL database (`[store] url`), on a throwaway server: what
//! one node writes, the other serves. A hybrid connection created on A takes listeners on
//! B within a second; a person added on A is listed by B. A node whose database stops
//! answering fails `/readyz` within a second, and is ready again once it answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use relay_broker::store::TestPostgres;
use relay_tests::{KEY, KEY_NAME, TestBroker, http_request, token_for, ws_connect};

/// A `[store]` section for a fresh database, and its name.
fn store_section() -> (String, String) {
    let server = TestPostgres::shared();
    let config = server.fresh_database("two_brokers");
    let name = config.get_dbname().unwrap().to_owned();
    let section = format!(
        "[store]\nurl = 'postgres://postgres@127.0.0.1:{}/{name}'\n",
        server.port
    );
    (section, name)
}

fn manage(broker: &TestBroker) -> String {
    token_for(&format!("http://{}/", broker.addr), KEY_NAME, KEY, 60)
}

#[tokio::test]
async fn two_brokers_on_one_database_serve_each_others_writes() {
    let (store, _) = store_section();
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

async fn ready(broker: &TestBroker) -> (u16, String) {
    let (status, _, body) =
        http_request("GET", &format!("{}/readyz", broker.http()), &[], vec![]).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Polls `/readyz` until its status is `want`, for at most `within`; returns how long.
async fn until_ready_is(broker: &TestBroker, want: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = ready(broker).await;
        if status == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "/readyz still {status} ({body}) after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_node_whose_database_stops_answering_is_not_ready() {
    let (store, db) = store_section();
    let broker = TestBroker::start(&store).await;
    assert_eq!(ready(&broker).await.0, 200);

    // No one may connect to the database, and the broker's connection is cut.
    let server = TestPostgres::shared();
    server.execute(
        "postgres",
        &format!(
            "ALTER DATABASE {db} ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
        ),
    );
    let took = until_ready_is(&broker, 503, Duration::from_secs(2)).await;
    eprintln!("not ready {took:?} after the database went away");
    let (_, body) = ready(&broker).await;
    assert!(
        body.contains("StoreUnavailable") && body.contains("TrackingId:"),
        "{body}"
    );
    // Relaying needs no database: a SAS listener still connects.
    let listen = format!("{}/$hc/hyco?sb-hc-action=listen", broker.ws());
    assert!(
        ws_connect(&listen, Some(&broker.token("hyco")), &[], &[])
            .await
            .is_ok()
    );

    server.execute(
        "postgres",
        &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"),
    );
    let took = until_ready_is(&broker, 200, Duration::from_secs(8)).await;
    eprintln!("ready again {took:?} after the database came back");
    broker.shutdown().await;
}
