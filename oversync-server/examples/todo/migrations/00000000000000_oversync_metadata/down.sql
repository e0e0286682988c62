-- Removes all oversync state. Run the per-table trigger migrations' down.sql first.
-- status counts (appended in up.sql)
DROP INDEX IF EXISTS _sync_dirty_rows_count;
-- outbox integrity (appended in up.sql)
DROP TABLE IF EXISTS _sync_install_identity;
DROP INDEX IF EXISTS _sync_outbox_rows_key;
-- quarantine (appended last in up.sql)
DROP TABLE IF EXISTS _sync_quarantine;
DROP TABLE IF EXISTS _sync_snapshot_stage;
DROP TABLE IF EXISTS _sync_push_stage;
DROP TABLE IF EXISTS _sync_outbox_rows;
DROP TABLE IF EXISTS _sync_outbox_bundle;
DROP TABLE IF EXISTS _sync_operation_state;
DROP TABLE IF EXISTS _sync_attachment_state;
DROP TABLE IF EXISTS _sync_source_state;
DROP TABLE IF EXISTS _sync_apply_state;
DROP TABLE IF EXISTS _sync_row_state;
DROP TABLE IF EXISTS _sync_dirty_rows;
DROP TABLE IF EXISTS _sync_managed_tables;
