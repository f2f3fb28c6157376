//! The conformance battery ([`super::conformance`]) on both stores, one test per concern,
//! plus SQLite durability tests.

use std::path::PathBuf;

use super::AuditKind;
use super::conformance::{self, config_hcs, config_rules};
use super::*;

fn hc(name: &str) -> HybridConnection {
    HybridConnection {
        name: name.into(),
        requires_client_authorization: false,
    }
}

/// One test per concern and store.
macro_rules! conformance {
    ($($concern:ident),* $(,)?) => {
        mod memory {
            $(#[test]
            fn $concern() {
                super::conformance::$concern(&super::MemoryStore::new(&super::config_hcs(), &super::config_rules()));
            })*
        }
        mod sqlite {
            $(#[test]
            fn $concern() {
                let path = super::temp_db(concat!("conformance-", stringify!($concern)));
                let store = super::SqliteStore::open(&path, &super::config_hcs(), &super::config_rules()).unwrap();
                super::conformance::$concern(&store);
                let _ = std::fs::remove_dir_all(path.parent().unwrap());
            })*
        }
    };
}

conformance!(
    hybrid_connections,
    change_feed,
    audit_trail,
    persons_and_grants,
    enrollment_tokens,
    listeners_and_certificates,
    person_tokens,
    audited_person_writes,
    audited_listener_writes,
    audited_namespace_writes,
);

#[test]
fn the_concern_list_names_every_test() {
    assert_eq!(conformance::CONCERNS.len(), 10);
}

fn temp_db(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("relay.db")
}

#[test]
fn sqlite_keeps_everything_acknowledged_across_reopen() {
    let path = temp_db("reopen");
    {
        let store = SqliteStore::open(&path, &config_hcs(), &config_rules()).unwrap();
        store.create_hybrid_connection(hc("edge/a")).unwrap();
        store.create_hybrid_connection(hc("shadowed")).unwrap();
        store
            .append_audit(&AuditEvent::now(
                AuditKind::ListenerConnect,
                "edge/a",
                "t-1",
            ))
            .unwrap();
        // Dropped without any shutdown, as after a kill.
    }
    let config = vec![
        config_hcs()[0].clone(),
        HybridConnection {
            name: "SHADOWED".into(),
            requires_client_authorization: true,
        },
    ];
    let store = SqliteStore::open(&path, &config, &config_rules()).unwrap();
    assert!(store.hybrid_connection("edge/a").is_some());
    // The configuration file wins over a stored entity of the same name.
    assert!(
        store
            .hybrid_connection("shadowed")
            .unwrap()
            .requires_client_authorization
    );
    assert_eq!(store.audit(0, 10).unwrap()[0].detail, "t-1");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn sqlite_audit_is_append_only_and_newer_schemas_are_refused() {
    let path = temp_db("append-only");
    let store = SqliteStore::open(&path, &[], &[]).unwrap();
    store
        .append_audit(&AuditEvent::now(AuditKind::PersonAdd, "s", "d"))
        .unwrap();
    let conn = store.conn();
    assert!(conn.execute("DELETE FROM audit_events", []).is_err());
    assert!(
        conn.execute("UPDATE audit_events SET detail = 'x'", [])
            .is_err()
    );
    conn.execute("INSERT INTO schema_version (version) VALUES (99)", [])
        .unwrap();
    drop(conn);
    drop(store);
    let err = SqliteStore::open(&path, &[], &[]).unwrap_err();
    assert!(err.to_string().contains("newer than this broker"), "{err}");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
