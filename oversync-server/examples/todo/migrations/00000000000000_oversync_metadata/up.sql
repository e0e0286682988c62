-- oversync metadata schema (local sync state). Table names and roles follow the protocol
-- README so tools written for the reference clients can read an oversync-diesel database.

CREATE TABLE IF NOT EXISTS _sync_managed_tables (
    schema_name TEXT NOT NULL,
    table_name  TEXT NOT NULL,
    PRIMARY KEY (schema_name, table_name)
);

-- One coalesced pending change per key, written by the capture triggers on every app write,
-- so it is kept cheap: dirty_ordinal aliases the rowid (a new entry gets max + 1 without
-- scanning the dirty set, and an upsert on the key keeps the first-touch order), and the op
-- CHECK is an OR chain because SQLite builds a temporary b-tree for an IN list on each insert.
CREATE TABLE IF NOT EXISTS _sync_dirty_rows (
    dirty_ordinal    INTEGER PRIMARY KEY,
    schema_name      TEXT NOT NULL,
    table_name       TEXT NOT NULL,
    key_json         TEXT NOT NULL,
    op               TEXT NOT NULL CHECK (op = 'INSERT' OR op = 'UPDATE' OR op = 'DELETE'),
    base_row_version INTEGER NOT NULL DEFAULT 0,
    payload          TEXT,
    UNIQUE (schema_name, table_name, key_json)
);

-- Authoritative row_version and tombstone per key, as last seen from the server.
CREATE TABLE IF NOT EXISTS _sync_row_state (
    schema_name TEXT NOT NULL,
    table_name  TEXT NOT NULL,
    key_json    TEXT NOT NULL,
    row_version INTEGER NOT NULL DEFAULT 0,
    deleted     INTEGER NOT NULL DEFAULT 0,
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (schema_name, table_name, key_json)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS _sync_apply_state (
    singleton_key INTEGER NOT NULL PRIMARY KEY CHECK (singleton_key = 1),
    apply_mode    INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS _sync_source_state (
    source_id             TEXT NOT NULL PRIMARY KEY,
    next_source_bundle_id INTEGER NOT NULL DEFAULT 1,
    replaced_by_source_id TEXT NOT NULL DEFAULT '',
    created_at            TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE IF NOT EXISTS _sync_attachment_state (
    singleton_key             INTEGER NOT NULL PRIMARY KEY CHECK (singleton_key = 1),
    current_source_id         TEXT NOT NULL DEFAULT '',
    binding_state             TEXT NOT NULL DEFAULT 'anonymous' CHECK (binding_state IN ('anonymous', 'attached')),
    attached_user_id          TEXT NOT NULL DEFAULT '',
    schema_name               TEXT NOT NULL DEFAULT '',
    last_bundle_seq_seen      INTEGER NOT NULL DEFAULT 0,
    rebuild_required          INTEGER NOT NULL DEFAULT 0,
    pending_initialization_id TEXT NOT NULL DEFAULT ''
);

CREATE TABLE IF NOT EXISTS _sync_operation_state (
    singleton_key         INTEGER NOT NULL PRIMARY KEY CHECK (singleton_key = 1),
    kind                  TEXT NOT NULL DEFAULT 'none' CHECK (kind IN ('none', 'remote_replace', 'source_recovery')),
    target_user_id        TEXT NOT NULL DEFAULT '',
    reason                TEXT NOT NULL DEFAULT '',
    replacement_source_id TEXT NOT NULL DEFAULT '',
    staged_snapshot_id    TEXT NOT NULL DEFAULT '',
    snapshot_bundle_seq   INTEGER NOT NULL DEFAULT 0,
    snapshot_row_count    INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS _sync_outbox_bundle (
    singleton_key          INTEGER NOT NULL PRIMARY KEY CHECK (singleton_key = 1),
    state                  TEXT NOT NULL DEFAULT 'none' CHECK (state IN ('none', 'prepared', 'committed_remote')),
    source_id              TEXT NOT NULL DEFAULT '',
    source_bundle_id       INTEGER NOT NULL DEFAULT 0,
    canonical_request_hash TEXT NOT NULL DEFAULT '',
    row_count              INTEGER NOT NULL DEFAULT 0,
    initialization_id      TEXT NOT NULL DEFAULT '',
    remote_bundle_hash     TEXT NOT NULL DEFAULT '',
    remote_bundle_seq      INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS _sync_outbox_rows (
    source_bundle_id INTEGER NOT NULL,
    row_ordinal      INTEGER NOT NULL,
    schema_name      TEXT NOT NULL,
    table_name       TEXT NOT NULL,
    key_json         TEXT NOT NULL,
    wire_key_json    TEXT NOT NULL,
    op               TEXT NOT NULL CHECK (op = 'INSERT' OR op = 'UPDATE' OR op = 'DELETE'),
    base_row_version INTEGER NOT NULL DEFAULT 0,
    local_payload    TEXT,
    wire_payload     TEXT,
    PRIMARY KEY (source_bundle_id, row_ordinal)
);

CREATE TABLE IF NOT EXISTS _sync_push_stage (
    bundle_seq  INTEGER NOT NULL,
    row_ordinal INTEGER NOT NULL,
    schema_name TEXT NOT NULL,
    table_name  TEXT NOT NULL,
    key_json    TEXT NOT NULL,
    op          TEXT NOT NULL CHECK (op = 'INSERT' OR op = 'UPDATE' OR op = 'DELETE'),
    row_version INTEGER NOT NULL,
    payload     TEXT,
    PRIMARY KEY (bundle_seq, row_ordinal)
);

CREATE TABLE IF NOT EXISTS _sync_snapshot_stage (
    snapshot_id TEXT NOT NULL,
    row_ordinal INTEGER NOT NULL,
    schema_name TEXT NOT NULL,
    table_name  TEXT NOT NULL,
    key_json    TEXT NOT NULL,
    row_version INTEGER NOT NULL,
    payload     TEXT NOT NULL,
    PRIMARY KEY (snapshot_id, row_ordinal)
);
-- A snapshot holds each key once; a repeated key is a broken snapshot, not a row to drop.
CREATE UNIQUE INDEX IF NOT EXISTS _sync_snapshot_stage_key
    ON _sync_snapshot_stage(snapshot_id, schema_name, table_name, key_json);

INSERT INTO _sync_apply_state (singleton_key, apply_mode) VALUES (1, 0)
    ON CONFLICT (singleton_key) DO NOTHING;
INSERT INTO _sync_attachment_state (singleton_key) VALUES (1)
    ON CONFLICT (singleton_key) DO NOTHING;
INSERT INTO _sync_operation_state (singleton_key) VALUES (1)
    ON CONFLICT (singleton_key) DO NOTHING;
INSERT INTO _sync_outbox_bundle (singleton_key) VALUES (1)
    ON CONFLICT (singleton_key) DO NOTHING;

-- ---- outbox integrity (appended) ----
-- Capture looks up whether a deleted key is still in the frozen outbox (its push may have
-- committed, so the delete must be pushed): a seek on (table_name, key_json), not a scan.
CREATE INDEX IF NOT EXISTS _sync_outbox_rows_key ON _sync_outbox_rows(table_name, key_json);

-- Which database file the source id belongs to. `open()` compares it with the file it runs
-- on: a copy (backup restore, cloned device) gets a fresh source id before it pushes, so two
-- copies never share a source sequence. `file_identity` is device and inode where available.
CREATE TABLE IF NOT EXISTS _sync_install_identity (
    singleton_key INTEGER NOT NULL PRIMARY KEY CHECK (singleton_key = 1),
    database_path TEXT NOT NULL DEFAULT '',
    file_identity TEXT NOT NULL DEFAULT ''
);
INSERT INTO _sync_install_identity (singleton_key) VALUES (1)
    ON CONFLICT (singleton_key) DO NOTHING;

-- ---- quarantine (appended) ----
-- Quarantine: local changes the server refused for their data (a constraint or type
-- SQLite lacks, a payload over the size limit, a missing parent), set aside so the rest of
-- the user's changes keep syncing. One entry per key; the app retries or discards it.
CREATE TABLE IF NOT EXISTS _sync_quarantine (
    quarantine_id    INTEGER PRIMARY KEY,
    schema_name      TEXT NOT NULL,
    table_name       TEXT NOT NULL,
    key_json         TEXT NOT NULL,
    op               TEXT NOT NULL CHECK (op = 'INSERT' OR op = 'UPDATE' OR op = 'DELETE'),
    base_row_version INTEGER NOT NULL DEFAULT 0,
    payload          TEXT,
    http_status      INTEGER NOT NULL,
    error_code       TEXT NOT NULL,
    error_message    TEXT NOT NULL,
    quarantined_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (schema_name, table_name, key_json)
);

-- ---- status counts (appended) ----
-- `pending_sync_status()` counts the dirty set beside a running sync, on a connection whose
-- page cache every commit of the engine invalidates. COUNT(*) walks the table's smallest
-- b-tree: this one holds about 10 bytes a row, a sixth of the key index it used before.
CREATE INDEX IF NOT EXISTS _sync_dirty_rows_count ON _sync_dirty_rows(dirty_ordinal);
