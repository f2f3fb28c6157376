//! The conformance battery every store implementation passes, one function per concern.
//! Public under the `test-util` feature so that another backend (PostgreSQL, in the
//! cluster) runs exactly these checks: open a fresh store with [`config_hcs`] and
//! [`config_rules`], then call each function of [`CONCERNS`] on a store of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use relay_core::sas::{Rights, SharedAccessKey};

use super::{
    AuditEvent, CertificateRecord, EnrollmentToken, Grant, ListenerRecord, NamespaceChange, Store,
    StoreError,
};
use crate::config::HybridConnection;

mod audited;
pub use audited::{audited_listener_writes, audited_namespace_writes, audited_person_writes};

/// The hybrid connections a conformance store is opened with.
#[must_use]
pub fn config_hcs() -> Vec<HybridConnection> {
    vec![HybridConnection {
        name: "Orders".into(),
        requires_client_authorization: true,
    }]
}

/// The rules a conformance store is opened with.
#[must_use]
pub fn config_rules() -> Vec<SharedAccessKey> {
    vec![SharedAccessKey {
        name: "root".into(),
        key: "k".into(),
        secondary_key: None,
        rights: Rights::MANAGE,
        hybrid_connection: None,
    }]
}

/// One concern of the battery: it takes a fresh store.
pub type Concern = fn(&dyn Store);

/// Every concern, by name, each to run on a fresh store.
pub const CONCERNS: [(&str, Concern); 10] = [
    ("hybrid_connections", hybrid_connections),
    ("change_feed", change_feed),
    ("audit_trail", audit_trail),
    ("persons_and_grants", persons_and_grants),
    ("enrollment_tokens", enrollment_tokens),
    ("listeners_and_certificates", listeners_and_certificates),
    ("person_tokens", person_tokens),
    ("audited_person_writes", audited_person_writes),
    ("audited_listener_writes", audited_listener_writes),
    ("audited_namespace_writes", audited_namespace_writes),
];

fn hc(name: &str) -> HybridConnection {
    HybridConnection {
        name: name.into(),
        requires_client_authorization: false,
    }
}

/// The person the identity concerns act for.
fn alice(store: &dyn Store) {
    if store.person("alice").unwrap().is_none() {
        store.add_person("alice", "$argon2id$hash").unwrap();
    }
}

/// Configured and run-time hybrid connections: lookups ignore case, the file wins.
pub fn hybrid_connections(store: &dyn Store) {
    assert_eq!(
        store.hybrid_connection("orders").map(|h| h.name),
        Some("Orders".into())
    );
    assert_eq!(store.rules().len(), 1);

    store.create_hybrid_connection(hc("edge/device-7")).unwrap();
    assert!(matches!(
        store.create_hybrid_connection(hc("EDGE/device-7")),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.create_hybrid_connection(hc("orders")),
        Err(StoreError::FromConfig(_))
    ));
    assert!(
        !store
            .hybrid_connection("edge/device-7")
            .unwrap()
            .requires_client_authorization
    );
    let names: Vec<String> = store
        .hybrid_connections()
        .into_iter()
        .map(|h| h.name)
        .collect();
    assert_eq!(names, ["Orders", "edge/device-7"]);
    assert!(matches!(
        store.remove_hybrid_connection("orders"),
        Err(StoreError::FromConfig(_))
    ));
    assert!(store.remove_hybrid_connection("edge/device-7").unwrap());
    assert!(!store.remove_hybrid_connection("edge/device-7").unwrap());
    assert!(store.hybrid_connection("edge/device-7").is_none());
}

/// The change feed reports what was created and removed, in order.
pub fn change_feed(store: &dyn Store) {
    let mut feed = store.changes();
    store.create_hybrid_connection(hc("feed/a")).unwrap();
    assert!(store.create_hybrid_connection(hc("orders")).is_err());
    assert!(store.remove_hybrid_connection("feed/a").unwrap());
    assert!(!store.remove_hybrid_connection("feed/a").unwrap());
    assert_eq!(
        feed.try_recv().unwrap(),
        NamespaceChange::Created(hc("feed/a"))
    );
    assert_eq!(
        feed.try_recv().unwrap(),
        NamespaceChange::Removed("feed/a".into())
    );
    assert!(
        feed.try_recv().is_err(),
        "refusals and no-ops are not changes"
    );
}

/// The audit trail: in order, filtered by time, bounded by the limit.
pub fn audit_trail(store: &dyn Store) {
    for (i, kind) in ["listener.connect", "listener.disconnect", "auth.rejected"]
        .iter()
        .enumerate()
    {
        store
            .append_audit(&AuditEvent {
                at_ms: 1000 + i as u64,
                kind: (*kind).into(),
                subject: "orders".into(),
                detail: String::new(),
            })
            .unwrap();
    }
    let all = store.audit(0, 100).unwrap();
    assert_eq!(
        all.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["listener.connect", "listener.disconnect", "auth.rejected"]
    );
    assert_eq!(store.audit(1001, 100).unwrap().len(), 2);
    assert_eq!(store.audit(0, 1).unwrap().len(), 1);
}

/// Persons, their grants and disabling.
pub fn persons_and_grants(store: &dyn Store) {
    store.add_person("alice", "$argon2id$hash").unwrap();
    assert!(matches!(
        store.add_person("ALICE", "x"),
        Err(StoreError::Conflict(_))
    ));
    let register = Grant {
        right: "listener.register".into(),
        pattern: "orders*".into(),
    };
    assert!(store.grant("alice", &register).unwrap());
    assert!(store.grant("Alice", &register).unwrap());
    assert!(!store.grant("bob", &register).unwrap());
    let (alice, hash) = store.person("alice").unwrap().unwrap();
    assert_eq!(
        (alice.rights.clone(), hash.as_str(), alice.disabled),
        (vec![register.clone()], "$argon2id$hash", false)
    );
    assert!(store.set_person_disabled("alice", true).unwrap());
    assert!(!store.set_person_disabled("bob", true).unwrap());
    assert!(store.persons().unwrap()[0].disabled);
    assert!(store.revoke_grant("alice", &register).unwrap());
    assert!(!store.revoke_grant("alice", &register).unwrap());
    assert!(store.person("alice").unwrap().unwrap().0.rights.is_empty());
    assert!(store.person("nobody").unwrap().is_none());
}

/// Enrollment tokens expire and are used once.
pub fn enrollment_tokens(store: &dyn Store) {
    alice(store);
    let token = EnrollmentToken {
        hash: "ab".repeat(32),
        person: "alice".into(),
        hybrid_connections: vec!["orders".into(), "edge/a".into()],
        name: Some("site-7".into()),
        expires_at_ms: 10_000,
    };
    store.add_enrollment_token(&token).unwrap();
    assert_eq!(
        store.burn_enrollment_token(&token.hash, 20_000).unwrap(),
        None,
        "expired"
    );
    let fresh = EnrollmentToken {
        hash: "cd".repeat(32),
        expires_at_ms: 30_000,
        ..token
    };
    store.add_enrollment_token(&fresh).unwrap();
    assert_eq!(
        store.burn_enrollment_token(&fresh.hash, 20_000).unwrap(),
        Some(fresh.clone())
    );
    assert_eq!(
        store.burn_enrollment_token(&fresh.hash, 20_000).unwrap(),
        None,
        "single use"
    );
    assert_eq!(store.burn_enrollment_token("unknown", 0).unwrap(), None);
}

/// Listeners and their certificates: one key, one certificate; renewal; revocation. One
/// scenario, in order: each step starts from the state the last one left.
pub fn listeners_and_certificates(store: &dyn Store) {
    alice(store);
    let record = ListenerRecord {
        id: "l-1".into(),
        name: "site-7".into(),
        person: "alice".into(),
        hybrid_connections: vec!["orders".into()],
        key_fingerprint: "ff".repeat(32),
        serial: "01".repeat(16),
        not_after_ms: 99,
        revoked_at_ms: None,
    };
    store.add_listener(&record).unwrap();
    assert_eq!(store.listeners().unwrap(), std::slice::from_ref(&record));
    assert_eq!(store.listener("l-1").unwrap(), Some(record.clone()));
    assert_eq!(store.listener("l-2").unwrap(), None);
    assert_eq!(
        store.certificate(&record.serial).unwrap(),
        Some(record.certificate())
    );
    // One key, one certificate: a second listener with the same key is refused.
    let twin = ListenerRecord {
        id: "l-2".into(),
        serial: "02".repeat(16),
        ..record.clone()
    };
    assert!(matches!(
        store.add_listener(&twin),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.listeners().unwrap().len(), 1, "nothing half-written");

    let renewed = CertificateRecord {
        serial: "03".repeat(16),
        listener_id: "l-1".into(),
        key_fingerprint: "ee".repeat(32),
        not_after_ms: 199,
    };
    let same_key = CertificateRecord {
        serial: "04".repeat(16),
        key_fingerprint: record.key_fingerprint.clone(),
        ..renewed.clone()
    };
    assert!(matches!(
        store.renew_listener(&same_key),
        Err(StoreError::Conflict(_))
    ));
    assert!(store.renew_listener(&renewed).unwrap());
    let current = store.listener("l-1").unwrap().unwrap();
    assert_eq!(
        (current.serial.as_str(), current.not_after_ms),
        (renewed.serial.as_str(), 199)
    );
    // The superseded certificate is still known (valid until it expires).
    assert!(store.certificate(&record.serial).unwrap().is_some());
    let orphan = CertificateRecord {
        listener_id: "nobody".into(),
        serial: "05".repeat(16),
        key_fingerprint: "dd".repeat(32),
        ..renewed
    };
    assert!(!store.renew_listener(&orphan).unwrap());

    assert!(store.revoke_listener("l-1", 500).unwrap());
    assert!(!store.revoke_listener("l-1", 600).unwrap(), "once");
    assert!(!store.revoke_listener("nobody", 600).unwrap());
    assert_eq!(
        store.listener("l-1").unwrap().unwrap().revoked_at_ms,
        Some(500)
    );
}

/// Personal API tokens, by their digest.
pub fn person_tokens(store: &dyn Store) {
    alice(store);
    store.add_person_token(&"aa".repeat(32), "alice").unwrap();
    assert_eq!(
        store.person_for_token(&"aa".repeat(32)).unwrap().as_deref(),
        Some("alice")
    );
    assert_eq!(store.person_for_token("bb").unwrap(), None);
}
