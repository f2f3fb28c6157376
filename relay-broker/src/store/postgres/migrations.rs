//! The PostgreSQL schema, as numbered migrations. All of them run in one transaction that
//! first takes a transaction-scoped advisory lock, so nodes starting together migrate once:
//! the first one in does the work, the others wait for its commit and find nothing to do.

/// Schema migrations; the index + 1 is the version. Never edit one that has shipped.
///
/// Names that SQLite compares with `COLLATE NOCASE` are `citext` here (a trusted extension
/// since PostgreSQL 13, so the database's owner may create it), which keeps the same
/// case-insensitive keys and foreign keys.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: run-time hybrid connections and the audit trail, append-only.
    "CREATE EXTENSION IF NOT EXISTS citext;
    CREATE TABLE hybrid_connections (
        name CITEXT PRIMARY KEY,
        requires_client_authorization BOOLEAN NOT NULL,
        created_at_ms BIGINT NOT NULL
    );
    CREATE TABLE audit_events (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_events_at ON audit_events (at_ms);
    CREATE FUNCTION relay_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$;
    CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
        FOR EACH ROW EXECUTE FUNCTION relay_audit_append_only();
    CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
        FOR EACH STATEMENT EXECUTE FUNCTION relay_audit_append_only();",
    // 2: persons and their rights.
    "CREATE TABLE persons (
        name CITEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        disabled BOOLEAN NOT NULL DEFAULT FALSE,
        created_at_ms BIGINT NOT NULL
    );
    CREATE TABLE person_rights (
        person CITEXT NOT NULL REFERENCES persons (name) ON DELETE CASCADE,
        right_name TEXT NOT NULL,
        pattern TEXT NOT NULL,
        PRIMARY KEY (person, right_name, pattern)
    );",
    // 3: enrollment tokens (hashes only), listeners, every certificate issued (a key binds
    // to one only), and personal API tokens.
    "CREATE TABLE enrollment_tokens (
        hash TEXT PRIMARY KEY,
        person TEXT NOT NULL,
        hybrid_connections TEXT NOT NULL,
        name TEXT,
        expires_at_ms BIGINT NOT NULL,
        used_at_ms BIGINT
    );
    CREATE TABLE listeners (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        person TEXT NOT NULL,
        hybrid_connections TEXT NOT NULL,
        key_fingerprint TEXT NOT NULL,
        serial TEXT NOT NULL,
        not_after_ms BIGINT NOT NULL,
        revoked_at_ms BIGINT,
        created_at_ms BIGINT NOT NULL
    );
    CREATE TABLE certificates (
        serial TEXT PRIMARY KEY,
        listener_id TEXT NOT NULL REFERENCES listeners (id),
        key_fingerprint TEXT NOT NULL UNIQUE,
        not_after_ms BIGINT NOT NULL,
        issued_at_ms BIGINT NOT NULL
    );
    CREATE TABLE person_tokens (
        hash TEXT PRIMARY KEY,
        person CITEXT NOT NULL REFERENCES persons (name) ON DELETE CASCADE,
        created_at_ms BIGINT NOT NULL
    );",
    // 4: a version every namespace write bumps in its transaction, which the other nodes
    // poll to follow hybrid connections created or removed elsewhere.
    "CREATE TABLE namespace_version (
        only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
        version BIGINT NOT NULL
    );
    INSERT INTO namespace_version (version) VALUES (0);",
    // 5: every revocation as a numbered row, written by triggers in the revoking
    // transaction (a listener revoked, a person disabled: each of their listeners), which
    // the nodes poll as the backstop of the broadcast.
    "CREATE TABLE revocations (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        listener_id TEXT NOT NULL,
        at_ms BIGINT NOT NULL
    );
    CREATE FUNCTION relay_listener_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO revocations (listener_id, at_ms) VALUES (NEW.id, NEW.revoked_at_ms);
            RETURN NULL;
        END $$;
    CREATE TRIGGER listeners_revoked AFTER UPDATE OF revoked_at_ms ON listeners
        FOR EACH ROW WHEN (OLD.revoked_at_ms IS NULL AND NEW.revoked_at_ms IS NOT NULL)
        EXECUTE FUNCTION relay_listener_revoked();
    CREATE FUNCTION relay_person_disabled() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO revocations (listener_id, at_ms)
                SELECT id, (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT
                FROM listeners WHERE lower(person) = lower(NEW.name);
            RETURN NULL;
        END $$;
    CREATE TRIGGER persons_disabled AFTER UPDATE OF disabled ON persons
        FOR EACH ROW WHEN (NOT OLD.disabled AND NEW.disabled)
        EXECUTE FUNCTION relay_person_disabled();",
];
