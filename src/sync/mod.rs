//! One sync of one tenant, SQLite -> PostgreSQL: discover the source's tables, copy each
//! one in keyset slices through COPY into a stage, upsert, tombstone what disappeared,
//! record the table's state, and commit only if this replica still holds the lease.
//! A library: usable without the daemon (`owsyncctl sync NAME --once`).

pub mod drift;
pub mod guard;
pub mod progress;
mod provision;
mod queue;
mod reader;
mod skip;
mod table;

pub use queue::{DEFAULT_TABLE_CONNECTIONS, set_table_connections, table_connections, with_table_connections};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::mpsc;
use tracing::{Instrument, info, info_span, warn};

use crate::source;
use crate::spec::ClientSyncSpec;
use crate::store;
use crate::target::{self, MirrorTable};
use reader::{Msg, ReaderJob};
use table::{TableFailure, skip_rest, sync_table};

/// Proof of leadership a sync's transactions are fenced with (owned by `store`).
pub use crate::store::Fence;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("tenant {client}: {source}")]
    Source { client: String, source: source::SourceError },
    #[error("tenant {client}: {source}")]
    Target { client: String, source: target::TargetError },
    #[error("tenant {client}: {source}")]
    Store { client: String, source: store::StoreError },
    #[error(
        "tenant {client}: lost the lease (epoch {epoch} is no longer held); nothing of this transaction was written"
    )]
    OwnershipLost { client: String, epoch: i64 },
    #[error("tenant {client}: the source reader stopped unexpectedly: {message}")]
    Reader { client: String, message: String },
    /// The deletion guard held the sync (`guard.rs`): nothing was written.
    #[error("tenant {client}: {message}")]
    DeletionsHeld { client: String, plan: Box<guard::Plan>, message: String },
}

impl SyncError {
    /// A store error of `client`'s sync; a fenced transaction that found the lease gone
    /// ([`store::StoreError::Fenced`]) is [`SyncError::OwnershipLost`].
    pub fn store(client: &str, source: store::StoreError) -> SyncError {
        match source {
            store::StoreError::Fenced { epoch } => SyncError::OwnershipLost { client: client.to_string(), epoch },
            source => SyncError::Store { client: client.to_string(), source },
        }
    }

    pub fn is_ownership_lost(&self) -> bool {
        matches!(self, SyncError::OwnershipLost { .. })
    }

    /// The deletion guard's plan when this sync was held.
    pub fn held(&self) -> Option<&guard::Plan> {
        match self {
            SyncError::DeletionsHeld { plan, .. } => Some(plan),
            _ => None,
        }
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct TableReport {
    pub rows: i64,
    /// Rows read from the source by this sync: all of them in a full pass, those in the
    /// changed pages' rowid ranges in an incremental one.
    pub rows_read: u64,
    /// Only the rowid ranges of changed pages were re-read (see `source::pages`).
    pub incremental: bool,
    /// How the changes were found: `followed` (only the pages the WAL follower named were
    /// read), `changed-pages` (every leaf walked), `full` (every row read).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub capture: &'static str,
    /// Pages of the table's b-tree the walk read.
    pub pages_read: u64,
    /// The mirror table was empty: the rows were copied straight into it (no stage, no
    /// upsert, no tombstone pass).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub direct: bool,
    /// Values kept in `sync_metadata.quarantine` instead of the mirror.
    pub quarantined: u64,
    pub upserted: u64,
    pub tombstoned: u64,
    /// Rows changed both in the source and in PostgreSQL, resolved by `conflict_strategy`.
    pub conflicts: u64,
    /// Of those, left for review (`manual`): `owsyncctl conflicts list`.
    pub pending_conflicts: u64,
    /// Rows changed only in PostgreSQL, left as they are.
    pub kept_target: u64,
    pub conflict_strategy: &'static str,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SyncReport {
    pub tables: BTreeMap<String, TableReport>,
    /// Tables that failed, with why; the others were synced.
    pub failed: BTreeMap<String, String>,
    pub rows_written: u64,
    /// The source had not changed since the last complete sync: nothing was read.
    pub unchanged: bool,
    #[serde(skip)]
    pub duration: Duration,
    /// Where the mirror cannot follow the source (`drift.rs`); `None` when not checked
    /// (unchanged source, or the check itself failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<Vec<drift::Drift>>,
}

/// What to sync and as whom.
pub struct SyncJob<'a> {
    pub pool: &'a PgPool,
    pub cluster: &'a str,
    pub client: &'a str,
    pub spec: &'a ClientSyncSpec,
    pub fence: Option<&'a Fence>,
}

/// Runs one sync of a tenant; does nothing when the source is unchanged since the last
/// complete sync.
pub async fn sync_tenant(job: &SyncJob<'_>) -> Result<SyncReport, SyncError> {
    sync_tenant_with(job, false).await
}

/// Runs one sync of a tenant; `full` reads every table even if the source is unchanged.
pub async fn sync_tenant_with(job: &SyncJob<'_>, full: bool) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let client = job.client.to_string();
    let store_err = |source| SyncError::store(&client, source);
    let path = PathBuf::from(&job.spec.source.path);
    let fp = tokio::task::spawn_blocking(move || source::fingerprint(&path))
        .await
        .map_err(|e| SyncError::Reader { client: client.clone(), message: e.to_string() })?
        .map_err(|source| SyncError::Source { client: client.clone(), source })?;
    let fp = format!("{fp}:{}", skip::spec_digest(job.spec));
    let (previous, rows) = skip::previous(job).await.map_err(store_err)?;
    if !full && previous.as_deref() == Some(fp.as_str()) {
        let tables = rows.into_iter().map(|(t, rows)| (t, TableReport { rows, ..Default::default() })).collect();
        return Ok(SyncReport { tables, unchanged: true, duration: started.elapsed(), ..Default::default() });
    }
    let passed = guard::check(job, &rows).await?;
    let (mut report, discovered) = match sync_all(job, full, &passed.limits).await {
        // A table's transaction would have tombstoned beyond the guard (and rolled back).
        Err(SyncError::DeletionsHeld { plan, .. }) => return Err(guard::hold(job, *plan).await),
        r => r?,
    };
    report.drift = drift::check_against(job, &discovered)
        .await
        .inspect_err(|e| warn!(error = %e, "cannot check schema drift"))
        .ok();
    if report.failed.is_empty() {
        skip::record(job, &fp).await.map_err(store_err)?;
    }
    if report.failed.is_empty() {
        guard::settle(job, passed).await?;
    }
    report.duration = started.elapsed();
    Ok(report)
}

async fn sync_all(
    job: &SyncJob<'_>,
    full: bool,
    limits: &BTreeMap<String, (u64, i64)>,
) -> Result<(SyncReport, Vec<source::TableInfo>), SyncError> {
    let started = Instant::now();
    let client = job.client.to_string();
    let schema = job.spec.mirror_schema(job.client);
    let skip::Recorded { pages: previous, shapes } =
        skip::recorded(job, &schema).await.map_err(|source| SyncError::store(&client, source))?;
    let path = PathBuf::from(&job.spec.source.path);
    let spec = job.spec.clone();
    let (queue, discovered) = tokio::task::spawn_blocking(move || queue::tables(&path, &spec))
        .await
        .map_err(|e| SyncError::Reader { client: client.clone(), message: e.to_string() })?
        .map_err(|source| SyncError::Source { client: client.clone(), source })?;
    let infos: Vec<source::TableInfo> = queue.lock().map(|q| q.iter().cloned().collect()).unwrap_or_default();
    // Tables are synced by `n` workers at once, each with its own SQLite reader and its
    // own PostgreSQL transaction per table (so the second core compresses and writes too).
    let n = queue::table_connections().min(job.pool.options().get_max_connections().max(1) as usize);
    // The first `n` tables (the largest) are provisioned before the workers start; the
    // rest meanwhile, on one more connection, while the big tables copy.
    let (early, late) = infos.split_at(n.min(infos.len()));
    let unprovisioned = provision::provision_tables(job, &schema, early, &shapes, full).await?;
    let mut report = SyncReport::default();
    if !unprovisioned.is_empty() {
        if let Ok(mut q) = queue.lock() {
            q.retain(|t| !unprovisioned.contains_key(&t.name));
        }
        for (name, msg) in unprovisioned {
            warn!(client = %client, table = %name, error = %msg, "table not synced");
            progress::report(|p| p.table_started(&name));
            progress::report(|p| p.table_done(&name, 0, Some(&msg)));
            report.failed.insert(name, msg);
        }
    }
    let rj = Arc::new(ReaderJob {
        path: PathBuf::from(&job.spec.source.path),
        schema: schema.clone(),
        previous: Mutex::new(previous),
        full,
    });
    let (late_tx, late_rx) = tokio::sync::watch::channel(false);
    let shared = Shared {
        queue,
        stop: AtomicBool::new(false),
        report: Mutex::new(report),
        late: late.iter().map(|t| t.name.clone()).collect(),
        late_failed: Mutex::new(BTreeMap::new()),
        late_done: late_rx,
        limits,
    };
    let provisioner = async {
        let r = provision::provision_tables(job, &schema, late, &shapes, full).await;
        match &r {
            Ok(failed) => {
                if let Ok(mut f) = shared.late_failed.lock() {
                    f.clone_from(failed);
                }
            }
            Err(_) => shared.stop(),
        }
        let _ = late_tx.send(true);
        r.map(|_| ())
    };
    let workers = (0..n).map(|_| {
        let (tx, rx) = mpsc::channel::<Msg>(1);
        let reader = reader::spawn_reader(rj.clone(), shared.queue.clone(), tx);
        worker(job, &schema, &shared, rx, reader)
    });
    let (provisioned, results) = tokio::join!(provisioner, futures_util::future::join_all(workers));
    provisioned?;
    results.into_iter().collect::<Result<Vec<()>, SyncError>>()?;
    let mut report = shared.report.into_inner().unwrap_or_else(|e| e.into_inner());
    provision::forget_failed(job, &report.failed.keys().cloned().collect::<Vec<_>>()).await?;
    report.duration = started.elapsed();
    let followed = report.tables.values().filter(|t| t.capture == "followed").count();
    let pages_read: u64 = report.tables.values().map(|t| t.pages_read).sum();
    info!(client = %client, rows = report.rows_written, tables = report.tables.len(), failed = report.failed.len(),
          followed, pages_read, ms = report.duration.as_millis() as u64, "sync finished");
    Ok((report, discovered))
}

/// What a sync's workers share.
struct Shared<'a> {
    queue: reader::Queue,
    /// A worker met a fatal error: the others stop after their current table.
    stop: AtomicBool,
    report: Mutex<SyncReport>,
    /// Tables provisioned while the first ones copy; `late_done` turns true when that is
    /// over, with the ones that could not be provisioned in `late_failed`.
    late: std::collections::HashSet<String>,
    late_failed: Mutex<BTreeMap<String, String>>,
    late_done: tokio::sync::watch::Receiver<bool>,
    /// The most rows each table may tombstone, with its rows at the last sync (`guard::limits`).
    limits: &'a BTreeMap<String, (u64, i64)>,
}

impl Shared<'_> {
    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut q) = self.queue.lock() {
            q.clear();
        }
    }
}

/// Syncs the tables one reader sends, one transaction each, until the reader is done or
/// a worker failed fatally.
async fn worker(
    job: &SyncJob<'_>,
    schema: &str,
    shared: &Shared<'_>,
    mut rx: mpsc::Receiver<Msg>,
    reader: tokio::task::JoinHandle<Result<(), source::SourceError>>,
) -> Result<(), SyncError> {
    let client = job.client.to_string();
    let mut fatal = None;
    while let Some(msg) = rx.recv().await {
        let Msg::Table(plan) = msg else { continue };
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let info = &plan.info;
        if shared.late.contains(&info.name) {
            let mut done = shared.late_done.clone();
            let _ = done.wait_for(|d| *d).await;
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
            let failed = shared.late_failed.lock().ok().and_then(|f| f.get(&info.name).cloned());
            if let Some(msg) = failed {
                warn!(client = %client, table = %info.name, error = %msg, "table not synced");
                progress::report(|p| p.table_started(&info.name));
                progress::report(|p| p.table_done(&info.name, 0, Some(&msg)));
                if let Ok(mut report) = shared.report.lock() {
                    report.failed.insert(info.name.clone(), msg);
                }
                skip_rest(&mut rx).await;
                continue;
            }
        }
        let table = MirrorTable::from_source(schema, info);
        let span = info_span!("table", client = %client, table = %info.name);
        progress::report(|p| p.table_started(&info.name));
        let limit = shared.limits.get(&info.name).copied();
        let done = sync_table(job, &plan, &table, &mut rx, limit).instrument(span).await;
        progress::report(|p| match &done {
            Ok(tr) => p.table_done(&info.name, tr.rows, None),
            Err(TableFailure::Table(m)) => p.table_done(&info.name, 0, Some(m)),
            Err(TableFailure::Fatal(e)) => p.table_done(&info.name, 0, Some(&e.to_string())),
        });
        match done {
            Ok(tr) => {
                if let Ok(mut report) = shared.report.lock() {
                    report.rows_written += tr.upserted + tr.tombstoned;
                    report.tables.insert(info.name.clone(), tr);
                }
            }
            Err(TableFailure::Fatal(e)) => {
                shared.stop();
                fatal = Some(e);
                break;
            }
            Err(TableFailure::Table(msg)) => {
                warn!(client = %client, table = %info.name, error = %msg, "table not synced");
                if let Ok(mut report) = shared.report.lock() {
                    report.failed.insert(info.name.clone(), msg);
                }
            }
        }
    }
    drop(rx);
    let read = reader.await;
    if let Some(e) = fatal {
        return Err(e);
    }
    match read {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            shared.stop();
            Err(SyncError::Source { client, source: e })
        }
        Err(e) => {
            shared.stop();
            Err(SyncError::Reader { client, message: e.to_string() })
        }
    }
}

/// A store error inside a table's transaction fails the whole sync when the connection
/// is gone or the lease lost, else only the table.
fn store_table_failure(client: &str, e: store::StoreError) -> TableFailure {
    match &e {
        store::StoreError::Db { source, .. } if !is_connection_error(source) => TableFailure::Table(e.to_string()),
        _ => TableFailure::Fatal(SyncError::store(client, e)),
    }
}

/// A target error fails the whole sync when the connection is gone, else only the table.
fn table_failure(client: &str, e: target::TargetError) -> TableFailure {
    match &e {
        target::TargetError::Db { source, .. } if is_connection_error(source) => {
            TableFailure::Fatal(SyncError::Target { client: client.to_string(), source: e })
        }
        _ => TableFailure::Table(e.to_string()),
    }
}

fn is_connection_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Protocol(_))
}
