//! One sync of one tenant, SQLite -> PostgreSQL: discover the source's tables, copy each
//! one in keyset slices through COPY into a stage, upsert, tombstone what disappeared,
//! record the table's state, and commit only if this replica still holds the lease.
//! A library: usable without the daemon (`owsyncctl sync NAME --once`).

pub mod drift;
pub mod progress;
mod provision;
mod queue;
mod reader;
mod skip;

pub use queue::{DEFAULT_TABLE_CONNECTIONS, set_table_connections, table_connections};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use tracing::{Instrument, info, info_span, warn};

use crate::source;
use crate::spec::{ClientSyncSpec, DeletePolicy};
use crate::store::{self, lease::Candidate};
use crate::target::conflict::{self, ConflictCounts, ConflictCtx};
use crate::target::{self, MirrorTable};
use reader::{Msg, ReaderJob, TableEnd, TablePlan};

/// Proof of leadership a sync's transactions are fenced with.
#[derive(Debug, Clone)]
pub struct Fence {
    pub who: Candidate,
    pub epoch: i64,
}

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
}

impl SyncError {
    pub fn is_ownership_lost(&self) -> bool {
        matches!(self, SyncError::OwnershipLost { .. })
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
    let store_err = |source| SyncError::Store { client: client.clone(), source };
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
    let (mut report, discovered) = sync_all(job, full).await?;
    report.drift = drift::check_against(job, &discovered)
        .await
        .inspect_err(|e| warn!(error = %e, "cannot check schema drift"))
        .ok();
    if report.failed.is_empty() && !skip::record(job, &fp).await.map_err(store_err)? {
        return Err(SyncError::OwnershipLost { client, epoch: job.fence.map_or(0, |f| f.epoch) });
    }
    report.duration = started.elapsed();
    Ok(report)
}

async fn sync_all(job: &SyncJob<'_>, full: bool) -> Result<(SyncReport, Vec<source::TableInfo>), SyncError> {
    let started = Instant::now();
    let client = job.client.to_string();
    let schema = job.spec.mirror_schema(job.client);
    let previous =
        skip::page_states(job, &schema).await.map_err(|source| SyncError::Store { client: client.clone(), source })?;
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
    let unprovisioned = provision::provision_tables(job, &schema, early, full).await?;
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
    };
    let provisioner = async {
        let r = provision::provision_tables(job, &schema, late, full).await;
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
    info!(client = %client, rows = report.rows_written, tables = report.tables.len(), failed = report.failed.len(),
          ms = report.duration.as_millis() as u64, "sync finished");
    Ok((report, discovered))
}

/// What a sync's workers share.
struct Shared {
    queue: reader::Queue,
    /// A worker met a fatal error: the others stop after their current table.
    stop: AtomicBool,
    report: Mutex<SyncReport>,
    /// Tables provisioned while the first ones copy; `late_done` turns true when that is
    /// over, with the ones that could not be provisioned in `late_failed`.
    late: std::collections::HashSet<String>,
    late_failed: Mutex<BTreeMap<String, String>>,
    late_done: tokio::sync::watch::Receiver<bool>,
}

impl Shared {
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
    shared: &Shared,
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
        let done = sync_table(job, &plan, &table, &mut rx).instrument(span).await;
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

enum TableFailure {
    /// Stops the whole sync (lost lease, database gone).
    Fatal(SyncError),
    /// Only this table failed; the others go on.
    Table(String),
}

/// A pooled connection that is closed, not returned to the pool, when dropped while
/// `armed`: a table's transaction cancelled midway (the leader aborts its reconcilers)
/// must not hand its connection to anyone else. A COPY dropped midway leaves the
/// connection's protocol state out of step (sqlx 0.9's `PgCopyIn` drop sends a CopyFail
/// whose answer nobody reads): its next user got "expected ParseComplete, got
/// BindComplete" or a BEGIN inside a transaction still open.
struct Guarded {
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    armed: bool,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.armed {
            self.conn.close_on_drop();
        }
    }
}

/// Drains the rest of a table's slices from the reader.
async fn skip_rest(rx: &mut mpsc::Receiver<Msg>) {
    while let Some(m) = rx.recv().await {
        if matches!(m, Msg::End(_) | Msg::Failed(_)) {
            if matches!(m, Msg::Failed(_)) {
                // a Failed is followed by End
                continue;
            }
            return;
        }
    }
}

/// What the reader sent of one table.
struct Read {
    rows: i64,
    end: TableEnd,
    quarantined: Vec<target::Quarantined>,
}

/// Streams a table's slices from the reader through one COPY into `dest`, until its
/// `End`; the rows the COPY wrote. On failure the COPY is abandoned (the caller rolls back).
async fn copy_rows(
    conn: &mut PgConnection,
    table: &MirrorTable,
    dest: target::copy::Dest,
    mut first: Option<Msg>,
    rx: &mut mpsc::Receiver<Msg>,
    read: &mut Read,
    client: &str,
) -> Result<u64, TableFailure> {
    let mut copy = target::copy::TableCopy::new(conn, table, dest);
    loop {
        let msg = match first.take() {
            Some(m) => Some(m),
            None => rx.recv().await,
        };
        match msg {
            Some(Msg::Slice(s)) => {
                read.rows += s.rows.len() as i64;
                if !s.rows.is_empty() {
                    match copy.send(&s).await {
                        Ok(q) => read.quarantined.extend(q),
                        Err(e) => return Err(table_failure(client, e)),
                    }
                }
                progress::report(|p| p.slice(&table.name, s.rows.len() as u64, s.bytes as u64));
            }
            Some(Msg::Failed(m)) => {
                copy.abort().await;
                return Err(TableFailure::Table(m));
            }
            Some(Msg::End(e)) => {
                read.end = e;
                break;
            }
            None | Some(Msg::Table(_)) => break,
        }
    }
    copy.finish().await.map_err(|e| table_failure(client, e))
}

async fn sync_table(
    job: &SyncJob<'_>,
    plan: &TablePlan,
    table: &MirrorTable,
    rx: &mut mpsc::Receiver<Msg>,
) -> Result<TableReport, TableFailure> {
    let client = job.client.to_string();
    // An incremental pass with no changed leaf: when the walk matches the recorded state
    // exactly, the mirror is already right and the table costs no transaction at all.
    let mut first: Option<Msg> = None;
    if plan.ranges.as_ref().is_some_and(|r| r.is_empty()) {
        match rx.recv().await {
            Some(Msg::End(e)) if e.unchanged => {
                let rows = e.rows.unwrap_or_default();
                return Ok(TableReport { rows, incremental: true, ..Default::default() });
            }
            m => first = m,
        }
    }
    let fatal_store =
        |e: store::StoreError| TableFailure::Fatal(SyncError::Store { client: client.clone(), source: e });
    let db_err = |context: &str, e: sqlx::Error| {
        fatal_store(store::StoreError::Db { context: format!("{context} for table {}", plan.info.name), source: e })
    };
    let mut guarded =
        Guarded { conn: job.pool.acquire().await.map_err(|e| db_err("acquire a connection", e))?, armed: true };
    let mut tx = sqlx::Connection::begin(&mut *guarded.conn).await.map_err(|e| db_err("begin transaction", e))?;
    // As `store::begin` marks a transaction: the cluster for RLS, and owsync as the writer
    // (conflict tracking). And this transaction's COMMIT does not wait for its WAL flush.
    // Safe: the table's rows and its table_state commit together, so a commit lost in a
    // crash loses both, and the next sync, finding the old state (or none), simply redoes
    // the table. The fingerprint that lets a later sync skip the whole source is recorded
    // afterwards by `skip::record` in a synchronous commit, which flushes the WAL up to
    // itself, and so every table transaction before it: no skip can rest on a lost table.
    sqlx::query(
        "SELECT set_config('app.current_host_id', $1, true), set_config('owsync.writer', 'on', true),
                set_config('synchronous_commit', 'off', true)",
    )
    .bind(job.cluster)
    .execute(&mut *tx)
    .await
    .map_err(|e| db_err("set up the transaction", e))?;
    let target_err = |e: target::TargetError| table_failure(&client, e);
    let info = &plan.info;
    let mut read = Read { rows: 0, end: TableEnd::default(), quarantined: Vec::new() };
    let mut direct = false;
    let result: Result<(target::MergeCounts, ConflictCounts), TableFailure> = async {
        let cctx = ConflictCtx { cluster: job.cluster, client: job.client, policy: &job.spec.conflicts };
        let tombstones = job.spec.deletes == DeletePolicy::Tombstone;
        let full_pass = plan.ranges.is_none();
        let (empty, synced_at) = target::copy::mirror_is_empty(&mut tx, table).await.map_err(target_err)?;
        direct = empty;
        let (counts, conflicts) = if empty {
            // Straight into the empty mirror (a first sync, a new table, a re-created
            // mirror): every row is new, so there is no conflict to resolve, nothing to
            // upsert over and nothing to tombstone.
            let dest = target::copy::Dest::Mirror { synced_at };
            let copied = copy_rows(&mut tx, table, dest, first.take(), rx, &mut read, &client).await?;
            // Only now the conflict tracking of a new table: a BEFORE INSERT trigger makes
            // COPY insert row by row instead of in batches. resolve_stage only provisions
            // it here: it looks at the stage only when a mirror row is stamped, and the
            // rows just copied, written by owsync, are not.
            let conflicts = conflict::resolve_stage(&mut tx, table, &cctx).await.map_err(target_err)?;
            (target::MergeCounts { upserted: copied, tombstoned: 0 }, conflicts)
        } else {
            target::begin_stage(&mut tx, table).await.map_err(target_err)?;
            copy_rows(&mut tx, table, target::copy::Dest::Stage, first.take(), rx, &mut read, &client).await?;
            let conflicts = conflict::resolve_stage(&mut tx, table, &cctx).await.map_err(target_err)?;
            let mut counts = target::merge_stage(&mut tx, table, tombstones && full_pass).await.map_err(target_err)?;
            if let (Some(ranges), true) = (&plan.ranges, tombstones) {
                counts.tombstoned +=
                    target::ranges::tombstone_in_ranges(&mut tx, table, ranges).await.map_err(target_err)?;
            }
            (counts, conflicts)
        };
        target::record_quarantine(&mut tx, job.cluster, job.client, table, &read.quarantined, full_pass)
            .await
            .map_err(target_err)?;
        Ok((counts, conflicts))
    }
    .await;
    let (counts, conflicts) = match result {
        Ok(c) => c,
        Err(e) => {
            skip_rest(rx).await;
            if tx.rollback().await.is_ok() {
                guarded.armed = false;
            }
            return Err(e);
        }
    };
    let Read { rows, end, quarantined } = read;
    let rows_read = rows as u64;
    let rows = if plan.ranges.is_some() { end.rows.unwrap_or(rows) } else { rows };
    record_table_state(&mut tx, job, plan, table, rows, end.pages).await.map_err(fatal_store)?;
    fence(&mut tx, job).await.map_err(TableFailure::Fatal)?;
    tx.commit().await.map_err(|e| {
        fatal_store(store::StoreError::Db { context: format!("commit table {}", info.name), source: e })
    })?;
    guarded.armed = false;
    // A page state (~6 MB at 100k chats) grew this connection's write buffer: back to the
    // pool at the default size, so idle connections do not keep it.
    sqlx::Connection::shrink_buffers(&mut *guarded.conn);
    if !quarantined.is_empty() {
        warn!(client = %job.client, table = %info.name, values = quarantined.len(),
              "values the mirror cannot hold were quarantined (see sync_metadata.quarantine)");
    }
    Ok(TableReport {
        rows,
        rows_read,
        incremental: plan.ranges.is_some(),
        direct,
        quarantined: quarantined.len() as u64,
        upserted: counts.upserted,
        tombstoned: counts.tombstoned,
        conflicts: conflicts.conflicts,
        pending_conflicts: conflicts.pending,
        kept_target: conflicts.kept_target,
        conflict_strategy: conflicts.strategy,
    })
}

/// The last statement before commit: does this replica still hold the lease?
async fn fence(conn: &mut PgConnection, job: &SyncJob<'_>) -> Result<(), SyncError> {
    let Some(f) = job.fence else { return Ok(()) };
    match store::lease::holds(conn, &f.who, f.epoch).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(SyncError::OwnershipLost { client: job.client.to_string(), epoch: f.epoch }),
        Err(e) => Err(SyncError::Store { client: job.client.to_string(), source: e }),
    }
}

async fn record_table_state(
    conn: &mut PgConnection,
    job: &SyncJob<'_>,
    plan: &TablePlan,
    table: &MirrorTable,
    rows: i64,
    // Owned: sqlx copies it into its arguments at `bind`, where it is freed at once.
    pages: Option<Vec<u8>>,
) -> Result<(), store::StoreError> {
    use store::Context;
    let info = &plan.info;
    let pass = if plan.ranges.is_some() { "incremental" } else { "full" };
    sqlx::query(
        "INSERT INTO sync_metadata.table_state (cluster_name, client_name, table_name, source_ddl, key_columns, rows, watermark, epoch, updated_at, source_indexes, pages)
         VALUES ($1, $2, $3, $4, $5, $6,
                 jsonb_build_object('synced_at', now(), 'pass', $10::text, 'mirror_oid', to_regclass($11)::oid::bigint,
                                   'shape', $12::text),
                 $7, now(), $8, $9)
         ON CONFLICT (cluster_name, client_name, table_name) DO UPDATE SET source_ddl = EXCLUDED.source_ddl,
             source_indexes = EXCLUDED.source_indexes,
             key_columns = EXCLUDED.key_columns, rows = EXCLUDED.rows, watermark = EXCLUDED.watermark,
             epoch = EXCLUDED.epoch, updated_at = now(), pages = EXCLUDED.pages",
    )
    .bind(job.cluster)
    .bind(job.client)
    .bind(&info.name)
    .bind(&info.ddl)
    .bind(info.key_columns())
    .bind(rows)
    .bind(job.fence.map(|f| f.epoch))
    .bind(&info.extra_ddl)
    .bind(pages)
    .bind(pass)
    .bind(table.qualified())
    .bind(target::shape_digest(table))
    .execute(conn)
    .await
    .ctx(|| format!("record state of table {}", info.name))?;
    Ok(())
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
