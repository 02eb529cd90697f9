-- owsync 0009: GitOps inventories (`owsyncctl apply --prune`) and retired clusters
-- (`owsyncctl cluster deregister`).

-- Which inventory (ApplySet-style id) last applied each spec; NULL: applied without one
-- (before this version), never pruned.
ALTER TABLE sync_metadata.client_specs ADD COLUMN applied_by_inventory text;

-- One row per (cluster, inventory id): the names its last apply left owned by it.
CREATE TABLE sync_metadata.inventories (
    cluster_name text        NOT NULL,
    id           text        NOT NULL,
    members      text[]      NOT NULL DEFAULT '{}',
    applied_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_name, id)
);
GRANT SELECT, INSERT, UPDATE ON sync_metadata.inventories TO sync_service;
ALTER TABLE sync_metadata.inventories ENABLE ROW LEVEL SECURITY;
CREATE POLICY sync_host_isolation ON sync_metadata.inventories FOR ALL TO sync_service
    USING (cluster_name = current_setting('app.current_host_id', true))
    WITH CHECK (cluster_name = current_setting('app.current_host_id', true));

-- A deregistered cluster's name. While it is here, no row of the cluster may be written:
-- a replica of the cluster that is still running can neither heartbeat nor take the
-- lease (so it can never pass a fence again), nor leave a late job or event row. Written and removed
-- by admin commands only (`cluster deregister` / `cluster reinstate`).
CREATE TABLE sync_metadata.retired_clusters (
    cluster_name text        PRIMARY KEY,
    final_epoch  bigint,
    retired_at   timestamptz NOT NULL DEFAULT now(),
    retired_by   text        NOT NULL DEFAULT current_user
);
GRANT SELECT ON sync_metadata.retired_clusters TO sync_service;
ALTER TABLE sync_metadata.retired_clusters ENABLE ROW LEVEL SECURITY;
CREATE POLICY sync_host_isolation ON sync_metadata.retired_clusters FOR SELECT TO sync_service
    USING (cluster_name = current_setting('app.current_host_id', true));

CREATE FUNCTION sync_metadata.refuse_retired_cluster() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF EXISTS (SELECT 1 FROM sync_metadata.retired_clusters r WHERE r.cluster_name = NEW.cluster_name) THEN
        RAISE EXCEPTION 'owsync: cluster % was deregistered; stop its owsyncd replicas (or, to deploy a new cluster under this name, run `owsyncctl cluster reinstate %` as admin)',
            NEW.cluster_name, NEW.cluster_name
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$fn$;
REVOKE ALL ON FUNCTION sync_metadata.refuse_retired_cluster() FROM PUBLIC;

-- On every table keyed by cluster (those of earlier migrations, found in the catalog; a
-- later migration that adds such a table adds the trigger too): no row of a retired
-- cluster can be written, not even a late event or job row of a replica still running.
DO $$
DECLARE t text;
BEGIN
    FOR t IN SELECT c.table_name FROM information_schema.columns c
             JOIN information_schema.tables i ON i.table_schema = c.table_schema AND i.table_name = c.table_name
             WHERE c.table_schema = 'sync_metadata' AND c.column_name = 'cluster_name'
               AND i.table_type = 'BASE TABLE' AND c.table_name <> 'retired_clusters'
    LOOP
        EXECUTE format('CREATE TRIGGER refuse_retired_cluster BEFORE INSERT OR UPDATE ON sync_metadata.%I '
                       'FOR EACH ROW EXECUTE FUNCTION sync_metadata.refuse_retired_cluster()', t);
    END LOOP;
END $$;
