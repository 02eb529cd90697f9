//! Everything the controller keeps in PostgreSQL's `sync_metadata` schema: migrations,
//! specs, status, the leader lease, jobs and events.

pub mod jobs;
pub mod lease;
pub mod migrate;
pub mod requests;
pub mod specs;
pub mod state;
pub mod status;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use crate::sql::redact_url;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("{context}: {source}")]
    Db { context: String, source: sqlx::Error },
    #[error(
        "database is not migrated (sync_metadata missing or at version {found}, need {want}): run `owsyncctl migrate --admin-url URL`"
    )]
    NotMigrated { found: i64, want: i64 },
    #[error("{0}")]
    Migration(String),
    #[error("clientsync/{name} not found in cluster {cluster}")]
    NotFound { cluster: String, name: String },
    /// A spec the database refuses, with the field path and value.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Adds what a query was doing to a database error.
pub trait Context<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, sqlx::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| StoreError::Db { context: context(), source })
    }
}

/// Connection options from a URL, tagged with an application name.
pub fn connect_options(url: &str, application: &str) -> Result<PgConnectOptions> {
    let opts: PgConnectOptions = url.parse().map_err(|source| StoreError::Connect { url: redact_url(url), source })?;
    Ok(opts.application_name(application))
}

/// A pool of connections; fails at once, naming the cause, when the server is unreachable.
pub async fn connect(url: &str, application: &str, max_connections: u32) -> Result<PgPool> {
    use sqlx::{ConnectOptions, Connection};
    let opts = connect_options(url, application)?;
    let err = |source| StoreError::Connect { url: redact_url(url), source };
    // One direct attempt first: the pool retries "connection refused" until its acquire
    // timeout and then reports only "pool timed out", hiding the cause.
    let probe = opts.connect().await.map_err(err)?;
    let _ = probe.close().await;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
        .map_err(err)
}

/// Begins a transaction scoped to one cluster: row-level security lets `sync_service`
/// see only rows whose `cluster_name` equals `app.current_host_id`, set here with
/// `SET LOCAL` semantics so it also holds through a session pooler.
pub async fn begin(pool: &PgPool, cluster: &str) -> Result<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await.ctx(|| "begin transaction".into())?;
    sqlx::query("SELECT set_config('app.current_host_id', $1, true)")
        .bind(cluster)
        .execute(&mut *tx)
        .await
        .ctx(|| "set app.current_host_id".into())?;
    Ok(tx)
}
