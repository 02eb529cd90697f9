//! One sync of one tenant, SQLite -> PostgreSQL: discover the source's tables, copy each
//! one in keyset slices through COPY into a stage, upsert, tombstone what disappeared,
//! record the table's state, and commit only if this replica still holds the lease.
//! A library: usable without the daemon (`owsyncctl sync NAME --once`).

pub mod drift;
pub mod guard;
mod options;
pub mod progress;
mod provision;
mod queue;
mod reader;
mod skip;
mod table;

pub use options::{DEFAULT_TABLE_CONNECTIONS, SyncOptions};

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

/// What to sync, as whom, and how.
pub struct SyncJob<'a> {
    pub pool: &'a PgPool,
    pub cluster: &'a str,
    pub client: &'a str,
    pub spec: &'a ClientSyncSpec,
    pub fence: Option<&'a Fence>,
    pub options: SyncOptions,
}

impl<'a> SyncJob<'a> {
    /// A job of a process that holds no lease (`owsyncctl`, tests, benchmarks), with the
    /// default options.
    pub fn unfenced(pool: &'a PgPool, cluster: &'a str, client: &'a str, spec: &'a ClientSyncSpec) -> Self {
        SyncJob { pool, cluster, client, spec, fence: None, options: SyncOptions::default() }
    }

    /// This job reading every table, even if the source is unchanged ([`SyncOptions::full`]).
    pub fn full(&self) -> SyncJob<'a> {
        SyncJob { options: SyncOptions { full: true, ..self.options.clone() }, ..*self }
    }
}

/// Runs one sync of a tenant; does nothing when the source is unchanged since the last
/// complete sync, unless the job's options say `full`.
pub async fn sync_tenant(job: &SyncJob<'_>) -> Result<SyncReport, SyncError> {
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
    if !job.options.full && previous.as_deref() == Some(fp.as_str()) {
        let tables = rows.into_iter().map(|(t, rows)| (t, TableReport { rows, ..Default::default() })).collect();
        return Ok(SyncReport { tables, unchanged: true, duration: started.elapsed(), ..Default::default() });
    }
    // The guard's row, then the source (the guard's counts and anchors, the tables) while
    // the recorded table state is read.
    let row = guard::load(job).await?;
    let schema = job.spec.mirror_schema(job.client);
    let (look, baseline) = tokio::join!(look(job, &rows, guard::previous(&row)), skip::baseline(job, &schema));
    let (mut look, baseline) = (look?, baseline.map_err(store_err)?);
    let passed = guard::pass(job, row, std::mem::take(&mut look.seen)).await?;
    let mut report = match sync_all(job, &passed.limits, baseline, look).await {
        // A table's transaction would have tombstoned beyond the guard (and rolled back).
        Err(SyncError::DeletionsHeld { plan, .. }) => return Err(guard::hold(job, *plan).await),
        r => r?,
    };
    if report.failed.is_empty() {
        skip::record(job, &fp, passed).await.map_err(store_err)?;
    }
    report.duration = started.elapsed();
    Ok(report)
}

/// What a sync reads of the source before it writes anything, on one connection.
struct Look {
    /// The selected tables in the order the readers take them (`queue::order`).
    queue: reader::Queue,
    /// Every table discovered, selected or not (for the drift check).
    discovered: Vec<source::TableInfo>,
    /// What the deletion guard needs (`guard::observe_in`; taken by `guard::pass`).
    seen: guard::Observed,
    /// The connection it was read on, for the first reader (a connection's first statement
    /// parses the whole schema: 0.6 ms for Open WebUI's).
    src: source::Source,
}

/// Opens the source once for the guard and the readers' queue (`recorded`: the rows of
/// each table at the last sync; `previous`: the guard's anchors).
async fn look(
    job: &SyncJob<'_>,
    recorded: &BTreeMap<String, i64>,
    previous: guard::Anchors,
) -> Result<Look, SyncError> {
    let client = job.client.to_string();
    let (path, spec, recorded) = (PathBuf::from(&job.spec.source.path), job.spec.clone(), recorded.clone());
    tokio::task::spawn_blocking(move || {
        let src = source::Source::open(&path)?;
        let discovered = source::discover(&src)?;
        let seen = guard::observe_in(&src, &discovered, &spec.tables, &recorded, &previous)?;
        let queue = queue::order(&src, &discovered, &spec);
        Ok(Look { queue, discovered, seen, src })
    })
    .await
    .map_err(|e| SyncError::Reader { client: client.clone(), message: e.to_string() })?
    .map_err(|source| SyncError::Source { client, source })
}

/// Syncs the tables the source was looked at for (`look`: its queue, the first reader on
/// its connection): the largest first, `table_connections` at once; the schema drift is
/// checked once every table is provisioned, while the tables copy.
async fn sync_all(
    job: &SyncJob<'_>,
    limits: &BTreeMap<String, (u64, i64)>,
    baseline: skip::Baseline,
    look: Look,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let Look { queue, discovered, src, .. } = look;
    let mut open = Some(src);
    let (client, full) = (job.client, job.options.full);
    let schema = job.spec.mirror_schema(job.client);
    let skip::Baseline { pages: previous, shapes } = baseline;
    let infos: Vec<source::TableInfo> = queue.lock().map(|q| q.iter().cloned().collect()).unwrap_or_default();
    // Tables are synced by `n` workers at once, each with its own SQLite reader and its
    // own PostgreSQL transaction per table (so the second core compresses and writes too).
    let n = job.options.table_connections.max(1).min(job.pool.options().get_max_connections().max(1) as usize);
    // The first `n` tables (the largest) are provisioned before the workers start; the
    // rest meanwhile, on one more connection, while the big tables copy.
    let (early, late) = infos.split_at(n.min(infos.len()));
    let unprovisioned = provision::provision_tables(job, &schema, early, &shapes, full).await?;
    let (late_tx, late_rx) = tokio::sync::watch::channel(false);
    let run = SyncRun {
        queue,
        stop: AtomicBool::new(false),
        report: Mutex::new(SyncReport::default()),
        late: late.iter().map(|t| t.name.clone()).collect(),
        late_failed: Mutex::new(BTreeMap::new()),
        late_done: late_rx,
        limits,
    };
    if let Ok(mut q) = run.queue.lock() {
        q.retain(|t| !unprovisioned.contains_key(&t.name));
    }
    for (name, msg) in unprovisioned {
        run.never_started(job, &name, msg);
    }
    let rj = Arc::new(ReaderJob {
        path: PathBuf::from(&job.spec.source.path),
        schema: schema.clone(),
        previous: Mutex::new(previous),
        full,
    });
    let provisioner = async {
        let r = provision::provision_tables(job, &schema, late, &shapes, full).await;
        match &r {
            Ok(failed) => {
                if let Ok(mut f) = run.late_failed.lock() {
                    f.clone_from(failed);
                }
            }
            Err(_) => run.stop(),
        }
        let _ = late_tx.send(true);
        r?;
        let drift = drift::check_against(job, &discovered).await;
        Ok::<_, SyncError>(drift.inspect_err(|e| warn!(error = %e, "cannot check schema drift")).ok())
    };
    let workers = (0..n).map(|_| {
        let (tx, rx) = mpsc::channel::<Msg>(1);
        let reader = reader::spawn_reader(rj.clone(), run.queue.clone(), tx, open.take());
        worker(job, &schema, &run, rx, reader)
    });
    let (drift, results) = tokio::join!(provisioner, futures_util::future::join_all(workers));
    let drift = drift?;
    results.into_iter().collect::<Result<Vec<()>, SyncError>>()?;
    let mut report = run.report.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    provision::forget_failed(job, &report.failed.keys().cloned().collect::<Vec<_>>()).await?;
    report.duration = started.elapsed();
    report.drift = drift;
    let followed = report.tables.values().filter(|t| t.capture == "followed").count();
    let pages_read: u64 = report.tables.values().map(|t| t.pages_read).sum();
    info!(client = %client, rows = report.rows_written, tables = report.tables.len(), failed = report.failed.len(),
          followed, pages_read, ms = report.duration.as_millis() as u64, "sync finished");
    Ok(report)
}

/// One sync's state, shared by its workers.
struct SyncRun<'a> {
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

/// Whether a worker may sync a table it was handed.
enum Ready {
    Go,
    /// The sync stops.
    Stop,
    /// The table could not be provisioned, for this reason.
    Failed(String),
}

impl SyncRun<'_> {
    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut q) = self.queue.lock() {
            q.clear();
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// For a table provisioned late, waits until that provisioning is over.
    async fn ready(&self, table: &str) -> Ready {
        if !self.late.contains(table) {
            return Ready::Go;
        }
        let mut done = self.late_done.clone();
        let _ = done.wait_for(|d| *d).await;
        if self.stopped() {
            return Ready::Stop;
        }
        match self.late_failed.lock().ok().and_then(|f| f.get(table).cloned()) {
            Some(msg) => Ready::Failed(msg),
            None => Ready::Go,
        }
    }

    /// A table that failed before its copy started (it could not be provisioned).
    fn never_started(&self, job: &SyncJob<'_>, table: &str, msg: String) {
        job.options.report(|p| p.table_started(table));
        self.not_synced(job, table, msg);
    }

    /// A table that was not synced, with why; the others go on.
    fn not_synced(&self, job: &SyncJob<'_>, table: &str, msg: String) {
        warn!(client = %job.client, table = %table, error = %msg, "table not synced");
        job.options.report(|p| p.table_done(table, 0, Some(&msg)));
        if let Ok(mut report) = self.report.lock() {
            report.failed.insert(table.to_string(), msg);
        }
    }

    /// A table that was synced.
    fn synced(&self, job: &SyncJob<'_>, table: &str, tr: TableReport) {
        job.options.report(|p| p.table_done(table, tr.rows, None));
        if let Ok(mut report) = self.report.lock() {
            report.rows_written += tr.upserted + tr.tombstoned;
            report.tables.insert(table.to_string(), tr);
        }
    }
}

/// Syncs the tables one reader sends, one transaction each, until the reader is done or
/// a worker failed fatally.
async fn worker(
    job: &SyncJob<'_>,
    schema: &str,
    run: &SyncRun<'_>,
    mut rx: mpsc::Receiver<Msg>,
    reader: tokio::task::JoinHandle<Result<(), source::SourceError>>,
) -> Result<(), SyncError> {
    let client = job.client.to_string();
    let mut fatal = None;
    while let Some(msg) = rx.recv().await {
        let Msg::Table(plan) = msg else { continue };
        if run.stopped() {
            break;
        }
        let name = &plan.info.name;
        match run.ready(name).await {
            Ready::Go => {}
            Ready::Stop => break,
            Ready::Failed(msg) => {
                run.never_started(job, name, msg);
                skip_rest(&mut rx).await;
                continue;
            }
        }
        let table = MirrorTable::from_source(schema, &plan.info);
        let span = info_span!("table", client = %client, table = %name);
        job.options.report(|p| p.table_started(name));
        let limit = run.limits.get(name).copied();
        match sync_table(job, &plan, &table, &mut rx, limit).instrument(span).await {
            Ok(tr) => run.synced(job, name, tr),
            Err(TableFailure::Table(msg)) => run.not_synced(job, name, msg),
            Err(TableFailure::Fatal(e)) => {
                job.options.report(|p| p.table_done(name, 0, Some(&e.to_string())));
                run.stop();
                fatal = Some(e);
                break;
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
            run.stop();
            Err(SyncError::Source { client, source: e })
        }
        Err(e) => {
            run.stop();
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
        target::TargetError::Db { source, .. }
        | target::TargetError::Store { source: store::StoreError::Db { source, .. }, .. }
            if is_connection_error(source) =>
        {
            TableFailure::Fatal(SyncError::Target { client: client.to_string(), source: e })
        }
        target::TargetError::Db { .. } | target::TargetError::Store { .. } => TableFailure::Table(e.to_string()),
    }
}

fn is_connection_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Protocol(_))
}
