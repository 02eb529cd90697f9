-- owsync 0002: the sync_service role's grants and row-level security.
-- sync_service may SELECT, INSERT and UPDATE; never DELETE, TRUNCATE, DROP or CREATE.
-- The role itself is created (and its password set) by `owsyncctl migrate` before this runs.

REVOKE ALL ON SCHEMA sync_metadata FROM PUBLIC;
GRANT USAGE ON SCHEMA sync_metadata TO sync_service;
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA sync_metadata TO sync_service;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA sync_metadata TO sync_service;
REVOKE ALL ON sync_metadata.schema_migrations FROM sync_service;
GRANT SELECT ON sync_metadata.schema_migrations TO sync_service;

-- The host's identity for RLS is its cluster name, set per transaction:
--   SELECT set_config('app.current_host_id', '<cluster>', true)
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['hosts', 'leader_election', 'client_specs', 'client_status', 'state',
                             'sync_jobs', 'sync_requests', 'conflict_log', 'events', 'table_state']
    LOOP
        EXECUTE format('ALTER TABLE sync_metadata.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY sync_host_isolation ON sync_metadata.%I FOR ALL TO sync_service '
            'USING (cluster_name = current_setting(''app.current_host_id'', true)) '
            'WITH CHECK (cluster_name = current_setting(''app.current_host_id'', true))', t);
    END LOOP;
END $$;

-- The one narrow path by which sync_service gets tenant tables: an admin-owned SECURITY
-- DEFINER function that only creates schemas named client_*, belonging to a ClientSync of
-- the caller's own cluster, with column types from a fixed list, and that only ever adds
-- (never drops or alters) columns.
CREATE FUNCTION sync_metadata.provision_table(p_schema text, p_table text, p_columns jsonb, p_key text[])
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    allowed constant text[] := ARRAY['bigint', 'double precision', 'text', 'bytea', 'boolean',
                                     'numeric', 'json', 'jsonb', 'timestamptz'];
    cluster text := current_setting('app.current_host_id', true);
    col jsonb;
    defs text := '';
    k text;
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
    IF length(p_table) = 0 OR length(p_table) > 63 OR jsonb_typeof(p_columns) <> 'array'
       OR jsonb_array_length(p_columns) = 0 OR coalesce(array_length(p_key, 1), 0) = 0 THEN
        RAISE EXCEPTION 'owsync: bad table definition for %.%', p_schema, p_table;
    END IF;
    FOR col IN SELECT * FROM jsonb_array_elements(p_columns) LOOP
        IF NOT (col->>'type' = ANY (allowed)) THEN
            RAISE EXCEPTION 'owsync: column type % is not allowed', col->>'type'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        defs := defs || format('%I %s, ', col->>'name', col->>'type');
    END LOOP;
    FOREACH k IN ARRAY p_key LOOP
        IF NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p_columns) c WHERE c->>'name' = k) THEN
            RAISE EXCEPTION 'owsync: key column % is not a column of %.%', k, p_schema, p_table;
        END IF;
    END LOOP;
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', p_schema);
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO sync_service', p_schema);
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I.%I (%s PRIMARY KEY (%s))', p_schema, p_table, defs,
                   (SELECT string_agg(format('%I', x), ', ') FROM unnest(p_key) x));
    FOR col IN SELECT * FROM jsonb_array_elements(p_columns) LOOP
        EXECUTE format('ALTER TABLE %I.%I ADD COLUMN IF NOT EXISTS %I %s', p_schema, p_table,
                       col->>'name', col->>'type');
    END LOOP;
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON %I.%I TO sync_service', p_schema, p_table);
END
$fn$;
REVOKE ALL ON FUNCTION sync_metadata.provision_table(text, text, jsonb, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sync_metadata.provision_table(text, text, jsonb, text[]) TO sync_service;
