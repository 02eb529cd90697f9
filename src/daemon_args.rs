//! owsyncd's command line (its clap definition) and what it comes to (its checks, the
//! controller's configuration), in the library so that tests can parse and check the
//! documented `owsyncd` command lines with it. `src/bin/owsyncd.rs` runs it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::controller::budget::{Budget, BudgetError};
use crate::controller::record::DEFAULT_STALL_AFTER;
use crate::controller::{ControllerConfig, ElectionConfig};

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

/// A command line that parses but cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("--cluster {0:?} is not a DNS-1123 label")]
    Cluster(String),
    #[error(
        "--renew-deadline ({}) must be shorter than --lease-duration ({}): a leader has to stop before its lease can pass to another replica",
        human(.renew_deadline),
        human(.lease_duration)
    )]
    RenewDeadline { renew_deadline: Duration, lease_duration: Duration },
    #[error("--retry-period ({}) must be shorter than --renew-deadline ({})", human(.retry_period), human(.renew_deadline))]
    RetryPeriod { retry_period: Duration, renew_deadline: Duration },
    #[error(
        "--history-retention ({}) must be at least 1h (or 0s to keep sync runs and events forever)",
        human(.0)
    )]
    HistoryRetention(Duration),
}

fn human(d: &Duration) -> humantime::FormattedDuration {
    humantime::format_duration(*d)
}

/// The least `--history-retention` but 0s (keep forever).
pub const MIN_HISTORY_RETENTION: Duration = Duration::from_secs(3600);

impl Args {
    /// Checks what the parser cannot: the cluster's name, the election's timings (a
    /// leader stops before its lease can pass on, and renews more often than that), the
    /// history retention.
    pub fn validate(&self) -> Result<(), ArgsError> {
        if !crate::spec::is_dns_label(&self.cluster) {
            return Err(ArgsError::Cluster(self.cluster.clone()));
        }
        if self.renew_deadline >= self.lease_duration {
            let (renew_deadline, lease_duration) = (self.renew_deadline, self.lease_duration);
            return Err(ArgsError::RenewDeadline { renew_deadline, lease_duration });
        }
        if self.retry_period >= self.renew_deadline {
            let (retry_period, renew_deadline) = (self.retry_period, self.renew_deadline);
            return Err(ArgsError::RetryPeriod { retry_period, renew_deadline });
        }
        if !self.history_retention.is_zero() && self.history_retention < MIN_HISTORY_RETENTION {
            return Err(ArgsError::HistoryRetention(self.history_retention));
        }
        Ok(())
    }

    /// How the process's PostgreSQL sessions are shared out (`--max-connections`).
    pub fn budget(&self) -> Result<Budget, BudgetError> {
        Budget::derive(self.max_connections, self.max_concurrency, self.table_connections)
    }

    /// The controller's configuration, as replica `node_id` with `budget`.
    pub fn controller_config(&self, node_id: String, budget: &Budget) -> ControllerConfig {
        ControllerConfig {
            cluster: self.cluster.clone(),
            node_id,
            election: ElectionConfig {
                lease: self.lease_duration,
                renew_deadline: self.renew_deadline,
                retry: self.retry_period,
            },
            spec_poll: crate::controller::SPEC_POLL,
            max_concurrency: budget.max_concurrency,
            sync_connections: budget.sync_connections,
            table_connections: budget.table_connections,
            stall_after: DEFAULT_STALL_AFTER,
            history_retention: (!self.history_retention.is_zero()).then_some(self.history_retention),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> Args {
        let argv = [&["owsyncd", "--cluster", "host-a"][..], flags].concat();
        Args::try_parse_from(argv).expect("parses")
    }

    #[test]
    fn the_defaults_are_valid_and_configure_the_controller() {
        let a = parse(&[]);
        assert_eq!(a.validate(), Ok(()));
        let budget = a.budget().unwrap();
        let c = a.controller_config("node-a".into(), &budget);
        assert_eq!((c.cluster.as_str(), c.node_id.as_str()), ("host-a", "node-a"));
        let e = ElectionConfig::default();
        assert_eq!(
            (c.election.lease, c.election.renew_deadline, c.election.retry),
            (e.lease, e.renew_deadline, e.retry)
        );
        assert_eq!((c.max_concurrency, c.sync_connections), (budget.max_concurrency, budget.sync_connections));
        assert_eq!(c.table_connections, budget.table_connections, "each sync's table connections are capped");
        assert_eq!((c.stall_after, c.spec_poll), (5, Duration::from_secs(2)));
        assert_eq!(c.history_retention, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(
            parse(&["--history-retention", "0s"]).controller_config("n".into(), &budget).history_retention,
            None
        );
    }

    #[test]
    fn each_check_names_the_flags_and_the_fix() {
        let err = |flags: &[&str]| parse(flags).validate().unwrap_err().to_string();
        let e = Args::try_parse_from(["owsyncd", "--cluster", "Host_A"]).unwrap().validate().unwrap_err();
        assert_eq!(e.to_string(), "--cluster \"Host_A\" is not a DNS-1123 label");
        assert_eq!(
            err(&["--renew-deadline", "15s"]),
            "--renew-deadline (15s) must be shorter than --lease-duration (15s): a leader has to stop before its \
             lease can pass to another replica"
        );
        assert_eq!(err(&["--retry-period", "10s"]), "--retry-period (10s) must be shorter than --renew-deadline (10s)");
        assert_eq!(
            err(&["--history-retention", "10m"]),
            "--history-retention (10m) must be at least 1h (or 0s to keep sync runs and events forever)"
        );
        assert_eq!(parse(&["--history-retention", "1h"]).validate(), Ok(()));
        assert!(parse(&["--max-connections", "2"]).budget().is_err());
    }
}
