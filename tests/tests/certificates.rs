//! Certificate-authenticated listeners over real TLS: registration, mTLS listen, renewal,
//! revocation, restart, and the bad inputs of the enrollment design (§4.10). Fixtures are
//! minted with rcgen at test time; "now" is injected through the CA's `issue`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_io::WsError;
use relay_io::rustls::ClientConfig;
use relay_listener::CertificateIdentity;
use relay_tests::certs::{Env, PASSWORD, client_with, csr, leaf, refused};
use relay_tests::{KEY, KEY_NAME, temp_dir, token_for};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[tokio::test]
async fn whole_flow_register_listen_relay_revoke_and_refuse() {
    let env = Env::start("certs-flow").await;
    let dir = env.register("site-7", &["hyco"]).await;
    let identity = env.identity(&dir);

    // The listener agent's library, authenticating with its certificate only.
    let echo = env.echo_listener(env.wss(), "hyco", Arc::clone(&identity));
    let mut status = echo.status.clone();
    env.wait_listeners("hyco", 1, Duration::from_secs(10)).await;

    // A sender relays bytes through it (SAS, as Azure senders do).
    let mut conn = env.sender(&env.wss(), "hyco").await;
    conn.stream.write_all(b"ping over mTLS").await.unwrap();
    let mut echoed = [0u8; 14];
    conn.stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping over mTLS");

    // Revoke: the control channel and the relayed connection close within a second.
    let path = format!("/listeners/{}/revoke", identity.listener_id());
    let (code, reply) = env.admin("POST", &path, serde_json::Value::Null).await;
    assert_eq!(code, 200, "{reply}");
    assert!(reply["revoked_at_ms"].is_u64());
    let revoked_at = Instant::now();
    env.wait_listeners("hyco", 0, Duration::from_secs(1)).await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(1), conn.stream.read_to_end(&mut rest))
        .await
        .expect("the relayed connection is cut within 1 s")
        .ok();
    assert!(revoked_at.elapsed() < Duration::from_secs(1));

    // The agent sees why (REVOKED, not just CONNECTING), and its reconnects are refused.
    let error = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            status.changed().await.unwrap();
            if let relay_listener::Status::Revoked { last_error, .. } = &*status.borrow() {
                return last_error.clone();
            }
        }
    })
    .await
    .unwrap();
    assert!(error.contains("4401"), "{error}");
    let again = env.listen(
        "hyco",
        identity.client_config(Some(&env.server_ca())).unwrap(),
    );
    assert_eq!(refused(&again.await), Some(403));
    echo.stop().await;

    let audit = env.audit().await;
    for kind in [
        "listener.register",
        "certificate.issue",
        "listener.connect",
        "listener.revoke",
        "listener.disconnect",
        "listener.rejected",
    ] {
        assert!(audit.contains(kind), "audit lacks {kind}: {audit}");
    }
    assert!(
        !audit.contains("BEGIN"),
        "no certificates or CSRs in the audit"
    );
}

#[tokio::test]
async fn the_handshake_refuses_certificates_the_listener_ca_did_not_issue_properly() {
    let env = Env::start("certs-tls").await;
    let dir = env.register("good", &["hyco"]).await;
    let identity = env.identity(&dir);
    let id = identity.listener_id().to_owned();
    let ca = env.broker.broker.ca().unwrap();
    let good = env
        .listen(
            "hyco",
            identity.client_config(Some(&env.server_ca())).unwrap(),
        )
        .await;
    assert!(good.is_ok(), "control: the registered certificate works");

    let now = time::OffsetDateTime::now_utc();
    let key = rcgen::KeyPair::generate().unwrap();
    let day = Duration::from_secs(86_400);
    // #1 expired, #2 not yet valid (issued "now" = 30 days ago / 2 days ahead).
    let expired = ca
        .issue(&csr(&key), &id, day, now - time::Duration::days(30))
        .unwrap();
    let future = ca
        .issue(&csr(&key), &id, day, now + time::Duration::days(2))
        .unwrap();
    // #3 self-signed, clientAuth, naming the listener.
    let mut own = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    own.subject_alt_names = vec![rcgen::SanType::URI(
        ca.listener_uri(&id).try_into().unwrap(),
    )];
    own.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let self_signed = own.self_signed(&key).unwrap().pem();
    // #4 the right root but not the listener CA (signed by the root directly).
    let by_root = leaf(
        &env,
        &env.issuer("root"),
        &key,
        &id,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    // #5 the listener CA, but a serverAuth certificate.
    let server_auth = leaf(
        &env,
        &env.issuer("issuing"),
        &key,
        &id,
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    for (what, pem) in [
        ("expired", format!("{}{}", expired.pem, env.chain_pem())),
        (
            "not yet valid",
            format!("{}{}", future.pem, env.chain_pem()),
        ),
        ("self-signed", self_signed),
        (
            "signed by the root",
            format!("{by_root}{}", env.chain_pem()),
        ),
        (
            "serverAuth only",
            format!("{server_auth}{}", env.chain_pem()),
        ),
    ] {
        let result = env.listen("hyco", client_with(&env, &pem, &key)).await;
        assert!(
            matches!(
                result,
                Err(WsError::Tls(_) | WsError::Io(_) | WsError::UnexpectedEof)
            ),
            "{what}: {:?}",
            result.map(|_| "connected")
        );
    }

    // #10 no certificate and no token: 401 in the protocol's terms.
    assert_eq!(
        refused(&env.listen("hyco", env.anonymous()).await),
        Some(401)
    );
    // A well-formed certificate from the CA that was never recorded for the listener.
    let unrecorded = ca.issue(&csr(&key), &id, day, now).unwrap();
    let pem = format!("{}{}", unrecorded.pem, env.chain_pem());
    let r = env.listen("hyco", client_with(&env, &pem, &key)).await;
    assert_eq!(refused(&r), Some(403));
    // One naming no registered listener.
    let stranger = ca.issue(&csr(&key), "no-such-listener", day, now).unwrap();
    let pem = format!("{}{}", stranger.pem, env.chain_pem());
    let r = env.listen("hyco", client_with(&env, &pem, &key)).await;
    assert_eq!(refused(&r), Some(401));
    // A hybrid connection it was not registered for.
    let tls = identity.client_config(Some(&env.server_ca())).unwrap();
    assert_eq!(refused(&env.listen("open", tls).await), Some(403));
    assert!(env.audit().await.contains("listener.rejected"));
    // The handshake refusals above are audited too (written off the accept path).
    env.wait_audit("TLS handshake from 127.0.0.1").await;
}

#[tokio::test]
async fn renewal_needs_the_current_certificate_a_new_key_and_the_right() {
    let env = Env::start("certs-renew").await;
    let dir = env.register("renewing", &["hyco"]).await;
    let identity = env.identity(&dir);
    let tls = identity.client_config(Some(&env.server_ca())).unwrap();
    let renew = |csr: String| serde_json::json!({ "csr": csr });

    // Without a client certificate: 401.
    let fresh = rcgen::KeyPair::generate().unwrap();
    let (code, _) = env
        .call(
            "POST",
            "/$register/v1/renew",
            &[],
            &renew(csr(&fresh)),
            &env.anonymous(),
        )
        .await;
    assert_eq!(code, 401);
    // #23 the same key again: 400.
    let old_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("key.pem")).unwrap()).unwrap();
    let (code, reply) = env
        .call(
            "POST",
            "/$register/v1/renew",
            &[],
            &renew(csr(&old_key)),
            &tls,
        )
        .await;
    assert_eq!(code, 400, "{reply}");
    assert!(reply.to_string().contains("rekey_required"));

    // The agent's own renewal: a new key, written atomically, used from the next handshake.
    let old_cert = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    let mut renewals = identity.renewals();
    identity.renew(&env.wss(), &tls).await.unwrap();
    assert!(renewals.has_changed().unwrap());
    renewals.mark_unchanged();
    let new_cert = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    assert_ne!(old_cert, new_cert);
    assert!(!dir.join("key.pem.new").exists());
    assert!(
        env.listen("hyco", Arc::clone(&tls)).await.is_ok(),
        "new certificate"
    );
    // The superseded certificate stays valid until it expires (sessions are not cut).
    assert!(
        env.listen("hyco", client_with(&env, &old_cert, &old_key))
            .await
            .is_ok()
    );
    assert!(env.audit().await.contains("certificate.renew"));

    // The person loses the right: renewal and new connects are refused.
    let body = serde_json::json!({"right": "listener.register", "pattern": "hyco*"});
    assert_eq!(
        env.admin("DELETE", "/persons/alice/grants", body).await.0,
        200
    );
    let err = identity.renew(&env.wss(), &tls).await.unwrap_err();
    assert!(
        matches!(
            err,
            relay_listener::IdentityError::Refused { status: 403, .. }
        ),
        "{err}"
    );
    assert_eq!(
        refused(&env.listen("hyco", Arc::clone(&tls)).await),
        Some(403)
    );
    env.grant("alice", "listener.register", "hyco*").await;
    assert!(env.listen("hyco", Arc::clone(&tls)).await.is_ok());

    // Revoked: renewal refused.
    let path = format!("/listeners/{}/revoke", identity.listener_id());
    assert_eq!(
        env.admin("POST", &path, serde_json::Value::Null).await.0,
        200
    );
    let err = identity.renew(&env.wss(), &tls).await.unwrap_err();
    assert!(
        matches!(
            err,
            relay_listener::IdentityError::Refused { status: 403, .. }
        ),
        "{err}"
    );
    assert!(env.audit().await.contains("renewal.rejected"));
}

#[tokio::test]
async fn a_key_registers_once_and_person_disable_closes_what_is_open() {
    let env = Env::start("certs-disable").await;
    // #16 the same key for a second listener: 409.
    let key = rcgen::KeyPair::generate().unwrap();
    let body = serde_json::json!({
        "csr": csr(&key), "hybrid_connections": ["hyco"], "person": "alice", "password": PASSWORD,
    });
    let env = &env;
    let register = |body: serde_json::Value| async move { env.post_registration(&body).await };
    assert_eq!(register(body.clone()).await.0, 200);
    let (code, reply) = register(body).await;
    assert_eq!(code, 409, "{reply}");
    assert!(reply.to_string().contains("key_reuse"));

    let dir = env.register("disabled", &["hyco"]).await;
    let tls = env
        .identity(&dir)
        .client_config(Some(&env.server_ca()))
        .unwrap();
    let mut open = env.listen("hyco", Arc::clone(&tls)).await.unwrap();
    env.wait_listeners("hyco", 1, Duration::from_secs(5)).await;
    assert_eq!(
        env.admin("POST", "/persons/alice/disable", serde_json::Value::Null)
            .await
            .0,
        200
    );
    env.wait_listeners("hyco", 0, Duration::from_secs(1)).await;
    let closed = tokio::time::timeout(Duration::from_secs(1), open.reader.message(1024))
        .await
        .unwrap();
    assert!(
        matches!(closed, Ok(Some(relay_io::Message::Close(Some((4401, _)))))),
        "{closed:?}"
    );
    assert_eq!(refused(&env.listen("hyco", tls).await), Some(403));
}

#[tokio::test]
async fn a_certificate_channel_closes_at_not_after_and_ignores_token_renewal() {
    let env = Env::start("certs-expiry").await;
    let dir = env.register("short", &["hyco"]).await;
    let id = env.identity(&dir).listener_id().to_owned();
    // A certificate that expires in three seconds, recorded as the listener's current one.
    let key = rcgen::KeyPair::generate().unwrap();
    let ca = env.broker.broker.ca().unwrap();
    let issued = ca
        .issue(
            &csr(&key),
            &id,
            Duration::from_secs(3),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    let record = relay_broker::store::CertificateRecord {
        serial: issued.serial.clone(),
        listener_id: id,
        key_fingerprint: issued.key_fingerprint.clone(),
        not_after_ms: (issued.not_after.unix_timestamp() as u64) * 1000,
    };
    assert!(env.broker.broker.store().renew_listener(&record).unwrap());
    let pem = format!("{}{}", issued.pem, env.chain_pem());
    let mut open = env
        .listen("hyco", client_with(&env, &pem, &key))
        .await
        .unwrap();
    // A SAS renewal does not extend a certificate's life.
    let token = token_for(
        &format!("https://{}/hyco", env.broker.addr),
        KEY_NAME,
        KEY,
        3600,
    );
    let renew =
        relay_core::control::ListenerCommand::RenewToken(relay_core::control::RenewToken { token });
    open.writer.text(&renew.encode()).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match open.reader.message(1024).await {
                Ok(Some(relay_io::Message::Close(status))) => return status,
                Ok(Some(_)) => {}
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .unwrap();
    let (code, reason) = closed.unwrap();
    assert_eq!(code, 1008);
    assert!(reason.contains("Certificate expired"), "{reason}");
}

#[tokio::test]
async fn nothing_registered_is_lost_across_a_broker_restart() {
    let env = Env::start("certs-restart").await;
    let dir = env.register("durable", &["hyco"]).await;
    let env = env.restart().await;
    let tls = env
        .identity(&dir)
        .client_config(Some(&env.server_ca()))
        .unwrap();
    assert!(env.listen("hyco", tls).await.is_ok());
    let (code, listeners) = env
        .admin("GET", "/listeners", serde_json::Value::Null)
        .await;
    assert_eq!(code, 200);
    assert_eq!(listeners.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn personal_api_tokens_register_and_act_within_their_rights() {
    let env = Env::start("certs-person-token").await;
    let (code, minted) = env
        .admin("POST", "/persons/alice/tokens", serde_json::Value::Null)
        .await;
    assert_eq!(code, 200);
    let token = minted["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("rpt_"));
    let key = rcgen::KeyPair::generate().unwrap();
    let body = serde_json::json!({"csr": csr(&key), "hybrid_connections": ["hyco"], "person_token": token});
    let (code, reply) = env
        .call(
            "POST",
            "/$register/v1/listeners",
            &[],
            &body,
            &env.anonymous(),
        )
        .await;
    assert_eq!(code, 200, "{reply}");
    let wrong = serde_json::json!({"csr": csr(&key), "hybrid_connections": ["hyco"], "person_token": "rpt_nope"});
    let (code, _) = env
        .call(
            "POST",
            "/$register/v1/listeners",
            &[],
            &wrong,
            &env.anonymous(),
        )
        .await;
    assert_eq!(code, 401);

    let bearer = format!("Bearer {token}");
    let as_alice = [("Authorization", bearer.as_str())];
    let env = &env;
    let get = |path: &'static str| {
        let headers = as_alice;
        async move {
            env.call(
                "GET",
                path,
                &headers,
                &serde_json::Value::Null,
                &env.anonymous(),
            )
            .await
            .0
        }
    };
    assert_eq!(get("/$admin/v1/audit").await, 403, "no audit.read yet");
    assert_eq!(
        get("/$admin/v1/persons").await,
        401,
        "persons are admin-only"
    );
    env.grant("alice", "audit.read", "*").await;
    assert_eq!(get("/$admin/v1/audit").await, 200);
    // The registering person may revoke their own listener.
    let path = format!(
        "/$admin/v1/listeners/{}/revoke",
        reply["listener_id"].as_str().unwrap()
    );
    let (code, _) = env
        .call(
            "POST",
            &path,
            &as_alice,
            &serde_json::Value::Null,
            &env.anonymous(),
        )
        .await;
    assert_eq!(code, 200);
}

#[test]
fn an_identity_with_the_wrong_key_is_refused_and_an_interrupted_renewal_recovers() {
    let dir = temp_dir("certs-identity-files");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let make = |key: &rcgen::KeyPair| {
        let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        format!(
            "{}{}",
            params.signed_by(key, &issuer).unwrap().pem(),
            ca_cert.pem()
        )
    };
    let (key, other) = (
        rcgen::KeyPair::generate().unwrap(),
        rcgen::KeyPair::generate().unwrap(),
    );
    std::fs::write(
        dir.join("listener.json"),
        r#"{"listener_id":"l-1","hybrid_connections":["hyco"]}"#,
    )
    .unwrap();
    std::fs::write(dir.join("cert.pem"), make(&key)).unwrap();
    std::fs::write(dir.join("key.pem"), other.serialize_pem()).unwrap();
    // #9 a certificate with someone else's key.
    let err = CertificateIdentity::load(&dir).unwrap_err();
    assert!(err.to_string().contains("key.pem"), "{err}");
    // A renewal interrupted after the certificate was written: the pending key is used.
    std::fs::write(dir.join("key.pem.new"), key.serialize_pem()).unwrap();
    let identity = CertificateIdentity::load(&dir).unwrap();
    assert_eq!(identity.listener_id(), "l-1");
    assert!(!dir.join("key.pem.new").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("key.pem")).unwrap(),
        key.serialize_pem()
    );
}

#[tokio::test]
async fn a_certificate_listener_creates_hybrid_connections_under_its_patterns() {
    let env = Env::start("certs-dynamic").await;
    let dir = env.register("edge", &["hyco-edge/*"]).await;
    let tls = env
        .identity(&dir)
        .client_config(Some(&env.server_ca()))
        .unwrap();
    let null = serde_json::Value::Null;

    let env = &env;
    let call = |method: &'static str, name: &'static str, tls: Arc<ClientConfig>| async move {
        let path = format!("/$register/v1/hybrid-connections/{name}");
        env.call(method, &path, &[], &serde_json::Value::Null, &tls)
            .await
            .0
    };
    assert_eq!(call("PUT", "hyco-edge/dev-1", Arc::clone(&tls)).await, 200);
    assert!(
        env.listen("hyco-edge/dev-1", Arc::clone(&tls))
            .await
            .is_ok()
    );
    for (name, status) in [
        ("hyco-edge/dev-1", 409),
        ("other/dev-1", 403),
        ("hyco", 403),
        ("hyco-edge/a*b", 400),
    ] {
        assert_eq!(call("PUT", name, Arc::clone(&tls)).await, status, "{name}");
    }
    assert_eq!(call("PUT", "hyco-edge/dev-2", env.anonymous()).await, 401);
    assert_eq!(
        call("DELETE", "hyco-edge/dev-1", Arc::clone(&tls)).await,
        200
    );
    let gone = env.listen("hyco-edge/dev-1", Arc::clone(&tls)).await;
    assert_eq!(refused(&gone), Some(404));

    // An administrator creates them statically; configuration-file ones stay put.
    let (code, reply) = env
        .admin("PUT", "/hybrid-connections/static-1", null.clone())
        .await;
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["requires_client_authorization"], true);
    assert_eq!(
        env.admin("DELETE", "/hybrid-connections/hyco", null)
            .await
            .0,
        409
    );
    assert!(env.audit().await.contains("hybrid_connection.create"));
}

#[tokio::test]
async fn an_enrollment_token_redeems_once_even_when_raced_and_all_refusals_look_alike() {
    let env = Env::start("certs-token-race").await;
    let body = serde_json::json!({"person": "alice", "hybrid_connections": ["hyco"]});
    let (status, minted) = env.admin("POST", "/enrollment-tokens", body).await;
    assert_eq!(status, 200, "{minted}");
    let token = minted["token"].as_str().unwrap().to_owned();
    let redeem = |token: String| {
        let env = &env;
        async move {
            let key = rcgen::KeyPair::generate().unwrap();
            let body = serde_json::json!({"csr": csr(&key), "enrollment_token": token});
            env.post_registration(&body).await
        }
    };

    // §4.10 #19: two redeems at once, exactly one wins (the burn is atomic).
    let (a, b) = tokio::join!(redeem(token.clone()), redeem(token.clone()));
    let mut statuses = [a.0, b.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 401], "{} / {}", a.1, b.1);

    // §4.10 #20: used, unknown and truncated tokens get the same answer (no oracle).
    let message = |reply: &serde_json::Value| {
        let text = reply["error"]["message"].as_str().unwrap().to_owned();
        text.split(" TrackingId:").next().unwrap().to_owned()
    };
    let used = redeem(token.clone()).await;
    let unknown = redeem(relay_tests::certs::random_token()).await;
    let truncated = redeem(token[..token.len() / 2].to_owned()).await;
    for (what, (status, reply)) in [("unknown", &unknown), ("truncated", &truncated)] {
        assert_eq!(*status, 401, "{what}");
        assert_eq!(message(reply), message(&used.1), "{what}");
    }
    assert_eq!(used.0, 401);
}

/// §4.10 #28: a client that opens TCP and never finishes the TLS handshake is cut at the
/// 10 s bound (virtual time: the runtime's clock is paused and jumps while all are idle).
#[tokio::test(start_paused = true)]
async fn a_stalled_tls_handshake_is_closed_at_the_bound() {
    let dir = temp_dir("certs-slowloris");
    let broker = relay_tests::TestBroker::start_tls("", &dir).await;
    let started = tokio::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    // Half a ClientHello's record header, then nothing.
    tcp.write_all(&[0x16, 0x03]).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(60), tcp.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "the broker closes the stalled handshake"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(12),
        "{waited:?}"
    );
}
