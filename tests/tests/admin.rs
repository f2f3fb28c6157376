//! The administration API on a running broker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use relay_tests::{KEY, KEY_NAME, TestBroker, http_request, token_for};

#[tokio::test]
async fn persons_grants_and_audit_need_a_namespace_manage_token() {
    let broker = TestBroker::start("").await;
    let base = format!("{}/$admin/v1", broker.http());
    let manage = token_for(&format!("http://{}/", broker.addr), KEY_NAME, KEY, 60);
    let auth = [
        ("ServiceBusAuthorization", manage.as_str()),
        ("Content-Type", "application/json"),
    ];
    let alice = br#"{"name":"alice","password":"correct horse battery"}"#.to_vec();

    assert_eq!(
        http_request(
            "POST",
            &format!("{base}/persons"),
            &[("Content-Type", "application/json")],
            alice.clone()
        )
        .await
        .0,
        401
    );
    let hc_scoped = token_for(&format!("http://{}/hyco", broker.addr), KEY_NAME, KEY, 60);
    let scoped = [
        ("ServiceBusAuthorization", hc_scoped.as_str()),
        ("Content-Type", "application/json"),
    ];
    assert_eq!(
        http_request("POST", &format!("{base}/persons"), &scoped, alice.clone())
            .await
            .0,
        401,
        "audience must be the namespace"
    );
    let listen_only = token_for(&format!("http://{}/", broker.addr), "listen-only", "lk", 60);
    let weak = [
        ("ServiceBusAuthorization", listen_only.as_str()),
        ("Content-Type", "application/json"),
    ];
    assert_eq!(
        http_request("POST", &format!("{base}/persons"), &weak, alice.clone())
            .await
            .0,
        403
    );

    assert_eq!(
        http_request("POST", &format!("{base}/persons"), &auth, alice.clone())
            .await
            .0,
        200
    );
    assert_eq!(
        http_request("POST", &format!("{base}/persons"), &auth, alice)
            .await
            .0,
        409
    );
    let short = br#"{"name":"bob","password":"short"}"#.to_vec();
    assert_eq!(
        http_request("POST", &format!("{base}/persons"), &auth, short)
            .await
            .0,
        400
    );

    let grant = br#"{"right":"listener.register","pattern":"orders*"}"#.to_vec();
    let (status, _, body) = http_request(
        "POST",
        &format!("{base}/persons/alice/grants"),
        &auth,
        grant.clone(),
    )
    .await;
    assert_eq!(status, 200);
    let person: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(person["rights"][0]["pattern"], "orders*");
    let bad = br#"{"right":"root","pattern":"*"}"#.to_vec();
    assert_eq!(
        http_request("POST", &format!("{base}/persons/alice/grants"), &auth, bad)
            .await
            .0,
        400
    );
    let infix = br#"{"right":"listener.register","pattern":"a*b"}"#.to_vec();
    assert_eq!(
        http_request(
            "POST",
            &format!("{base}/persons/alice/grants"),
            &auth,
            infix
        )
        .await
        .0,
        400
    );
    assert_eq!(
        http_request(
            "POST",
            &format!("{base}/persons/nobody/grants"),
            &auth,
            grant
        )
        .await
        .0,
        404
    );
    assert_eq!(
        http_request(
            "POST",
            &format!("{base}/persons/nobody/disable"),
            &auth,
            vec![]
        )
        .await
        .0,
        404
    );

    let (status, _, body) = http_request(
        "POST",
        &format!("{base}/persons/alice/disable"),
        &auth,
        vec![],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["disabled"],
        true
    );

    let (status, _, body) = http_request("GET", &format!("{base}/audit"), &auth, vec![]).await;
    assert_eq!(status, 200);
    let kinds: Vec<String> = serde_json::from_slice::<Vec<serde_json::Value>>(&body)
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["person.add", "person.grant", "person.disable"]);
    assert!(
        !String::from_utf8_lossy(&body).contains("correct horse"),
        "no secrets in the audit trail"
    );
}
