-- owsync 0012: page states recorded as what changed (src/source/pages/delta.rs).
-- table_state.pages_delta holds, when set, the leaves that changed since the state in
-- `pages` was written (against that exact state, which it names by hash), so that a sync of
-- a few changed rows writes kilobytes instead of the whole table's state. Hashes: stored
-- out of line and uncompressed, like `pages` (0010).
ALTER TABLE sync_metadata.table_state ADD COLUMN pages_delta bytea;
ALTER TABLE sync_metadata.table_state ALTER COLUMN pages_delta SET STORAGE EXTERNAL;
