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

fn csr() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

#[tokio::test]
async fn registration_by_password_and_by_single_use_enrollment_token() {
    let dir = std::env::temp_dir().join(format!("relay-registration-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let broker = TestBroker::start(&format!(
        "[ca]\ndir = \"{}\"\ncert_lifetime_hours = 24",
        dir.join("ca").display()
    ))
    .await;
    let admin = format!("{}/$admin/v1", broker.http());
    let register = format!("{}/$register/v1/listeners", broker.http());
    let manage = token_for(&format!("http://{}/", broker.addr), KEY_NAME, KEY, 60);
    let auth = [
        ("ServiceBusAuthorization", manage.as_str()),
        ("Content-Type", "application/json"),
    ];
    static JSON: [(&str, &str); 1] = [("Content-Type", "application/json")];
    let json = &JSON;
    let post = |url: String,
                headers: &'static [(&'static str, &'static str)],
                body: serde_json::Value| async move {
        let (status, _, body) =
            http_request("POST", &url, headers, body.to_string().into_bytes()).await;
        (
            status,
            serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default(),
        )
    };
    let add = serde_json::json!({"name": "alice", "password": "correct horse battery"})
        .to_string()
        .into_bytes();
    assert_eq!(
        http_request("POST", &format!("{admin}/persons"), &auth, add)
            .await
            .0,
        200
    );
    let grant = serde_json::json!({"right": "listener.register", "pattern": "orders*"})
        .to_string()
        .into_bytes();
    assert_eq!(
        http_request(
            "POST",
            &format!("{admin}/persons/alice/grants"),
            &auth,
            grant
        )
        .await
        .0,
        200
    );

    let by_password = |password: &str, hcs: &[&str], csr: String| serde_json::json!({"csr": csr, "hybrid_connections": hcs, "name": "site-7", "person": "alice", "password": password});
    let (status, reply) = post(
        register.clone(),
        json,
        by_password("correct horse battery", &["orders", "orders/eu"], csr()),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let id = reply["listener_id"].as_str().unwrap().to_owned();
    assert!(
        reply["certificate"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert_eq!(
        reply["chain"]
            .as_str()
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count(),
        2
    );
    assert_eq!(
        reply["hybrid_connections"],
        serde_json::json!(["orders", "orders/eu"])
    );

    assert_eq!(
        post(
            register.clone(),
            json,
            by_password("wrong password!", &["orders"], csr())
        )
        .await
        .0,
        401
    );
    assert_eq!(
        post(
            register.clone(),
            json,
            by_password("correct horse battery", &["payroll"], csr())
        )
        .await
        .0,
        403
    );
    assert_eq!(
        post(
            register.clone(),
            json,
            by_password("correct horse battery", &["orders"], "garbage".into())
        )
        .await
        .0,
        400
    );
    assert_eq!(
        post(register.clone(), json, serde_json::json!({"csr": csr()}))
            .await
            .0,
        400
    );

    // Unattended: a token minted by the admin on alice's behalf, usable once.
    let mint =
        serde_json::json!({"person": "alice", "hybrid_connections": ["orders"], "name": "edge-1"})
            .to_string()
            .into_bytes();
    let (status, _, minted) =
        http_request("POST", &format!("{admin}/enrollment-tokens"), &auth, mint).await;
    assert_eq!(status, 200);
    let token = serde_json::from_slice::<serde_json::Value>(&minted).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, reply) = post(
        register.clone(),
        json,
        serde_json::json!({"csr": csr(), "enrollment_token": token}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_ne!(reply["listener_id"].as_str().unwrap(), id);
    assert_eq!(
        post(
            register.clone(),
            json,
            serde_json::json!({"csr": csr(), "enrollment_token": token})
        )
        .await
        .0,
        401,
        "single use"
    );

    // A token outlives nothing: disabling the person stops registration with it.
    let mint = serde_json::json!({"person": "alice", "hybrid_connections": ["orders"]})
        .to_string()
        .into_bytes();
    let (_, _, minted) =
        http_request("POST", &format!("{admin}/enrollment-tokens"), &auth, mint).await;
    let token = serde_json::from_slice::<serde_json::Value>(&minted).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        http_request(
            "POST",
            &format!("{admin}/persons/alice/disable"),
            &auth,
            vec![]
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post(
            register.clone(),
            json,
            serde_json::json!({"csr": csr(), "enrollment_token": token})
        )
        .await
        .0,
        403
    );

    let (_, _, audit) = http_request("GET", &format!("{admin}/audit"), &auth, vec![]).await;
    let audit = String::from_utf8(audit).unwrap();
    assert!(
        audit.contains("listener.register")
            && audit.contains("certificate.issue")
            && audit.contains("registration.rejected")
    );
    assert!(
        !audit.contains("correct horse") && !audit.contains(&token) && !audit.contains("BEGIN"),
        "no secrets or CSRs in the audit trail"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
