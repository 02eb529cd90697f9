-- owsync 0008: GitOps inventories (`owsyncctl apply --prune`) and retired clusters
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

-- A deregistered cluster's name. While it is here, nothing may (re)create the cluster's
-- host, lease or spec rows: a replica of the cluster that is still running can neither
-- heartbeat nor take the lease, so it can never pass a fence again. Written and removed
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

CREATE TRIGGER refuse_retired_cluster BEFORE INSERT OR UPDATE ON sync_metadata.hosts
    FOR EACH ROW EXECUTE FUNCTION sync_metadata.refuse_retired_cluster();
CREATE TRIGGER refuse_retired_cluster BEFORE INSERT OR UPDATE ON sync_metadata.leader_election
    FOR EACH ROW EXECUTE FUNCTION sync_metadata.refuse_retired_cluster();
CREATE TRIGGER refuse_retired_cluster BEFORE INSERT OR UPDATE ON sync_metadata.client_specs
    FOR EACH ROW EXECUTE FUNCTION sync_metadata.refuse_retired_cluster();
