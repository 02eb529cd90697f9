//! The controller: leader election, and on the leader one reconciler per enabled
//! ClientSync of its cluster, each syncing its tenant, writing status and requeueing
//! itself (interval on success, resetting exponential backoff on failure).

mod backoff;
mod election;
mod leader;
mod reconciler;

pub use backoff::backoff_delay;
pub use election::run_election;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

use crate::metrics::Metrics;
use crate::store::lease::Candidate;

/// Timings of leader election (DESIGN section 6 defaults).
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    /// A leader that could not renew for this long stops all reconcilers.
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby retries (with jitter).
    pub retry: Duration,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            lease: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub cluster: String,
    pub node_id: String,
    pub election: ElectionConfig,
    /// How often the leader re-reads specs (a fallback: spec changes also NOTIFY).
    pub spec_poll: Duration,
    /// Syncs running at once across all tenants.
    pub max_concurrency: usize,
    /// Consecutive failures after which a tenant is `Stalled`.
    pub stall_after: i32,
}

/// What the HTTP API shows about this replica.
#[derive(Debug, Clone, Default)]
pub struct NodeState {
    pub is_leader: bool,
    pub epoch: Option<i64>,
    pub leader_id: Option<String>,
    pub last_sync: Option<DateTime<Utc>>,
    pub db_ok: bool,
}

/// State shared between the controller's tasks and the HTTP API.
pub struct Shared {
    pub config: ControllerConfig,
    pub candidate: Candidate,
    pub pool: PgPool,
    pub connect: PgConnectOptions,
    pub metrics: Metrics,
    pub node: RwLock<NodeState>,
    pub started: Instant,
}

impl Shared {
    pub fn new(config: ControllerConfig, pool: PgPool, connect: PgConnectOptions) -> Arc<Shared> {
        let candidate = Candidate {
            cluster: config.cluster.clone(),
            node_id: config.node_id.clone(),
            instance: uuid::Uuid::new_v4(),
        };
        Arc::new(Shared {
            config,
            candidate,
            pool,
            connect,
            metrics: Metrics::new(),
            node: RwLock::new(NodeState::default()),
            started: Instant::now(),
        })
    }

    pub fn node(&self) -> NodeState {
        self.node.read().map(|n| n.clone()).unwrap_or_default()
    }

    pub(crate) fn update_node(&self, f: impl FnOnce(&mut NodeState)) {
        if let Ok(mut n) = self.node.write() {
            f(&mut n);
        }
    }
}
