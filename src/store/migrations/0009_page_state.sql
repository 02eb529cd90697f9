-- owsync 0009: page-level change capture (src/source/pages.rs), and provision_table's
-- refusal of deleted ClientSyncs.
-- table_state.pages holds a table's leaf pages as of its last sync (page number, hash,
-- rowid range; fixed-width records), written in the same transaction as the rows.
-- provision_table (0006's checks) also indexes columns marked "index": the source rowid,
-- which mirrors of tables with a declared key now keep too, so an incremental pass can
-- tombstone by range; and it refuses a schema whose ClientSync is deleted (deleted_at set
-- by `owsyncctl delete`) until it is applied again.
ALTER TABLE sync_metadata.table_state ADD COLUMN pages bytea;

CREATE OR REPLACE FUNCTION sync_metadata.provision_table(p_schema text, p_table text, p_columns jsonb, p_key text[])
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
    rel regclass;
    created boolean := false;
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
    -- A deleted ClientSync (deleted_at set by `owsyncctl delete`) no
    -- longer provisions tables; re-applying it clears deleted_at and allows it again.
    IF NOT EXISTS (SELECT 1 FROM sync_metadata.client_specs s
                   WHERE s.cluster_name = cluster AND s.spec #>> '{target,schema}' = p_schema
                     AND s.deleted_at IS NULL) THEN
        RAISE EXCEPTION 'owsync: the ClientSync of cluster % that targets schema % is deleted; re-apply it to sync again',
            cluster, p_schema
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
    rel := to_regclass(format('%I.%I', p_schema, p_table));
    IF rel IS NULL THEN
        EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', p_schema);
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO sync_service', p_schema);
        EXECUTE format('CREATE TABLE %I.%I (%s PRIMARY KEY (%s))', p_schema, p_table, defs,
                       (SELECT string_agg(format('%I', x), ', ') FROM unnest(p_key) x));
        EXECUTE format('GRANT SELECT, INSERT, UPDATE ON %I.%I TO sync_service', p_schema, p_table);
        rel := to_regclass(format('%I.%I', p_schema, p_table));
        created := true;
    END IF;
    -- Only a missing column is added: ALTER TABLE takes an ACCESS EXCLUSIVE lock (even with
    -- IF NOT EXISTS) that would block every reader of the mirror until the sync commits.
    IF NOT created THEN
        FOR col IN SELECT * FROM jsonb_array_elements(p_columns) LOOP
            IF NOT EXISTS (SELECT 1 FROM pg_attribute a
                           WHERE a.attrelid = rel AND a.attname = col->>'name' AND a.attnum > 0
                             AND NOT a.attisdropped) THEN
                EXECUTE format('ALTER TABLE %I.%I ADD COLUMN %I %s', p_schema, p_table, col->>'name', col->>'type');
            END IF;
        END LOOP;
    END IF;
    -- Columns marked "index": true (the rowid of a table with a declared key) get a plain
    -- index when they have none. CREATE INDEX takes a SHARE lock: mirror readers go on.
    FOR col IN SELECT * FROM jsonb_array_elements(p_columns) LOOP
        IF (col->>'index')::boolean IS TRUE AND NOT EXISTS (
               SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
               WHERE i.indrelid = rel AND a.attname = col->>'name') THEN
            EXECUTE format('CREATE INDEX ON %I.%I (%I)', p_schema, p_table, col->>'name');
        END IF;
    END LOOP;
END
$fn$;
