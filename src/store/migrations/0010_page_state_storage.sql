-- owsync 0010: incremental sync costs.
-- table_state.pages is stored out of line and uncompressed (EXTERNAL): a page state is
-- mostly hashes, which no compression shrinks, so trying pglz on every sync of a changed
-- table only cost CPU. Applies to values written from now on.
-- provision_conflict_tracking (0007) finds stamped rows through its partial index.
ALTER TABLE sync_metadata.table_state ALTER COLUMN pages SET STORAGE EXTERNAL;

-- provision_conflict_tracking as in 0007, but for the EXISTS over stamped rows.
CREATE OR REPLACE FUNCTION sync_metadata.provision_conflict_tracking(p_schema text, p_table text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    cluster text := current_setting('app.current_host_id', true);
    rel regclass;
    stamped boolean;
    idx text := left(p_table, 30) || '_' || left(md5(p_table), 8) || '_owsync_tc';
BEGIN
    IF p_schema !~ '^client_[a-z0-9_]+$' OR length(p_schema) > 63 THEN
        RAISE EXCEPTION 'owsync: % is not a tenant schema (client_[a-z0-9_]+)', p_schema
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM sync_metadata.client_specs s
                   WHERE s.cluster_name = cluster AND s.spec #>> '{target,schema}' = p_schema) THEN
        RAISE EXCEPTION 'owsync: no ClientSync of cluster % targets schema %', cluster, p_schema
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    rel := to_regclass(format('%I.%I', p_schema, p_table));
    IF rel IS NULL THEN
        RAISE EXCEPTION 'owsync: %.% is not provisioned yet (call provision_table first)', p_schema, p_table;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = '_owsync_target_changed_at'
                   AND a.attnum > 0 AND NOT a.attisdropped) THEN
        EXECUTE format('ALTER TABLE %I.%I ADD COLUMN _owsync_target_changed_at timestamptz', p_schema, p_table);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = '_owsync_source_hash'
                   AND a.attnum > 0 AND NOT a.attisdropped) THEN
        EXECUTE format('ALTER TABLE %I.%I ADD COLUMN _owsync_source_hash text', p_schema, p_table);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = rel AND t.tgname = 'owsync_stamp_target_change') THEN
        EXECUTE format('CREATE TRIGGER owsync_stamp_target_change BEFORE INSERT OR UPDATE ON %I.%I FOR EACH ROW '
                       'WHEN (current_setting(''owsync.writer'', true) IS DISTINCT FROM ''on'') '
                       'EXECUTE FUNCTION sync_metadata.stamp_target_change()', p_schema, p_table);
    END IF;
    IF to_regclass(format('%I.%I', p_schema, idx)) IS NULL THEN
        EXECUTE format('CREATE INDEX %I ON %I.%I (_owsync_target_changed_at) '
                       'WHERE _owsync_target_changed_at IS NOT NULL', idx, p_schema, p_table);
    END IF;
    -- A scalar subquery with ORDER BY ... LIMIT 1 makes the partial index the plan:
    -- without statistics on the column the planner expects nearly every row stamped and
    -- seq-scanned the whole mirror table for an EXISTS (which drops ORDER BY and LIMIT):
    -- 72 ms for a 63k-row chat_message, on every sync.
    EXECUTE format('SELECT coalesce((SELECT true FROM %I.%I WHERE _owsync_target_changed_at IS NOT NULL '
                   'ORDER BY _owsync_target_changed_at LIMIT 1), false)', p_schema, p_table) INTO stamped;
    RETURN stamped;
END
$fn$;
REVOKE ALL ON FUNCTION sync_metadata.provision_conflict_tracking(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sync_metadata.provision_conflict_tracking(text, text) TO sync_service;
