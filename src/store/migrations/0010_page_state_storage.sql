-- owsync 0010: table_state.pages is stored out of line and uncompressed (EXTERNAL).
-- A page state is mostly 128-bit hashes, which no compression shrinks: trying pglz on
-- every sync of a changed table only cost CPU. Applies to values written from now on.
ALTER TABLE sync_metadata.table_state ALTER COLUMN pages SET STORAGE EXTERNAL;
