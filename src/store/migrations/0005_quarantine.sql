-- owsync 0005: values PostgreSQL cannot hold in the mirror's column (NUL in text, invalid
-- UTF-8, invalid JSON, a storage class the column type cannot take) are kept here, raw,
-- with the reason; the mirror row holds NULL in that column (or is left out when the
-- value is part of its key). Never silently altered, never blocking the rest of a sync.
CREATE TABLE sync_metadata.quarantine (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cluster_name  text        NOT NULL,
    client_name   text        NOT NULL,
    table_name    text        NOT NULL,
    row_key       text        NOT NULL,
    column_name   text        NOT NULL,
    storage_class text        NOT NULL,
    reason        text        NOT NULL,
    raw           bytea,
    detected_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at   timestamptz,
    UNIQUE (cluster_name, client_name, table_name, row_key, column_name)
);
GRANT SELECT, INSERT, UPDATE ON sync_metadata.quarantine TO sync_service;
ALTER TABLE sync_metadata.quarantine ENABLE ROW LEVEL SECURITY;
CREATE POLICY sync_host_isolation ON sync_metadata.quarantine FOR ALL TO sync_service
    USING (cluster_name = current_setting('app.current_host_id', true))
    WITH CHECK (cluster_name = current_setting('app.current_host_id', true));
