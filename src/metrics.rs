//! Prometheus metrics (the official `prometheus-client`), named as in the seed.
//!
//! Every series carries the replica's `cluster` as a label, so one Prometheus can scrape
//! several hosts' replicas and still group by cluster (leaders per cluster, a tenant name
//! that exists on two hosts). The per-tenant lag and interval gauges are exported only
//! while this replica leads, and only for the tenants it runs a reconciler for: a standby,
//! a deleted, disabled or moved tenant has no lag series (the alert compares the lag
//! with twice the tenant's own interval).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};

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
    pub interval: Family<ClientLabels, Gauge<f64, AtomicU64>>,
    pub rows_synced: Family<RowLabels, Counter>,
    pub queue_depth: Gauge,
    pub leader_transitions: Counter,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    /// 1 while the deletion guard holds a tenant's syncs (`DeletionsHeld`), else 0.
    pub deletions_held: Family<ClientLabels, Gauge>,
    tenants: Mutex<HashMap<String, Tracked>>,
}

/// A tenant the leader runs a reconciler for.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    interval: Duration,
    /// Its last successful sync (as recorded in its status, then by this process).
    last_success: Option<DateTime<Utc>>,
    /// When this replica started running it: the lag of a tenant that never synced.
    since: DateTime<Utc>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Without a cluster label (tests, tools).
    pub fn new() -> Metrics {
        Metrics::with_registry(Registry::default())
    }

    /// Every series labelled `cluster="<cluster>"`.
    pub fn for_cluster(cluster: &str) -> Metrics {
        let label = (std::borrow::Cow::Borrowed("cluster"), std::borrow::Cow::Owned(cluster.to_string()));
        Metrics::with_registry(Registry::with_labels(std::iter::once(label)))
    }

    fn with_registry(mut registry: Registry) -> Metrics {
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
        registry.register(
            "state_sync_lag_seconds",
            "Seconds since the tenant's last successful sync (exported by the leader only)",
            lag.clone(),
        );
        let interval = Family::<ClientLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "sync_interval_seconds",
            "The tenant's spec.interval in seconds (exported by the leader only)",
            interval.clone(),
        );
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
            interval,
            rows_synced,
            queue_depth,
            leader_transitions,
            cache_hits,
            cache_misses,
            deletions_held,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// The leader runs a reconciler for `client` (synced successfully last at
    /// `last_success`, if ever): its lag and interval are exported from now on.
    pub fn track(&self, client: &str, interval: Duration, last_success: Option<DateTime<Utc>>) {
        if let Ok(mut m) = self.tenants.lock() {
            let since = Utc::now();
            let t = m.entry(client.to_string()).or_insert(Tracked { interval, last_success, since });
            t.interval = interval;
            t.last_success = t.last_success.max(last_success);
        }
    }

    /// The tenant's reconciler stopped (deleted, disabled, moved, or a new spec
    /// generation about to be tracked again): its lag and interval series go.
    pub fn untrack(&self, client: &str) {
        if let Ok(mut m) = self.tenants.lock() {
            m.remove(client);
        }
        self.deletions_held.remove(&ClientLabels { client: client.into() });
    }

    /// A new term of leadership starts from no tenant.
    pub fn untrack_all(&self) {
        if let Ok(mut m) = self.tenants.lock() {
            m.clear();
        }
    }

    /// Records a finished sync.
    pub fn record_sync(&self, client: &str, ok: bool, seconds: f64) {
        let status = if ok { "success" } else { "failed" };
        self.sync_operations.get_or_create(&ClientStatusLabels { client: client.into(), status: status.into() }).inc();
        self.sync_duration.get_or_create(&ClientLabels { client: client.into() }).observe(seconds);
        if ok
            && let Ok(mut m) = self.tenants.lock()
            && let Some(t) = m.get_mut(client)
        {
            t.last_success = Some(Utc::now());
        }
    }

    /// Whether the deletion guard holds `client`.
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

    /// Counts a table's conflicts; a table synced without conflicts is exported at 0, so
    /// the series exists (and `rate`/`increase` see the first conflict) from its first sync.
    pub fn record_conflicts(&self, client: &str, table: &str, strategy: &str, n: u64) {
        self.conflicts_detected
            .get_or_create(&ConflictLabels { client: client.into(), table: table.into(), strategy: strategy.into() })
            .inc_by(n);
    }

    /// Prometheus text exposition (OpenMetrics flavour). `leading`: whether this replica
    /// leads its cluster right now (within its term's deadline); only then are the
    /// tenants' lag and interval exported, and `is_leader` says the same.
    pub fn render(&self, leading: bool) -> String {
        // Held while encoding, so concurrent scrapes never see the families half-filled.
        let tenants = match self.tenants.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.is_leader.set(i64::from(leading));
        self.lag.clear();
        self.interval.clear();
        if leading {
            let now = Utc::now();
            for (client, t) in tenants.iter() {
                let labels = ClientLabels { client: client.clone() };
                let from = t.last_success.unwrap_or(t.since);
                let lag = (now - from).num_milliseconds().max(0) as f64 / 1000.0;
                self.lag.get_or_create(&labels).set(lag);
                self.interval.get_or_create(&labels).set(t.interval.as_secs_f64());
            }
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Metrics;

    fn lag_lines(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with("state_sync_lag_seconds{") || l.starts_with("sync_interval_seconds{"))
            .collect()
    }

    #[test]
    fn lag_only_while_leading_and_only_for_tracked_tenants() {
        let m = Metrics::for_cluster("h1");
        m.track("acme", Duration::from_secs(300), Some(chrono::Utc::now() - chrono::Duration::seconds(42)));
        m.track("other", Duration::from_secs(1800), None);
        m.record_sync("untracked", true, 1.0);
        let text = m.render(true);
        assert!(text.contains("is_leader{cluster=\"h1\"} 1"), "{text}");
        let lines = lag_lines(&text);
        assert_eq!(lines.len(), 4, "{text}");
        let acme = lines.iter().find(|l| l.starts_with("state_sync_lag_seconds{") && l.contains("acme")).unwrap();
        let secs: f64 = acme.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((42.0..50.0).contains(&secs), "{acme}");
        assert!(text.contains("sync_interval_seconds{cluster=\"h1\",client=\"other\"} 1800"), "{text}");
        // A standby (or a replica past its term's deadline) exports no lag at all.
        let standby = m.render(false);
        assert!(lag_lines(&standby).is_empty(), "{standby}");
        assert!(standby.contains("is_leader{cluster=\"h1\"} 0"), "{standby}");
        // A deleted, disabled or moved tenant's series go; a new term starts from none.
        m.untrack("acme");
        let text = m.render(true);
        assert!(!text.contains("client=\"acme\"} "), "{text}");
        assert_eq!(lag_lines(&text).len(), 2, "{text}");
        m.untrack_all();
        assert!(lag_lines(&m.render(true)).is_empty());
    }

    #[test]
    fn a_success_resets_the_lag_and_conflicts_start_at_zero() {
        let m = Metrics::for_cluster("h1");
        m.track("acme", Duration::from_secs(60), Some(chrono::Utc::now() - chrono::Duration::seconds(900)));
        m.record_sync("acme", true, 0.1);
        let text = m.render(true);
        let lag = lag_lines(&text)
            .into_iter()
            .find(|l| l.starts_with("state_sync_lag_seconds"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap();
        assert!(lag < 5.0, "{text}");
        m.record_conflicts("acme", "chat", "newest_wins", 0);
        let text = m.render(true);
        assert!(text.contains("# TYPE conflicts_detected counter"), "{text}");
        let zero = r#"conflicts_detected_total{cluster="h1",client="acme",table="chat",strategy="newest_wins"} 0"#;
        assert!(text.contains(zero), "{text}");
    }
}
