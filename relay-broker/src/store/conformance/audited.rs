//! The concerns about an identity write and its audit events, which commit together.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use super::super::{
    AuditEvent, AuditKind, IdentityWrite, ListenerRecord, NamespaceChange, Store, StoreError,
};
use super::hc;

/// The kinds of the audit trail, oldest first.
fn kinds(store: &dyn Store) -> Vec<String> {
    store
        .audit(0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

fn event(kind: AuditKind) -> AuditEvent {
    AuditEvent::now(kind, "bob", "")
}

/// A person's write and its audit event commit together: a refused write leaves no
/// event, and a write that changes nothing leaves none.
pub fn audited_person_writes(store: &dyn Store) {
    let add = IdentityWrite::AddPerson {
        name: "bob",
        password_hash: "$argon2id$h",
    };
    assert!(
        store
            .write_audited(add, &[event(AuditKind::PersonAdd)])
            .unwrap()
    );
    assert!(matches!(
        store.write_audited(add, &[event(AuditKind::PersonAdd)]),
        Err(StoreError::Conflict(_))
    ));
    let disable = IdentityWrite::SetPersonDisabled {
        name: "nobody",
        disabled: true,
    };
    assert!(
        !store
            .write_audited(disable, &[event(AuditKind::PersonDisable)])
            .unwrap()
    );
    assert_eq!(
        kinds(store),
        ["person.add"],
        "no event for a refusal or a no-op"
    );
}

/// A listener, its certificate and their events commit together; a refused listener leaves
/// no row and no event. One scenario, in order: each step starts from the state the last
/// one left.
pub fn audited_listener_writes(store: &dyn Store) {
    let add = IdentityWrite::AddPerson {
        name: "bob",
        password_hash: "$argon2id$h",
    };
    assert!(
        store
            .write_audited(add, &[event(AuditKind::PersonAdd)])
            .unwrap()
    );
    let record = ListenerRecord {
        id: "l-9".into(),
        name: "site".into(),
        person: "bob".into(),
        hybrid_connections: vec!["orders".into()],
        key_fingerprint: "ab".repeat(32),
        serial: "09".repeat(16),
        not_after_ms: 99,
        revoked_at_ms: None,
    };
    let events = [
        event(AuditKind::ListenerRegister),
        event(AuditKind::CertificateIssue),
    ];
    assert!(
        store
            .write_audited(IdentityWrite::AddListener(&record), &events)
            .unwrap()
    );
    let twin = ListenerRecord {
        id: "l-10".into(),
        serial: "10".repeat(16),
        ..record
    };
    assert!(
        store
            .write_audited(
                IdentityWrite::AddListener(&twin),
                &[event(AuditKind::ListenerRegister)]
            )
            .is_err()
    );
    assert!(
        store.listener("l-10").unwrap().is_none(),
        "nothing half-written"
    );
    let revoke = IdentityWrite::RevokeListener {
        id: "l-9",
        at_ms: 5,
    };
    assert!(
        store
            .write_audited(revoke, &[event(AuditKind::ListenerRevoke)])
            .unwrap()
    );
    assert!(
        !store
            .write_audited(revoke, &[event(AuditKind::ListenerRevoke)])
            .unwrap()
    );
    assert_eq!(
        kinds(store),
        [
            "person.add",
            "listener.register",
            "certificate.issue",
            "listener.revoke"
        ]
    );
}

/// A hybrid connection created or removed by the identity plane: the row, its event and the
/// change feed, and a name the config owns is refused.
pub fn audited_namespace_writes(store: &dyn Store) {
    let mut feed = store.changes();
    let created = hc("audited/a");
    let create = IdentityWrite::CreateHybridConnection(&created);
    let made = event(AuditKind::HybridConnectionCreate);
    assert!(store.write_audited(create, &[made]).unwrap());
    assert!(store.hybrid_connection("AUDITED/a").is_some());
    assert_eq!(feed.try_recv().unwrap(), NamespaceChange::Created(created));
    let configured = hc("orders");
    let refused = IdentityWrite::CreateHybridConnection(&configured);
    assert!(matches!(
        store.write_audited(refused, &[event(AuditKind::HybridConnectionCreate)]),
        Err(StoreError::FromConfig(_))
    ));
    let remove = IdentityWrite::RemoveHybridConnection("audited/a");
    assert!(
        store
            .write_audited(remove, &[event(AuditKind::HybridConnectionRemove)])
            .unwrap()
    );
    assert!(
        !store
            .write_audited(remove, &[event(AuditKind::HybridConnectionRemove)])
            .unwrap()
    );
    assert!(store.hybrid_connection("audited/a").is_none());
    assert_eq!(
        kinds(store),
        ["hybrid_connection.create", "hybrid_connection.remove"]
    );
}
