//! The shared store of a cluster: a PostgreSQL database (`[store].url`).
//!
//! The same records and rules as the SQLite file: versioned migrations at open (safe when
//! several nodes start at once, see `migrations`), a write and its audit events in one
//! transaction, an append-only audit table enforced by triggers, reads of the namespace
//! from an in-memory snapshot refreshed after each write. Every call is bounded in time
//! (`client`): a database that is down or hung makes calls fail with `Unavailable` (503 with
//! a tracking id at the API), and the store reconnects by itself when it is back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use relay_core::sas::SharedAccessKey;
use tokio_postgres::Row;

use super::{
    AuditEvent, AuditStore, CertificateRecord, EnrollmentToken, Grant, IdentityStore,
    IdentityWrite, ListenerRecord, Namespace, NamespaceChange, Person, Snapshot, SnapshotCell,
    StoreError,
};
use crate::config::HybridConnection;

mod client;
mod migrations;
#[cfg(any(test, feature = "test-util"))]
pub(crate) mod test_server;
mod writes;

use client::Db;
use migrations::MIGRATIONS;
use writes::*;

/// An arbitrary constant naming this schema's advisory lock.
const MIGRATION_LOCK: i64 = 0x7265_6c61_795f_6462; // "relay_db"

const LISTENER_COLUMNS: &str = "SELECT id, name, person, hybrid_connections, key_fingerprint, serial, not_after_ms, revoked_at_ms FROM listeners";

/// A store in a PostgreSQL database.
#[derive(Debug)]
pub struct PostgresStore {
    db: Arc<Db>,
    snapshot: Arc<SnapshotCell>,
    heartbeat: Arc<Heartbeat>,
}

/// When the database last answered the poller, as ms since the store opened (which counts
/// as an answer: opening needs one).
#[derive(Debug)]
struct Heartbeat {
    opened: Instant,
    heard_ms: AtomicU64,
}

impl Heartbeat {
    fn beat(&self) {
        let now = self.opened.elapsed().as_millis() as u64;
        self.heard_ms.store(now, Ordering::Relaxed);
    }

    /// How long the database has not answered.
    fn silent(&self) -> Duration {
        let heard = Duration::from_millis(self.heard_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(heard)
    }
}

/// How long without an answer from the database before the node is not ready: three
/// polls.
pub(crate) const UNREACHABLE_AFTER: Duration = Duration::from_millis(750);

/// How often a node looks for namespace changes made by the others.
pub(crate) const NAMESPACE_POLL: Duration = Duration::from_millis(250);

impl PostgresStore {
    /// Connects to the database `config` names, migrates it, and merges the configuration
    /// file's entities, which win over stored ones of the same name.
    pub fn open(
        config: tokio_postgres::Config,
        hcs: &[HybridConnection],
        rules: &[SharedAccessKey],
    ) -> Result<Self, StoreError> {
        let db = Arc::new(Db::new(config)?);
        db.run(async |c| migrate(c).await)?;
        let (version, stored) = db.run(async |c| stored_namespace(c).await)?;
        let mut snapshot = Snapshot::from_config(hcs, rules);
        snapshot.merge_stored(stored);
        let snapshot = Arc::new(SnapshotCell::new(snapshot));
        let heartbeat = Arc::new(Heartbeat {
            opened: Instant::now(),
            heard_ms: AtomicU64::new(0),
        });
        let poller = Poller {
            db: Arc::downgrade(&db),
            snapshot: Arc::downgrade(&snapshot),
            heartbeat: Arc::clone(&heartbeat),
        };
        poller.spawn(version)?;
        Ok(Self {
            db,
            snapshot,
            heartbeat,
        })
    }

    /// Runs SQL on the store's connection, for tests that tamper with the database.
    #[cfg(test)]
    pub(crate) fn execute(&self, sql: &str) -> Result<(), StoreError> {
        self.db.run(async |c| Ok(c.batch_execute(sql).await?))
    }

    /// Runs `f` in one transaction, committed when it returns `Ok`.
    fn write<T>(
        &self,
        f: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.db.run(async |c| {
            let tx = c.transaction().await?;
            let value = f(&tx).await?;
            tx.commit().await?;
            Ok(value)
        })
    }
}

/// The namespace's version and its run-time hybrid connections, read together.
async fn stored_namespace(
    c: &mut tokio_postgres::Client,
) -> Result<(i64, Vec<HybridConnection>), StoreError> {
    let tx = c
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let version: i64 = tx
        .query_one("SELECT version FROM namespace_version", &[])
        .await?
        .get(0);
    let rows = tx
        .query(
            "SELECT name::text, requires_client_authorization FROM hybrid_connections",
            &[],
        )
        .await?;
    tx.commit().await?;
    let hcs = rows
        .iter()
        .map(|r| HybridConnection {
            name: r.get(0),
            requires_client_authorization: r.get(1),
        })
        .collect();
    Ok((version, hcs))
}

/// Follows other nodes' namespace writes: every [`NAMESPACE_POLL`], one small query for the
/// version, and the list only when it moved; each answer also tells `reachable` the
/// database is there. Ends when the store is dropped.
struct Poller {
    db: Weak<Db>,
    snapshot: Weak<SnapshotCell>,
    heartbeat: Arc<Heartbeat>,
}

impl Poller {
    fn spawn(self, mut seen: i64) -> Result<(), StoreError> {
        let poll = move || {
            loop {
                std::thread::sleep(NAMESPACE_POLL);
                let (Some(db), Some(snapshot)) = (self.db.upgrade(), self.snapshot.upgrade())
                else {
                    return;
                };
                match self.poll(&db, &snapshot, seen) {
                    Ok(version) => {
                        seen = version;
                        self.heartbeat.beat();
                    }
                    Err(e) => tracing::debug!(error = %e, "polling the namespace failed"),
                }
            }
        };
        std::thread::Builder::new()
            .name("relay-namespace-poll".into())
            .spawn(poll)
            .map(drop)
            .map_err(|e| StoreError::Database(format!("starting the namespace poller: {e}")))
    }

    fn poll(&self, db: &Db, snapshot: &SnapshotCell, seen: i64) -> Result<i64, StoreError> {
        let version = db.run(async |c| {
            Ok(c.query_one("SELECT version FROM namespace_version", &[])
                .await?
                .get::<_, i64>(0))
        })?;
        if version == seen {
            return Ok(version);
        }
        let (version, stored) = db.run(async |c| stored_namespace(c).await)?;
        snapshot.reconcile(stored);
        Ok(version)
    }
}

/// Brings the schema to the latest version, under a lock that serialises nodes starting
/// at once.
async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS relay_schema_version (version INTEGER NOT NULL)")
        .await?;
    let current: Option<i32> = tx
        .query_one("SELECT MAX(version) FROM relay_schema_version", &[])
        .await?
        .get(0);
    let current = current.unwrap_or(0) as usize;
    if current > MIGRATIONS.len() {
        return Err(StoreError::Database(format!(
            "the database is at schema version {current}, newer than this broker's {}; upgrade the broker",
            MIGRATIONS.len()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO relay_schema_version (version) VALUES ($1)",
            &[&(index as i32 + 1)],
        )
        .await?;
        tracing::info!(version = index + 1, "store schema migrated");
    }
    tx.commit().await?;
    Ok(())
}

fn listener_row(r: &Row) -> ListenerRecord {
    ListenerRecord {
        id: r.get(0),
        name: r.get(1),
        person: r.get(2),
        hybrid_connections: r
            .get::<_, String>(3)
            .split('\n')
            .map(str::to_owned)
            .collect(),
        key_fingerprint: r.get(4),
        serial: r.get(5),
        not_after_ms: r.get::<_, i64>(6) as u64,
        revoked_at_ms: r.get::<_, Option<i64>>(7).map(|v| v as u64),
    }
}

async fn grants(c: &tokio_postgres::Client, person: &str) -> Result<Vec<Grant>, StoreError> {
    let rows = c
        .query(
            "SELECT right_name, pattern FROM person_rights WHERE person = $1 ORDER BY right_name, pattern",
            &[&person],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Grant {
            right: r.get(0),
            pattern: r.get(1),
        })
        .collect())
}

impl Namespace for PostgresStore {
    fn hybrid_connection(&self, name: &str) -> Option<HybridConnection> {
        self.snapshot.get(name)
    }

    fn hybrid_connections(&self) -> Vec<HybridConnection> {
        self.snapshot.sorted()
    }

    fn rules(&self) -> Arc<[SharedAccessKey]> {
        self.snapshot.rules()
    }

    fn create_hybrid_connection(&self, hc: HybridConnection) -> Result<(), StoreError> {
        self.snapshot.read().check_create(&hc)?;
        // Another node may have created it since: the insert itself refuses a duplicate.
        self.write(async |tx| create_hybrid_connection_on(tx, &hc).await)?;
        self.snapshot
            .follow(&IdentityWrite::CreateHybridConnection(&hc), true);
        Ok(())
    }

    fn remove_hybrid_connection(&self, name: &str) -> Result<bool, StoreError> {
        self.snapshot.check_remove(name)?;
        let removed = self.write(async |tx| remove_hybrid_connection_on(tx, name).await)?;
        self.snapshot
            .follow(&IdentityWrite::RemoveHybridConnection(name), removed);
        Ok(removed)
    }

    fn changes(&self) -> tokio::sync::broadcast::Receiver<NamespaceChange> {
        self.snapshot.changes()
    }

    fn reachable(&self) -> Result<(), StoreError> {
        let silent = self.heartbeat.silent();
        if silent > UNREACHABLE_AFTER {
            return Err(StoreError::Unavailable(format!(
                "PostgreSQL has not answered for {} ms",
                silent.as_millis()
            )));
        }
        Ok(())
    }
}

impl AuditStore for PostgresStore {
    fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.write(async |tx| append_audit_on(tx, event).await)
    }

    fn audit(&self, since_ms: u64, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        self.db.run(async |c| {
            let rows = c
                .query(
                    "SELECT at_ms, kind, subject, detail FROM audit_events WHERE at_ms >= $1 ORDER BY seq LIMIT $2",
                    &[&(since_ms as i64), &(limit as i64)],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| AuditEvent {
                    at_ms: r.get::<_, i64>(0) as u64,
                    kind: r.get(1),
                    subject: r.get(2),
                    detail: r.get(3),
                })
                .collect())
        })
    }
}

impl IdentityStore for PostgresStore {
    fn write_audited(
        &self,
        write: IdentityWrite<'_>,
        events: &[AuditEvent],
    ) -> Result<bool, StoreError> {
        match write {
            IdentityWrite::CreateHybridConnection(hc) => self.snapshot.read().check_create(hc)?,
            IdentityWrite::RemoveHybridConnection(name) => self.snapshot.check_remove(name)?,
            _ => {}
        }
        let changed = self.write(async |tx| {
            let changed = apply(tx, &write).await?;
            if changed {
                for event in events {
                    append_audit_on(tx, event).await?;
                }
            }
            Ok(changed)
        })?;
        self.snapshot.follow(&write, changed);
        Ok(changed)
    }

    fn add_person(&self, name: &str, password_hash: &str) -> Result<(), StoreError> {
        self.write(async |tx| add_person_on(tx, name, password_hash).await)
    }

    fn person(&self, name: &str) -> Result<Option<(Person, String)>, StoreError> {
        self.db.run(async |c| {
            let Some(row) = c
                .query_opt(
                    "SELECT name::text, disabled, password_hash FROM persons WHERE name = $1",
                    &[&name],
                )
                .await?
            else {
                return Ok(None);
            };
            let name: String = row.get(0);
            let rights = grants(c, &name).await?;
            Ok(Some((
                Person {
                    name,
                    disabled: row.get(1),
                    rights,
                },
                row.get(2),
            )))
        })
    }

    fn persons(&self) -> Result<Vec<Person>, StoreError> {
        self.db.run(async |c| {
            let rows = c
                .query(
                    "SELECT name::text, disabled FROM persons ORDER BY lower(name::text), name::text",
                    &[],
                )
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let name: String = row.get(0);
                let rights = grants(c, &name).await?;
                out.push(Person {
                    name,
                    disabled: row.get(1),
                    rights,
                });
            }
            Ok(out)
        })
    }

    fn set_person_disabled(&self, name: &str, disabled: bool) -> Result<bool, StoreError> {
        self.write(async |tx| set_person_disabled_on(tx, name, disabled).await)
    }

    fn grant(&self, name: &str, grant: &Grant) -> Result<bool, StoreError> {
        self.write(async |tx| grant_on(tx, name, grant).await)
    }

    fn revoke_grant(&self, name: &str, grant: &Grant) -> Result<bool, StoreError> {
        self.write(async |tx| revoke_grant_on(tx, name, grant).await)
    }

    fn add_enrollment_token(&self, token: &EnrollmentToken) -> Result<(), StoreError> {
        self.write(async |tx| add_enrollment_token_on(tx, token).await)
    }

    fn burn_enrollment_token(
        &self,
        hash: &str,
        now_ms: u64,
    ) -> Result<Option<EnrollmentToken>, StoreError> {
        // One statement marks it used and returns it, so two redeemers (on any nodes)
        // cannot both win: the second waits on the row lock and then finds it used.
        let row = self.db.run(async |c| {
            Ok(c.query_opt(
                "UPDATE enrollment_tokens SET used_at_ms = $2 WHERE hash = $1 AND used_at_ms IS NULL AND expires_at_ms > $2
                 RETURNING person, hybrid_connections, name, expires_at_ms",
                &[&hash, &(now_ms as i64)],
            )
            .await?)
        })?;
        Ok(row.map(|r| EnrollmentToken {
            hash: hash.into(),
            person: r.get(0),
            hybrid_connections: r
                .get::<_, String>(1)
                .split('\n')
                .map(str::to_owned)
                .collect(),
            name: r.get(2),
            expires_at_ms: r.get::<_, i64>(3) as u64,
        }))
    }

    fn add_listener(&self, l: &ListenerRecord) -> Result<(), StoreError> {
        self.write(async |tx| add_listener_on(tx, l).await)
    }

    fn listeners(&self) -> Result<Vec<ListenerRecord>, StoreError> {
        self.db.run(async |c| {
            let rows = c
                .query(
                    &format!("{LISTENER_COLUMNS} ORDER BY created_at_ms, id"),
                    &[],
                )
                .await?;
            Ok(rows.iter().map(listener_row).collect())
        })
    }

    fn listener(&self, id: &str) -> Result<Option<ListenerRecord>, StoreError> {
        self.db.run(async |c| {
            let row = c
                .query_opt(&format!("{LISTENER_COLUMNS} WHERE id = $1"), &[&id])
                .await?;
            Ok(row.as_ref().map(listener_row))
        })
    }

    fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError> {
        self.db.run(async |c| {
            let row = c
                .query_opt(
                    "SELECT serial, listener_id, key_fingerprint, not_after_ms FROM certificates WHERE serial = $1",
                    &[&serial],
                )
                .await?;
            Ok(row.map(|r| CertificateRecord {
                serial: r.get(0),
                listener_id: r.get(1),
                key_fingerprint: r.get(2),
                not_after_ms: r.get::<_, i64>(3) as u64,
            }))
        })
    }

    fn renew_listener(&self, cert: &CertificateRecord) -> Result<bool, StoreError> {
        self.write(async |tx| renew_listener_on(tx, cert).await)
    }

    fn revoke_listener(&self, id: &str, at_ms: u64) -> Result<bool, StoreError> {
        self.write(async |tx| revoke_listener_on(tx, id, at_ms).await)
    }

    fn add_person_token(&self, hash: &str, person: &str) -> Result<(), StoreError> {
        self.write(async |tx| add_person_token_on(tx, hash, person).await)
    }

    fn revocations_since(&self, after: Option<u64>) -> Result<(u64, Vec<String>), StoreError> {
        self.db.run(async |c| {
            let head: i64 = c
                .query_one("SELECT coalesce(max(seq), 0) FROM revocations", &[])
                .await?
                .get(0);
            let Some(after) = after else {
                return Ok((head as u64, Vec::new()));
            };
            let rows = c
                .query(
                    "SELECT listener_id FROM revocations WHERE seq > $1 AND seq <= $2 ORDER BY seq",
                    &[&(after as i64), &head],
                )
                .await?;
            Ok((head as u64, rows.iter().map(|r| r.get(0)).collect()))
        })
    }

    fn person_for_token(&self, hash: &str) -> Result<Option<String>, StoreError> {
        self.db.run(async |c| {
            let row = c
                .query_opt(
                    "SELECT person::text FROM person_tokens WHERE hash = $1",
                    &[&hash],
                )
                .await?;
            Ok(row.map(|r| r.get(0)))
        })
    }
}
