-- History retention. sync_jobs gets a row per sync run (an unchanged cycle included) and
-- events one per transition: at 1,000 tenants syncing every 10 s that is millions of rows
-- a day. sync_service has no DELETE (a replica must not be able to erase history or
-- state wholesale), so expiry goes through this narrow SECURITY DEFINER function:
-- only the calling cluster's rows (app.current_host_id, as RLS), only finished runs and
-- events older than p_keep, never a retention under one hour, at most p_limit rows of
-- each per call (the caller loops, so no long lock is ever held).
CREATE INDEX sync_jobs_age ON sync_metadata.sync_jobs (cluster_name, started_at);
CREATE INDEX events_age ON sync_metadata.events (cluster_name, created_at);

CREATE FUNCTION sync_metadata.expire_history(p_keep interval, p_limit integer)
RETURNS TABLE (jobs bigint, events bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    cluster text := current_setting('app.current_host_id', true);
    n_jobs bigint;
    n_events bigint;
BEGIN
    IF cluster IS NULL OR cluster = '' THEN
        RAISE EXCEPTION 'owsync: app.current_host_id is not set: history is expired per cluster'
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
REVOKE ALL ON FUNCTION sync_metadata.expire_history(interval, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sync_metadata.expire_history(interval, integer) TO sync_service;
