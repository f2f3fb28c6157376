//! The schema, as numbered migrations: each runs once, in its own transaction, in order.

/// Schema migrations; the index + 1 is the version. Never edit one that has shipped.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: run-time hybrid connections and the audit trail.
    "CREATE TABLE hybrid_connections (
        name TEXT PRIMARY KEY COLLATE NOCASE,
        requires_client_authorization INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE audit_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_events_at ON audit_events (at_ms);
    CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
    CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;",
    // 2: persons and their rights.
    "CREATE TABLE persons (
        name TEXT PRIMARY KEY COLLATE NOCASE,
        password_hash TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE person_rights (
        person TEXT NOT NULL COLLATE NOCASE REFERENCES persons (name) ON DELETE CASCADE,
        right_name TEXT NOT NULL,
        pattern TEXT NOT NULL,
        PRIMARY KEY (person, right_name, pattern)
    );",
    // 3: enrollment tokens (hashes only) and registered listeners.
    "CREATE TABLE enrollment_tokens (
        hash TEXT PRIMARY KEY,
        person TEXT NOT NULL,
        hybrid_connections TEXT NOT NULL,
        name TEXT,
        expires_at_ms INTEGER NOT NULL,
        used_at_ms INTEGER
    );
    CREATE TABLE listeners (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        person TEXT NOT NULL,
        hybrid_connections TEXT NOT NULL,
        key_fingerprint TEXT NOT NULL,
        serial TEXT NOT NULL,
        not_after_ms INTEGER NOT NULL,
        revoked_at_ms INTEGER,
        created_at_ms INTEGER NOT NULL
    );",
    // 4: every certificate issued (a key binds to one only), and personal API tokens.
    "CREATE TABLE certificates (
        serial TEXT PRIMARY KEY,
        listener_id TEXT NOT NULL REFERENCES listeners (id),
        key_fingerprint TEXT NOT NULL UNIQUE,
        not_after_ms INTEGER NOT NULL,
        issued_at_ms INTEGER NOT NULL
    );
    INSERT OR IGNORE INTO certificates
        SELECT serial, id, key_fingerprint, not_after_ms, created_at_ms FROM listeners;
    CREATE TABLE person_tokens (
        hash TEXT PRIMARY KEY,
        person TEXT NOT NULL COLLATE NOCASE REFERENCES persons (name) ON DELETE CASCADE,
        created_at_ms INTEGER NOT NULL
    );",
];
