-- owsync 0007: conflicts. A mirror row counts as changed in PostgreSQL when something other
-- than owsync wrote it: a trigger stamps such writes (owsync's own sync transactions set
-- `owsync.writer = on` and are left alone) and keeps the hash of the last version owsync
-- wrote, so a sync can tell "changed only here" (leave it) from "changed on both sides"
-- (apply the tenant's strategy, log it in conflict_log).
--
-- Kept apart from provision_table (a separate SECURITY DEFINER function called after it),
-- so this migration and the ones that replace provision_table do not touch each other.

ALTER TABLE sync_metadata.conflict_log
    ADD COLUMN resolved_by text,
    ADD COLUMN source_hash text;
CREATE INDEX conflict_log_pending ON sync_metadata.conflict_log (cluster_name, client_name, resolved_at, id);
-- At most one pending (manual) entry per row: a newer source version updates it.
CREATE UNIQUE INDEX conflict_log_one_pending ON sync_metadata.conflict_log (cluster_name, client_name, table_name, row_key)
    WHERE resolution = 'pending';

-- The hash of a mirror row's source values: every column but owsync's bookkeeping
-- (`_owsync_*`, except the rowid that keys tables without a primary key).
CREATE FUNCTION sync_metadata.source_hash(r jsonb)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT md5(coalesce(jsonb_object_agg(e.key, e.value), '{}'::jsonb)::text)
    FROM jsonb_each(r) e
    WHERE e.key !~ '^_owsync_' OR e.key = '_owsync_rowid'
$fn$;
GRANT EXECUTE ON FUNCTION sync_metadata.source_hash(jsonb) TO sync_service;

-- Stamps a write made by anyone but owsync. The first such write keeps the hash of the
-- version owsync wrote (OLD); later ones keep that hash; nobody can forge it.
CREATE FUNCTION sync_metadata.stamp_target_change()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF OLD._owsync_target_changed_at IS NULL THEN
            NEW._owsync_source_hash := sync_metadata.source_hash(to_jsonb(OLD));
        ELSE
            NEW._owsync_source_hash := OLD._owsync_source_hash;
        END IF;
    ELSE
        NEW._owsync_source_hash := NULL;
    END IF;
    NEW._owsync_target_changed_at := clock_timestamp();
    RETURN NEW;
END
$fn$;
REVOKE ALL ON FUNCTION sync_metadata.stamp_target_change() FROM PUBLIC;

-- Gives an existing mirror table the two bookkeeping columns, the trigger and a partial
-- index of the stamped rows; each only when missing (ALTER/CREATE take locks that would
-- block the mirror's readers). Same checks as provision_table: client_* schemas of a
-- ClientSync of the caller's cluster only. Returns whether any row is stamped (so a sync
-- looks for conflicts in one round trip per table, and only where there can be some).
CREATE FUNCTION sync_metadata.provision_conflict_tracking(p_schema text, p_table text)
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
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.%I WHERE _owsync_target_changed_at IS NOT NULL)',
                   p_schema, p_table) INTO stamped;
    RETURN stamped;
END
$fn$;
REVOKE ALL ON FUNCTION sync_metadata.provision_conflict_tracking(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sync_metadata.provision_conflict_tracking(text, text) TO sync_service;
