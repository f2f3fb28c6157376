//! The conformance battery ([`super::conformance`]) on every store, one test per concern
//! (PostgreSQL on a throwaway server of its own), plus durability and schema tests.

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
        mod postgres {
            $(#[test]
            fn $concern() {
                let server = super::TestPostgres::shared();
                let config = server.fresh_database(concat!("conformance_", stringify!($concern)));
                let store = super::PostgresStore::open(config, &super::config_hcs(), &super::config_rules()).unwrap();
                super::conformance::$concern(&store);
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

fn postgres(config: &tokio_postgres::Config) -> PostgresStore {
    PostgresStore::open(config.clone(), &config_hcs(), &config_rules()).unwrap()
}

#[test]
fn postgres_migrates_once_when_three_nodes_start_at_once() {
    let config = TestPostgres::shared().fresh_database("three_nodes");
    let stores: Vec<Result<PostgresStore, StoreError>> = std::thread::scope(|s| {
        let opening: Vec<_> = (0..3)
            .map(|_| s.spawn(|| PostgresStore::open(config.clone(), &[], &[])))
            .collect();
        opening.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for store in &stores {
        assert!(store.is_ok(), "{:?}", store.as_ref().err());
    }
    let store = stores.into_iter().next().unwrap().unwrap();
    // Exactly one row per migration: nobody ran one twice.
    store
        .execute(
            "DO $$ BEGIN IF (SELECT count(*) FROM relay_schema_version) <> (SELECT count(DISTINCT version) FROM relay_schema_version) THEN RAISE EXCEPTION 'a migration ran twice'; END IF; END $$",
        )
        .unwrap();
}

#[test]
fn postgres_audit_is_append_only_and_newer_schemas_are_refused() {
    let config = TestPostgres::shared().fresh_database("append_only");
    let store = postgres(&config);
    store
        .append_audit(&AuditEvent::now(AuditKind::PersonAdd, "s", "d"))
        .unwrap();
    assert!(store.execute("DELETE FROM audit_events").is_err());
    assert!(
        store
            .execute("UPDATE audit_events SET detail = 'x'")
            .is_err()
    );
    assert!(store.execute("TRUNCATE audit_events").is_err());
    assert_eq!(store.audit(0, 10).unwrap().len(), 1);
    store
        .execute("INSERT INTO relay_schema_version (version) VALUES (99)")
        .unwrap();
    drop(store);
    let err = PostgresStore::open(config, &[], &[]).unwrap_err();
    assert!(err.to_string().contains("newer than this broker"), "{err}");
}

#[test]
fn postgres_nodes_follow_each_others_writes_within_a_second() {
    let config = TestPostgres::shared().fresh_database("two_nodes");
    let (a, b) = (postgres(&config), postgres(&config));
    let mut feed = b.changes();
    a.create_hybrid_connection(hc("made-on-a")).unwrap();
    let started = std::time::Instant::now();
    let change = loop {
        match feed.try_recv() {
            Ok(change) => break change,
            Err(_) if started.elapsed() < std::time::Duration::from_secs(1) => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("node B did not see the creation within 1 s: {e:?}"),
        }
    };
    assert_eq!(change, NamespaceChange::Created(hc("made-on-a")));
    assert!(b.hybrid_connection("MADE-ON-A").is_some());
    // B cannot create it again, and removes it; A follows.
    assert!(matches!(
        b.create_hybrid_connection(hc("made-on-a")),
        Err(StoreError::Conflict(_))
    ));
    let mut feed_a = a.changes();
    assert!(b.remove_hybrid_connection("made-on-a").unwrap());
    let started = std::time::Instant::now();
    while a.hybrid_connection("made-on-a").is_some() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "node A did not see the removal within 1 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        feed_a.try_recv().unwrap(),
        NamespaceChange::Removed("made-on-a".into())
    );
    assert!(feed_a.try_recv().is_err(), "each change is told once");
    // Identity records are read from the database: a person disabled on A is disabled on B.
    a.add_person("alice", "$argon2id$x").unwrap();
    assert!(a.set_person_disabled("alice", true).unwrap());
    assert!(b.person("ALICE").unwrap().unwrap().0.disabled);
}

#[test]
fn postgres_unreachable_is_unavailable_not_a_hang() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user("relay")
        .dbname("relay");
    let started = std::time::Instant::now();
    let err = PostgresStore::open(config, &[], &[]).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(6));
}
