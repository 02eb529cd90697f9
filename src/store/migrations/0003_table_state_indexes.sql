-- owsync 0003: keep each source table's indexes and triggers (for restore).
ALTER TABLE sync_metadata.table_state ADD COLUMN source_indexes text[] NOT NULL DEFAULT '{}';
