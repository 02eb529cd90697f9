//! Prometheus metrics (the official `prometheus-client`), named as in the seed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientStatusLabels {
    pub client: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    pub client: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RowLabels {
    pub client: String,
    pub table: String,
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConflictLabels {
    pub client: String,
    pub table: String,
    pub strategy: String,
}

pub struct Metrics {
    registry: Registry,
    pub sync_operations: Family<ClientStatusLabels, Counter>,
    pub sync_duration: Family<ClientLabels, Histogram>,
    pub conflicts_detected: Family<ConflictLabels, Counter>,
    pub is_leader: Gauge,
    pub lag: Family<ClientLabels, Gauge<f64, AtomicU64>>,
    pub rows_synced: Family<RowLabels, Counter>,
    pub queue_depth: Gauge,
    pub leader_transitions: Counter,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    /// 1 while the deletion guard holds a tenant's syncs (`DeletionsHeld`), else 0.
    pub deletions_held: Family<ClientLabels, Gauge>,
    last_success: Mutex<HashMap<String, Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let sync_operations = Family::<ClientStatusLabels, Counter>::default();
        registry.register("sync_operations", "Sync operations by tenant and outcome", sync_operations.clone());
        let sync_duration = Family::<ClientLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0])
        });
        registry.register("sync_duration_seconds", "Duration of one tenant sync", sync_duration.clone());
        let conflicts_detected = Family::<ConflictLabels, Counter>::default();
        registry.register(
            "conflicts_detected",
            "Conflicts detected by tenant, table and strategy",
            conflicts_detected.clone(),
        );
        let is_leader = Gauge::default();
        registry.register("is_leader", "1 when this replica holds its cluster's lease", is_leader.clone());
        let lag = Family::<ClientLabels, Gauge<f64, AtomicU64>>::default();
        registry.register("state_sync_lag_seconds", "Seconds since the tenant's last successful sync", lag.clone());
        let rows_synced = Family::<RowLabels, Counter>::default();
        registry.register(
            "rows_synced",
            "Rows written to the mirror by tenant, table and operation",
            rows_synced.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register("reconcile_queue_depth", "Tenants waiting for a sync slot", queue_depth.clone());
        let leader_transitions = Counter::default();
        registry.register(
            "leader_transitions",
            "Times this replica gained or lost leadership",
            leader_transitions.clone(),
        );
        let cache_hits = Counter::default();
        registry.register("state_cache_hits", "State API cache hits", cache_hits.clone());
        let cache_misses = Counter::default();
        registry.register("state_cache_misses", "State API cache misses", cache_misses.clone());
        let deletions_held = Family::<ClientLabels, Gauge>::default();
        registry.register(
            "deletions_held",
            "1 while the deletion guard holds the tenant's syncs (DeletionsHeld)",
            deletions_held.clone(),
        );
        Metrics {
            registry,
            sync_operations,
            sync_duration,
            conflicts_detected,
            is_leader,
            lag,
            rows_synced,
            queue_depth,
            leader_transitions,
            cache_hits,
            cache_misses,
            deletions_held,
            last_success: Mutex::new(HashMap::new()),
        }
    }

    /// Records a finished sync.
    pub fn record_sync(&self, client: &str, ok: bool, seconds: f64) {
        let status = if ok { "success" } else { "failed" };
        self.sync_operations.get_or_create(&ClientStatusLabels { client: client.into(), status: status.into() }).inc();
        self.sync_duration.get_or_create(&ClientLabels { client: client.into() }).observe(seconds);
        if ok && let Ok(mut m) = self.last_success.lock() {
            m.insert(client.to_string(), Instant::now());
        }
    }

    /// Whether the deletion guard holds `client` (the gauge exists once a tenant synced).
    pub fn record_held(&self, client: &str, held: bool) {
        self.deletions_held.get_or_create(&ClientLabels { client: client.into() }).set(i64::from(held));
    }

    pub fn record_rows(&self, client: &str, table: &str, op: &str, n: u64) {
        if n > 0 {
            self.rows_synced
                .get_or_create(&RowLabels { client: client.into(), table: table.into(), op: op.into() })
                .inc_by(n);
        }
    }

    pub fn record_conflicts(&self, client: &str, table: &str, strategy: &str, n: u64) {
        if n > 0 {
            self.conflicts_detected
                .get_or_create(&ConflictLabels {
                    client: client.into(),
                    table: table.into(),
                    strategy: strategy.into(),
                })
                .inc_by(n);
        }
    }

    /// Prometheus text exposition (OpenMetrics flavour).
    pub fn render(&self) -> String {
        if let Ok(m) = self.last_success.lock() {
            for (client, at) in m.iter() {
                self.lag.get_or_create(&ClientLabels { client: client.clone() }).set(at.elapsed().as_secs_f64());
            }
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
