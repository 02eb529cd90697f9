-- owsync 0001: the sync_metadata schema (DESIGN.md section 5).
-- Every table carries cluster_name: row-level security keys sync_service's view on it.

CREATE TABLE sync_metadata.hosts (
    cluster_name   text        NOT NULL,
    node_id        text        NOT NULL,
    hostname       text,
    version        text,
    status         text        NOT NULL DEFAULT 'active',
    is_leader      boolean     NOT NULL DEFAULT false,
    started_at     timestamptz NOT NULL DEFAULT now(),
    last_heartbeat timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_name, node_id)
);

CREATE TABLE sync_metadata.leader_election (
    cluster_name    text        PRIMARY KEY,
    leader_id       text        NOT NULL,
    holder_instance uuid        NOT NULL,
    holder_pid      integer,
    epoch           bigint      NOT NULL DEFAULT 1,
    acquired_at     timestamptz NOT NULL DEFAULT now(),
    renewed_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL
);

CREATE TABLE sync_metadata.client_specs (
    cluster_name text        NOT NULL,
    name         text        NOT NULL,
    generation   bigint      NOT NULL DEFAULT 1,
    spec         jsonb       NOT NULL,
    labels       jsonb       NOT NULL DEFAULT '{}',
    annotations  jsonb       NOT NULL DEFAULT '{}',
    enabled      boolean     NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz,
    PRIMARY KEY (cluster_name, name)
);

CREATE TABLE sync_metadata.client_status (
    cluster_name          text        NOT NULL,
    name                  text        NOT NULL,
    observed_generation   bigint      NOT NULL DEFAULT 0,
    phase                 text        NOT NULL DEFAULT 'Pending',
    conditions            jsonb       NOT NULL DEFAULT '[]',
    last_sync_time        timestamptz,
    next_sync_time        timestamptz,
    last_sync_duration_ms bigint,
    consecutive_failures  integer     NOT NULL DEFAULT 0,
    tables                jsonb       NOT NULL DEFAULT '{}',
    last_error            text,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_name, name)
);

CREATE TABLE sync_metadata.state (
    cluster_name text        NOT NULL,
    key          text        NOT NULL,
    value        jsonb       NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    updated_by   text,
    PRIMARY KEY (cluster_name, key)
);

CREATE TABLE sync_metadata.sync_jobs (
    id           uuid        PRIMARY KEY,
    cluster_name text        NOT NULL,
    client_name  text        NOT NULL,
    leader_id    text        NOT NULL,
    epoch        bigint      NOT NULL,
    trigger      text        NOT NULL DEFAULT 'schedule',
    status       text        NOT NULL DEFAULT 'running',
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    rows_written bigint      NOT NULL DEFAULT 0,
    tables       jsonb       NOT NULL DEFAULT '{}',
    error        text
);
CREATE INDEX sync_jobs_client ON sync_metadata.sync_jobs (cluster_name, client_name, started_at DESC);

CREATE TABLE sync_metadata.sync_requests (
    id           uuid        PRIMARY KEY,
    cluster_name text        NOT NULL,
    client_name  text        NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    requested_by text,
    claimed_at   timestamptz,
    job_id       uuid
);

CREATE TABLE sync_metadata.conflict_log (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cluster_name text        NOT NULL,
    client_name  text        NOT NULL,
    table_name   text        NOT NULL,
    row_key      jsonb       NOT NULL,
    strategy     text        NOT NULL,
    source_row   jsonb,
    target_row   jsonb,
    resolution   text        NOT NULL,
    resolved_at  timestamptz,
    detected_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sync_metadata.events (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cluster_name text        NOT NULL,
    client_name  text,
    type         text        NOT NULL DEFAULT 'Normal',
    reason       text        NOT NULL,
    message      text        NOT NULL,
    node_id      text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_client ON sync_metadata.events (cluster_name, client_name, created_at DESC);

CREATE TABLE sync_metadata.table_state (
    cluster_name text        NOT NULL,
    client_name  text        NOT NULL,
    table_name   text        NOT NULL,
    source_ddl   text,
    key_columns  text[]      NOT NULL DEFAULT '{}',
    rows         bigint      NOT NULL DEFAULT 0,
    watermark    jsonb       NOT NULL DEFAULT '{}',
    epoch        bigint,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_name, client_name, table_name)
);
