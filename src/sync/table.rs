//! One table of a sync: its own transaction on its own connection, fed by its reader's
//! slices: COPY straight into an empty mirror, or into a stage that is resolved against
//! conflicts, upserted and tombstoned; then its table_state, fenced, in the same commit.

use std::time::{Duration, Instant};

use sqlx::PgConnection;
use tokio::sync::mpsc;
use tracing::warn;

use super::reader::{Msg, TableEnd, TablePlan};
use super::{SyncError, SyncJob, TableReport, store_table_failure, table_failure};
use crate::source::pages::StateWrite;
use crate::spec::DeletePolicy;
use crate::store::{self, Durability, FencedTx, quarantine, table_state};
use crate::target::conflict::{self, ConflictCounts, ConflictCtx};
use crate::target::{self, MirrorTable};

pub(super) enum TableFailure {
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
pub(super) async fn skip_rest(rx: &mut mpsc::Receiver<Msg>) {
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
    /// The quarantine names of the rows read, when an incremental pass must resolve the
    /// open entries of those now fit.
    reread: Option<Vec<String>>,
}

/// Streams a table's slices from the reader through one COPY into `dest`, until its
/// `End`; the rows the COPY wrote. On failure the COPY is abandoned (the caller rolls back).
async fn copy_rows(
    conn: &mut PgConnection,
    step: &Step<'_, '_>,
    dest: target::copy::Dest,
    mut first: Option<Msg>,
    rx: &mut mpsc::Receiver<Msg>,
    read: &mut Read,
) -> Result<u64, TableFailure> {
    let (table, client) = (step.table, step.job.client);
    let mut copy = target::copy::TableCopy::new(conn, table, dest);
    // Where the COPY's time goes (debug log): waiting for the reader, encoding and sending.
    let (mut waited, mut sent, mut slices) = (Duration::ZERO, Duration::ZERO, 0u32);
    loop {
        let t = Instant::now();
        let msg = match first.take() {
            Some(m) => Some(m),
            None => rx.recv().await,
        };
        waited += t.elapsed();
        match msg {
            Some(Msg::Slice(s)) => {
                read.rows += s.rows.len() as i64;
                if let Some(keys) = read.reread.as_mut() {
                    keys.extend((0..s.rows.len()).map(|i| target::key_text(table, &s, i)));
                }
                if !s.rows.is_empty() {
                    let t = Instant::now();
                    match copy.send(&s).await {
                        Ok(q) => read.quarantined.extend(q),
                        Err(e) => return Err(table_failure(client, e)),
                    }
                    sent += t.elapsed();
                    slices += 1;
                }
                step.job.options.report(|p| p.slice(&table.name, s.rows.len() as u64, s.bytes as u64));
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
    let t = Instant::now();
    let copied = copy.finish().await.map_err(|e| table_failure(client, e))?;
    tracing::debug!(table = %table.name, slices, rows = read.rows, waited_ms = ms(waited), sent_ms = ms(sent),
                    finish_ms = ms(t.elapsed()), "rows copied");
    Ok(copied)
}

/// Milliseconds spent in each step of a table's transaction, for the debug log.
struct Phases {
    last: Instant,
    done: Vec<(&'static str, f64)>,
}

impl Phases {
    fn new() -> Phases {
        Phases { last: Instant::now(), done: Vec::new() }
    }

    fn mark(&mut self, step: &'static str) {
        let now = Instant::now();
        self.done.push((step, ms(now - self.last)));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (step, ms)) in self.done.iter().enumerate() {
            write!(f, "{}{step} {ms:.1}", if i > 0 { ", " } else { "" })?;
        }
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What the steps of a table's sync share.
struct Step<'s, 'a> {
    job: &'s SyncJob<'a>,
    plan: &'s TablePlan,
    table: &'s MirrorTable,
    /// The most rows this table may tombstone, and its rows at the last sync (`guard::limits`).
    limit: Option<(u64, i64)>,
}

impl Step<'_, '_> {
    fn target_err(&self) -> impl Fn(target::TargetError) -> TableFailure + '_ {
        move |e| table_failure(self.job.client, e)
    }

    /// Every row is read (no rowid ranges): the mirror's rows the source lacks are gone.
    fn full_pass(&self) -> bool {
        self.plan.ranges.is_none()
    }

    fn conflicts(&self) -> ConflictCtx<'_> {
        ConflictCtx { cluster: self.job.cluster, client: self.job.client, policy: &self.job.spec.conflicts }
    }

    fn quarantine(&self) -> quarantine::Of<'_> {
        quarantine::Of { cluster: self.job.cluster, client: self.job.client, table: &self.plan.info.name }
    }
}

/// What a table's transaction wrote to the mirror.
struct Written {
    counts: target::RowCounts,
    conflicts: ConflictCounts,
    /// Copied straight into the empty mirror.
    direct: bool,
}

/// Syncs one table in its own transaction on its own connection: its rows (`write_rows`),
/// then its table_state, committed only if this replica still holds the lease.
pub(super) async fn sync_table(
    job: &SyncJob<'_>,
    plan: &TablePlan,
    table: &MirrorTable,
    rx: &mut mpsc::Receiver<Msg>,
    // The most rows this table may tombstone, and its rows at the last sync (`guard::limits`).
    limit: Option<(u64, i64)>,
) -> Result<TableReport, TableFailure> {
    let first = match unchanged(plan, rx).await {
        Ok(report) => return Ok(report),
        Err(first) => first,
    };
    let info = &plan.info;
    let fatal_store = |e: store::StoreError| TableFailure::Fatal(SyncError::store(job.client, e));
    let conn = job.pool.acquire().await.map_err(|e| {
        let context = format!("acquire a connection for table {}", info.name);
        fatal_store(store::StoreError::Db { context, source: e })
    })?;
    let mut guarded = Guarded { conn, armed: true };
    // Marked as `store::begin` marks a transaction, and this transaction's COMMIT does not
    // wait for its WAL flush (`Durability::Relaxed`). Safe: the table's rows and its
    // table_state commit together, so a commit lost in a crash loses both, and the next
    // sync, finding the old state (or none), simply redoes the table. The fingerprint that
    // lets a later sync skip the whole source is recorded afterwards by `skip::record` in a
    // synchronous commit, which flushes the WAL up to itself, and so every table
    // transaction before it: no skip can rest on a lost table.
    let mut tx = FencedTx::begin_on(&mut guarded.conn, job.cluster, job.fence, Durability::Relaxed)
        .await
        .map_err(fatal_store)?;
    let step = Step { job, plan, table, limit };
    let mut read = Read { rows: 0, end: TableEnd::default(), quarantined: Vec::new(), reread: None };
    let mut phases = Phases::new();
    let written = match write_rows(&mut tx, &step, first, rx, &mut read, &mut phases).await {
        Ok(w) => w,
        Err(e) => {
            skip_rest(rx).await;
            if tx.rollback().await.is_ok() {
                guarded.armed = false;
            }
            return Err(e);
        }
    };
    let Read { rows, end, quarantined, .. } = read;
    let rows_read = rows as u64;
    let rows = if plan.ranges.is_some() { end.rows.unwrap_or(rows) } else { rows };
    phases.mark("quarantine");
    let version = record_table_state(&mut tx, job, plan, table, rows, end.pages).await.map_err(fatal_store)?;
    phases.mark("state");
    // The last statement before commit: does this replica still hold the lease?
    tx.commit().await.map_err(fatal_store)?;
    phases.mark("commit");
    match end.keep {
        Some(k) => k.remember(Some(version)),
        None => crate::source::follow::forget_recorded(std::path::Path::new(&job.spec.source.path), &info.name),
    }
    tracing::debug!(table = %info.name, phases = %phases, "table written");
    guarded.armed = false;
    // A page state (~6 MB at 100k chats) grew this connection's write buffer: back to the
    // pool at the default size, so idle connections do not keep it.
    sqlx::Connection::shrink_buffers(&mut *guarded.conn);
    if !quarantined.is_empty() {
        warn!(client = %job.client, table = %info.name, values = quarantined.len(),
              "values the mirror cannot hold were quarantined (see sync_metadata.quarantine)");
    }
    Ok(step.report(rows, rows_read, quarantined.len() as u64, written))
}

/// An incremental pass with no changed leaf: when the walk matches the recorded state
/// exactly, the mirror is already right and the table costs no transaction at all (its
/// report). Otherwise the reader's first message, not yet handled.
async fn unchanged(plan: &TablePlan, rx: &mut mpsc::Receiver<Msg>) -> Result<TableReport, Option<Msg>> {
    if !plan.ranges.as_ref().is_some_and(std::vec::Vec::is_empty) {
        return Err(None);
    }
    match rx.recv().await {
        Some(Msg::End(e)) if e.unchanged => {
            if let Some(k) = e.keep {
                k.remember(None);
            }
            let rows = e.rows.unwrap_or_default();
            let (capture, pages_read) = (plan.capture, plan.pages_read);
            Ok(TableReport { rows, incremental: true, capture, pages_read, ..Default::default() })
        }
        m => Err(m),
    }
}

/// Writes the table's rows, then records its quarantined values: straight into an empty
/// mirror, else through the stage.
async fn write_rows(
    tx: &mut PgConnection,
    s: &Step<'_, '_>,
    first: Option<Msg>,
    rx: &mut mpsc::Receiver<Msg>,
    read: &mut Read,
    phases: &mut Phases,
) -> Result<Written, TableFailure> {
    let (empty, synced_at) = target::copy::mirror_is_empty(tx, s.table).await.map_err(s.target_err())?;
    let (counts, conflicts) = if empty {
        copy_direct(tx, s, synced_at, first, rx, read).await?
    } else {
        stage_and_merge(tx, s, first, rx, read, phases).await?
    };
    quarantine::record(tx, s.quarantine(), &read.quarantined, s.full_pass(), read.reread.as_deref())
        .await
        .map_err(|e| store_table_failure(s.job.client, e))?;
    Ok(Written { counts, conflicts, direct: empty })
}

/// Straight into the empty mirror (a first sync, a new table, a re-created mirror): every
/// row is new, so there is no conflict to resolve, nothing to upsert over and nothing to
/// tombstone.
async fn copy_direct(
    tx: &mut PgConnection,
    s: &Step<'_, '_>,
    synced_at: target::copy::SyncedAt,
    first: Option<Msg>,
    rx: &mut mpsc::Receiver<Msg>,
    read: &mut Read,
) -> Result<(target::RowCounts, ConflictCounts), TableFailure> {
    let dest = target::copy::Dest::Mirror { synced_at };
    let copied = copy_rows(tx, s, dest, first, rx, read).await?;
    // Only now the conflict tracking of a new table: a BEFORE INSERT trigger makes COPY
    // insert row by row instead of in batches. resolve_stage only provisions it here: it
    // looks at the stage only when a mirror row is stamped, and the rows just copied,
    // written by owsync, are not.
    let conflicts = conflict::resolve_stage(tx, s.table, &s.conflicts()).await.map_err(s.target_err())?;
    Ok((target::RowCounts { upserted: copied, tombstoned: 0 }, conflicts))
}

/// A mirror with rows: the slices are copied into the stage, which is resolved against
/// conflicts and upserted into the mirror; the mirror's rows the source no longer has are
/// tombstoned (all of them in a full pass, those in the re-read ranges in an incremental
/// one), unless that goes beyond the deletion guard's limit: then the whole sync is held.
async fn stage_and_merge(
    tx: &mut PgConnection,
    s: &Step<'_, '_>,
    first: Option<Msg>,
    rx: &mut mpsc::Receiver<Msg>,
    read: &mut Read,
    phases: &mut Phases,
) -> Result<(target::RowCounts, ConflictCounts), TableFailure> {
    let tombstones = s.job.spec.deletes == DeletePolicy::Tombstone;
    target::stage::create(tx, s.table).await.map_err(s.target_err())?;
    phases.mark("stage");
    if !s.full_pass()
        && quarantine::has_open(tx, s.quarantine()).await.map_err(|e| store_table_failure(s.job.client, e))?
    {
        read.reread = Some(Vec::new());
    }
    copy_rows(tx, s, target::copy::Dest::Stage, first, rx, read).await?;
    phases.mark("copy");
    let conflicts = conflict::resolve_stage(tx, s.table, &s.conflicts()).await.map_err(s.target_err())?;
    phases.mark("conflicts");
    let mut counts = target::stage::upsert(tx, s.table, tombstones && s.full_pass()).await.map_err(s.target_err())?;
    phases.mark("merge");
    if let (Some(ranges), true) = (&s.plan.ranges, tombstones) {
        counts.tombstoned += target::ranges::tombstone_in_ranges(tx, s.table, ranges).await.map_err(s.target_err())?;
    }
    phases.mark("tombstones");
    if let Some((max, live)) = s.limit
        && counts.tombstoned > max
    {
        let plan = Box::new(super::guard::exceeded(&s.plan.info.name, live, counts.tombstoned));
        let (client, message) = (s.job.client.to_string(), String::new());
        return Err(TableFailure::Fatal(SyncError::DeletionsHeld { client, plan, message }));
    }
    Ok((counts, conflicts))
}

impl Step<'_, '_> {
    /// The table's report, once its transaction committed.
    fn report(&self, rows: i64, rows_read: u64, quarantined: u64, w: Written) -> TableReport {
        let plan = self.plan;
        TableReport {
            rows,
            rows_read,
            incremental: plan.ranges.is_some(),
            capture: plan.capture,
            pages_read: plan.pages_read,
            direct: w.direct,
            quarantined,
            upserted: w.counts.upserted,
            tombstoned: w.counts.tombstoned,
            conflicts: w.conflicts.conflicts,
            pending_conflicts: w.conflicts.pending,
            kept_target: w.conflicts.kept_target,
            conflict_strategy: w.conflicts.strategy,
        }
    }
}

/// Records the table's state in the table's transaction, committed with its rows (`store::table_state`).
async fn record_table_state(
    conn: &mut PgConnection,
    job: &SyncJob<'_>,
    plan: &TablePlan,
    table: &MirrorTable,
    rows: i64,
    // Owned: sqlx copies it into its arguments at `bind`, where it is freed at once.
    pages: Option<StateWrite>,
) -> Result<String, store::StoreError> {
    let info = &plan.info;
    // A delta keeps the recorded base (`source::pages::StateWrite`); a whole state replaces both.
    let pages = match pages {
        Some(StateWrite::Full(b)) => table_state::Pages::Base(b),
        Some(StateWrite::Delta(d)) => table_state::Pages::Delta(d),
        None => table_state::Pages::None,
    };
    let state = table_state::TableState {
        cluster: job.cluster,
        client: job.client,
        table: &info.name,
        source_ddl: &info.ddl,
        source_indexes: &info.extra_ddl,
        key_columns: info.key_columns(),
        rows,
        epoch: job.fence.map(|f| f.epoch),
        pass: if plan.ranges.is_some() { "incremental" } else { "full" },
        mirror: &table.qualified(),
        shape: &target::shape_digest(table),
        pages,
    };
    table_state::record(conn, state).await
}
