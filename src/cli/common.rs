//! What every command shares: the database URL (from flags, env or a file), the
//! cluster, output formats and the CLI's error type.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use sqlx::PgPool;

use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Msg(String),
    #[error(transparent)]
    Store(#[from] Box<store::StoreError>),
    #[error(transparent)]
    Sync(#[from] Box<crate::sync::SyncError>),
    #[error(transparent)]
    Fixture(#[from] crate::fixtures::FixtureError),
    #[error(transparent)]
    DevPg(#[from] crate::devpg::DevPgError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl From<store::StoreError> for CliError {
    fn from(e: store::StoreError) -> Self {
        CliError::Store(Box::new(e))
    }
}

impl From<crate::sync::SyncError> for CliError {
    fn from(e: crate::sync::SyncError) -> Self {
        CliError::Sync(Box::new(e))
    }
}

impl CliError {
    pub fn msg(s: impl Into<String>) -> CliError {
        CliError::Msg(s.into())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Wide,
    Yaml,
    Json,
}

#[derive(Debug, Args)]
pub struct Global {
    /// PostgreSQL URL (prefer --database-url-file: a URL with a password shows in argv).
    #[arg(long, global = true, env = "OWSYNC_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// File holding the PostgreSQL URL (Docker secrets, *_FILE convention).
    #[arg(long, global = true, env = "OWSYNC_DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// The host's sync cluster (default for metadata.cluster and for queries).
    #[arg(long, global = true, env = "OWSYNC_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Reads a secret file, trimming the trailing newline editors add.
pub fn read_secret(path: &std::path::Path) -> Result<String, CliError> {
    let s =
        std::fs::read_to_string(path).map_err(|source| CliError::Io { path: path.display().to_string(), source })?;
    let s = s.trim_end_matches(['\n', '\r']).to_string();
    if s.is_empty() {
        return Err(CliError::msg(format!("{}: the file is empty", path.display())));
    }
    Ok(s)
}

impl Global {
    /// The database URL: --database-url, --database-url-file, then DATABASE_URL.
    pub fn database_url(&self) -> Result<String, CliError> {
        if let Some(u) = &self.database_url {
            return Ok(u.clone());
        }
        if let Some(f) = &self.database_url_file {
            return read_secret(f);
        }
        if let Ok(u) = std::env::var("DATABASE_URL") {
            return Ok(u);
        }
        Err(CliError::msg(
            "no database: pass --database-url-file FILE (or set OWSYNC_DATABASE_URL_FILE, OWSYNC_DATABASE_URL or DATABASE_URL)",
        ))
    }

    pub async fn pool(&self) -> Result<PgPool, CliError> {
        let url = self.database_url()?;
        let pool = store::connect(&url, "owsyncctl", 4).await?;
        store::migrate::require_current(&pool).await?;
        Ok(pool)
    }
}
