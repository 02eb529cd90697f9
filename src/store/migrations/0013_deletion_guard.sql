-- owsync 0013: the deletion guard (sync/guard.rs). One row per tenant:
--  * anchors: keys of a few rows per table sampled at the last complete sync, so that a
--    source that shares none of them is recognised as another database (a volume not
--    mounted, a fresh Open WebUI database at the tenant's path);
--  * held: what the last sync refused to apply (reason, tables, counts), while it holds;
--  * approved: an operator's approval of exactly those deletions (`owsyncctl deletions
--    approve`), consumed by the sync that applies them.
-- sync_service reads and writes its own cluster's rows (RLS, as every sync_metadata table).
CREATE TABLE sync_metadata.deletion_guard (
    cluster_name  text        NOT NULL,
    client_name   text        NOT NULL,
    anchors       jsonb,
    anchors_at    timestamptz,
    held          jsonb,
    held_at       timestamptz,
    approved      jsonb,
    approved_by   text,
    approved_at   timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_name, client_name)
);
GRANT SELECT, INSERT, UPDATE ON sync_metadata.deletion_guard TO sync_service;
ALTER TABLE sync_metadata.deletion_guard ENABLE ROW LEVEL SECURITY;
CREATE POLICY sync_host_isolation ON sync_metadata.deletion_guard FOR ALL TO sync_service
    USING (cluster_name = current_setting('app.current_host_id', true))
    WITH CHECK (cluster_name = current_setting('app.current_host_id', true));
