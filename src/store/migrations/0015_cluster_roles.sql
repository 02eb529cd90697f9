-- owsync 0015: one login role per host cluster (`owsyncctl cluster add-role CLUSTER`).
-- Until now every host logged in as sync_service and row-level security keyed rows by
-- app.current_host_id, a setting the session chooses: one leaked password opened every
-- cluster. A cluster role is bound to its cluster by sync_metadata.cluster_roles, which
-- only the admin writes; its policies key rows by the cluster of the session's login role
-- (session_user: SET ROLE, set_config and SET app.current_host_id change nothing), its
-- mirrors are granted to its cluster's roles only, and the SECURITY DEFINER functions
-- take the caller's cluster from the same mapping. sync_service keeps its policies (on
-- app.current_host_id) so existing deployments go on working until they switch
-- (docs/security.md: the migration path ends with `ALTER ROLE sync_service NOLOGIN`).

-- The group every cluster role belongs to: it holds the grants on sync_metadata (the same
-- as sync_service's) and is the role the cluster policies apply to. Roles are server-wide.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'owsync_cluster') THEN
        CREATE ROLE owsync_cluster NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
    END IF;
END $$;

-- Which login role belongs to which cluster. Admin only: no grant to anyone.
CREATE TABLE sync_metadata.cluster_roles (
    role_name    text        PRIMARY KEY,
    cluster_name text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text        NOT NULL DEFAULT current_user
);
REVOKE ALL ON sync_metadata.cluster_roles FROM PUBLIC;

-- The cluster of the session's login role; NULL when it has none.
CREATE FUNCTION sync_metadata.session_cluster()
RETURNS text
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT r.cluster_name FROM sync_metadata.cluster_roles r WHERE r.role_name = session_user::text
$fn$;
REVOKE ALL ON FUNCTION sync_metadata.session_cluster() FROM PUBLIC;

-- The cluster a SECURITY DEFINER function acts for: a cluster role's own (never a
-- setting); NULL for a member of owsync_cluster without a mapping; for any other caller
-- (sync_service, an admin) app.current_host_id, as before.
CREATE FUNCTION sync_metadata.caller_cluster()
RETURNS text
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    c text;
BEGIN
    SELECT r.cluster_name INTO c FROM sync_metadata.cluster_roles r WHERE r.role_name = session_user::text;
    IF FOUND THEN
        RETURN c;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
               WHERE g.rolname = 'owsync_cluster' AND u.rolname = session_user) THEN
        RETURN NULL;
    END IF;
    RETURN current_setting('app.current_host_id', true);
END
$fn$;
REVOKE ALL ON FUNCTION sync_metadata.caller_cluster() FROM PUBLIC;

-- sync_metadata for cluster roles: what sync_service may do, on their own cluster's rows.
GRANT USAGE ON SCHEMA sync_metadata TO owsync_cluster;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA sync_metadata TO owsync_cluster;
GRANT SELECT ON sync_metadata.schema_migrations TO owsync_cluster;
GRANT SELECT ON sync_metadata.retired_clusters TO owsync_cluster;
GRANT EXECUTE ON FUNCTION sync_metadata.session_cluster() TO owsync_cluster;
GRANT EXECUTE ON FUNCTION sync_metadata.source_hash(jsonb) TO owsync_cluster;
GRANT EXECUTE ON FUNCTION sync_metadata.provision_table(text, text, jsonb, text[]) TO owsync_cluster;
GRANT EXECUTE ON FUNCTION sync_metadata.provision_conflict_tracking(text, text) TO owsync_cluster;
GRANT EXECUTE ON FUNCTION sync_metadata.expire_history(interval, integer) TO owsync_cluster;
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['hosts', 'leader_election', 'client_specs', 'client_status', 'state',
                             'sync_jobs', 'sync_requests', 'conflict_log', 'events', 'table_state',
                             'quarantine', 'inventories', 'deletion_guard']
    LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE ON sync_metadata.%I TO owsync_cluster', t);
        EXECUTE format(
            'CREATE POLICY cluster_role_isolation ON sync_metadata.%I FOR ALL TO owsync_cluster '
            'USING (cluster_name = (SELECT sync_metadata.session_cluster())) '
            'WITH CHECK (cluster_name = (SELECT sync_metadata.session_cluster()))', t);
    END LOOP;
END $$;
CREATE POLICY cluster_role_isolation ON sync_metadata.retired_clusters FOR SELECT TO owsync_cluster
    USING (cluster_name = (SELECT sync_metadata.session_cluster()));

-- A mirror schema is usable by its cluster's roles only: each role of p_cluster gets USAGE
-- on it and SELECT, INSERT, UPDATE on its tables (p_table, or all of them when NULL); a
-- role of another cluster (the tenant moved) loses everything on it. Checks before it
-- grants, so the steady state takes no lock and writes no catalog row. Admin only
-- (called by provision_table, the client_specs trigger below and `cluster add-role`).
CREATE FUNCTION sync_metadata.grant_mirror(p_schema text, p_cluster text, p_table text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    ns oid;
    r record;
    t record;
BEGIN
    IF p_schema IS NULL OR p_schema !~ '^client_[a-z0-9_]+$' THEN
        RETURN;
    END IF;
    SELECT n.oid INTO ns FROM pg_namespace n WHERE n.nspname = p_schema;
    IF ns IS NULL THEN
        RETURN;
    END IF;
    -- Privileges are asked of the joined pg_roles row's oid: a mapping whose role was
    -- dropped is skipped, never looked up by name.
    FOR r IN SELECT c.role_name, g.oid AS role_oid FROM sync_metadata.cluster_roles c JOIN pg_roles g ON g.rolname = c.role_name
             WHERE c.cluster_name IS DISTINCT FROM p_cluster AND has_schema_privilege(g.oid, ns, 'USAGE')
    LOOP
        EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %I', p_schema, r.role_name);
        EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I', p_schema, r.role_name);
    END LOOP;
    FOR r IN SELECT c.role_name, g.oid AS role_oid FROM sync_metadata.cluster_roles c JOIN pg_roles g ON g.rolname = c.role_name
             WHERE c.cluster_name = p_cluster
    LOOP
        IF NOT has_schema_privilege(r.role_oid, ns, 'USAGE') THEN
            EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', p_schema, r.role_name);
        END IF;
        FOR t IN SELECT k.oid, k.relname FROM pg_class k
                 WHERE k.relnamespace = ns AND k.relkind IN ('r', 'p') AND (p_table IS NULL OR k.relname = p_table)
        LOOP
            IF NOT (has_table_privilege(r.role_oid, t.oid, 'SELECT') AND has_table_privilege(r.role_oid, t.oid, 'INSERT')
                    AND has_table_privilege(r.role_oid, t.oid, 'UPDATE')) THEN
                EXECUTE format('GRANT SELECT, INSERT, UPDATE ON %I.%I TO %I', p_schema, t.relname, r.role_name);
            END IF;
        END LOOP;
    END LOOP;
END
$fn$;
REVOKE ALL ON FUNCTION sync_metadata.grant_mirror(text, text, text) FROM PUBLIC;

-- Every mirror of a cluster's ClientSyncs, for `cluster add-role`; returns how many schemas.
CREATE FUNCTION sync_metadata.grant_cluster_mirrors(p_cluster text)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s text;
    n integer := 0;
BEGIN
    FOR s IN SELECT DISTINCT c.spec #>> '{target,schema}' FROM sync_metadata.client_specs c
             WHERE c.cluster_name = p_cluster AND c.spec #>> '{target,schema}' IS NOT NULL
    LOOP
        IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = s) THEN
            PERFORM sync_metadata.grant_mirror(s, p_cluster, NULL);
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END
$fn$;
REVOKE ALL ON FUNCTION sync_metadata.grant_cluster_mirrors(text) FROM PUBLIC;

-- A spec that appears in, or moves to, a cluster takes its existing mirror's grants along
-- (`owsyncctl move`, a re-applied ClientSync); the old cluster's roles lose them.
CREATE FUNCTION sync_metadata.follow_mirror_grants() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF TG_OP = 'INSERT' OR OLD.cluster_name IS DISTINCT FROM NEW.cluster_name
       OR OLD.spec #>> '{target,schema}' IS DISTINCT FROM NEW.spec #>> '{target,schema}' THEN
        PERFORM sync_metadata.grant_mirror(NEW.spec #>> '{target,schema}', NEW.cluster_name, NULL);
    END IF;
    RETURN NULL;
END
$fn$;
REVOKE ALL ON FUNCTION sync_metadata.follow_mirror_grants() FROM PUBLIC;
CREATE TRIGGER follow_mirror_grants AFTER INSERT OR UPDATE ON sync_metadata.client_specs
    FOR EACH ROW EXECUTE FUNCTION sync_metadata.follow_mirror_grants();

-- provision_table as in 0009, but for the caller's cluster (caller_cluster: a cluster
-- role's own, never a setting it chooses), and granting what it creates to that cluster's
-- roles only; to sync_service as before only when sync_service (or an admin) calls it.
CREATE OR REPLACE FUNCTION sync_metadata.provision_table(p_schema text, p_table text, p_columns jsonb, p_key text[])
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    allowed constant text[] := ARRAY['bigint', 'double precision', 'text', 'bytea', 'boolean',
                                     'numeric', 'json', 'jsonb', 'timestamptz'];
    cluster text := sync_metadata.caller_cluster();
    shared boolean := NOT EXISTS (SELECT 1 FROM sync_metadata.cluster_roles r WHERE r.role_name = session_user::text);
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
        EXECUTE format('CREATE TABLE %I.%I (%s PRIMARY KEY (%s))', p_schema, p_table, defs,
                       (SELECT string_agg(format('%I', x), ', ') FROM unnest(p_key) x));
        IF shared THEN
            EXECUTE format('GRANT USAGE ON SCHEMA %I TO sync_service', p_schema);
            EXECUTE format('GRANT SELECT, INSERT, UPDATE ON %I.%I TO sync_service', p_schema, p_table);
        END IF;
        rel := to_regclass(format('%I.%I', p_schema, p_table));
        created := true;
    END IF;
    PERFORM sync_metadata.grant_mirror(p_schema, cluster, p_table);
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
    FOR col IN SELECT * FROM jsonb_array_elements(p_columns) LOOP
        IF (col->>'index')::boolean IS TRUE AND NOT EXISTS (
               SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
               WHERE i.indrelid = rel AND a.attname = col->>'name') THEN
            EXECUTE format('CREATE INDEX ON %I.%I (%I)', p_schema, p_table, col->>'name');
        END IF;
    END LOOP;
END
$fn$;

-- provision_conflict_tracking as in 0010, for the caller's cluster (caller_cluster).
CREATE OR REPLACE FUNCTION sync_metadata.provision_conflict_tracking(p_schema text, p_table text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    cluster text := sync_metadata.caller_cluster();
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
    EXECUTE format('SELECT coalesce((SELECT true FROM %I.%I WHERE _owsync_target_changed_at IS NOT NULL '
                   'ORDER BY _owsync_target_changed_at LIMIT 1), false)', p_schema, p_table) INTO stamped;
    RETURN stamped;
END
$fn$;

-- expire_history as in 0011, for the caller's cluster (caller_cluster).
CREATE OR REPLACE FUNCTION sync_metadata.expire_history(p_keep interval, p_limit integer)
RETURNS TABLE (jobs bigint, events bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    cluster text := sync_metadata.caller_cluster();
    n_jobs bigint;
    n_events bigint;
BEGIN
    IF cluster IS NULL OR cluster = '' THEN
        RAISE EXCEPTION 'owsync: app.current_host_id is not set (or this cluster role is bound to no cluster): history is expired per cluster'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF p_keep IS NULL OR p_keep < interval '1 hour' THEN
        RAISE EXCEPTION 'owsync: history retention % is under one hour', p_keep
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM sync_metadata.sync_jobs j
     WHERE j.id IN (SELECT x.id FROM sync_metadata.sync_jobs x
                     WHERE x.cluster_name = cluster AND x.started_at < now() - p_keep
                       AND x.status <> 'running'
                     ORDER BY x.started_at LIMIT greatest(p_limit, 1));
    GET DIAGNOSTICS n_jobs = ROW_COUNT;
    DELETE FROM sync_metadata.events e
     WHERE e.id IN (SELECT x.id FROM sync_metadata.events x
                     WHERE x.cluster_name = cluster AND x.created_at < now() - p_keep
                     ORDER BY x.created_at LIMIT greatest(p_limit, 1));
    GET DIAGNOSTICS n_events = ROW_COUNT;
    RETURN QUERY SELECT n_jobs, n_events;
END
$fn$;
