//! owsyncd's command line (its clap definition), in the library so that tests can parse
//! the documented `owsyncd` command lines with it. `src/bin/owsyncd.rs` validates and runs it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "owsyncd",
    version,
    about = "owsync controller: elects a leader and keeps every tenant's mirror in sync"
)]
pub struct Args {
    /// The host's sync cluster.
    #[arg(long, env = "OWSYNC_CLUSTER")]
    pub cluster: String,
    /// This replica's id (default: the hostname).
    #[arg(long, env = "OWSYNC_NODE_ID")]
    pub node_id: Option<String>,
    /// Address of the HTTP API.
    #[arg(long, env = "OWSYNC_LISTEN", default_value = "127.0.0.1:9443")]
    pub listen: SocketAddr,
    /// File holding the PostgreSQL URL (as sync_service). OWSYNC_DATABASE_URL also works.
    #[arg(long, env = "OWSYNC_DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// Lease duration.
    #[arg(long, env = "OWSYNC_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// A leader that cannot renew for this long stops all reconcilers.
    #[arg(long, env = "OWSYNC_RENEW_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub renew_deadline: Duration,
    /// Renew / retry period (jittered).
    #[arg(long, env = "OWSYNC_RETRY_PERIOD", default_value = "2s", value_parser = humantime::parse_duration)]
    pub retry_period: Duration,
    /// Syncs running at once.
    #[arg(long, env = "OWSYNC_MAX_CONCURRENCY", default_value_t = 8)]
    pub max_concurrency: usize,
    /// Tables of one tenant a sync copies at once, each on its own connection.
    #[arg(long, env = "OWSYNC_TABLE_CONNECTIONS", default_value_t = crate::sync::DEFAULT_TABLE_CONNECTIONS)]
    pub table_connections: usize,
    /// PostgreSQL sessions this process may hold at once (the lease and LISTEN session,
    /// and a pool for syncs and the API); at least 3. Syncs wait for a free connection.
    #[arg(long, env = "OWSYNC_MAX_CONNECTIONS", default_value_t = crate::controller::budget::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: u32,
    /// File holding the bearer token that mutating API endpoints require.
    #[arg(long, env = "OWSYNC_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// How long the state API serves a key from its cache.
    #[arg(long, env = "OWSYNC_STATE_CACHE_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub state_cache_ttl: Duration,
    /// Finished sync runs and events older than this are deleted by the leader (at least
    /// 1h; `0s` keeps them forever).
    #[arg(long, env = "OWSYNC_HISTORY_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub history_retention: Duration,
    /// Log format.
    #[arg(long, env = "OWSYNC_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}
