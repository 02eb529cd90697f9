//! The source side of a sync, on a blocking thread: for each selected table, walk its
//! pages, decide between a full and an incremental pass, and read its rows in slices.
//!
//! Consistency of the page state with the rows read: in WAL mode a table's walk and
//! reads run in ONE read transaction (a WAL reader never blocks the writer), so the state
//! describes exactly the rows read. In rollback-journal mode a read transaction would
//! block the writer's COMMIT, so the walk runs in short slices (restarted if a commit
//! lands in between) and every slice of rows is followed by `PRAGMA data_version`: the
//! rowid interval of a slice read after a commit is recorded as "suspect" and re-read by
//! the next sync, whatever its pages say (a leaf that changed and changed back would
//! otherwise hide the intermediate state the mirror got).

use std::collections::HashMap;
use std::path::PathBuf;

use tokio::sync::mpsc;

use crate::source::follow;
use crate::source::pages::{self, Capture, StateWrite, Stored, Walked};
use crate::source::{self, Slice, SliceReader, Source, TableInfo};

pub(super) enum Msg {
    Table(Box<TablePlan>),
    Slice(Slice),
    End(TableEnd),
    Failed(String),
}

/// What the reader will send for one table.
pub(super) struct TablePlan {
    pub info: TableInfo,
    /// `Some`: an incremental pass that re-reads only these rowid ranges.
    pub ranges: Option<Vec<(i64, i64)>>,
    /// How the changes were found: `followed` (the pages the WAL follower named),
    /// `changed-pages` (a walk of every leaf), `full` (every row read).
    pub capture: &'static str,
    /// Pages the walk read.
    pub pages_read: u64,
}

/// What the reader learned once a table's rows were all sent.
#[derive(Default)]
pub(super) struct TableEnd {
    /// The page state to record with the rows (`None`: no usable walk; clear it).
    pub pages: Option<StateWrite>,
    /// Rows of the table at the walk.
    pub rows: Option<i64>,
    /// No leaf changed since the recorded state and nothing was read: the mirror and the
    /// recorded state are already right, so the table needs no PostgreSQL transaction.
    pub unchanged: bool,
    /// The state for the follower to keep once recorded (`follow::Keep`).
    pub keep: Option<follow::Keep>,
}

/// Recorded `(source_ddl, page state)` of each table by name.
pub(super) type Previous = HashMap<String, (String, Stored)>;

pub(super) struct ReaderJob {
    pub path: PathBuf,
    pub schema: String,
    /// Taken out table by table: a table's recorded state is freed once compared, but for
    /// its base, which the next state is recorded against (`StateWrite`).
    pub previous: std::sync::Mutex<Previous>,
    /// Read every table in full (`owsyncctl sync --full`).
    pub full: bool,
}

/// The tables a sync's readers still have to take (`super::queue`).
pub(super) type Queue = std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<TableInfo>>>;

/// Reads tables taken from `queue` on a blocking thread with its own SQLite connection
/// (`open`, or a new one), a slice at a time, until the queue is empty.
pub(super) fn spawn_reader(
    job: std::sync::Arc<ReaderJob>,
    queue: Queue,
    tx: mpsc::Sender<Msg>,
    open: Option<Source>,
) -> tokio::task::JoinHandle<Result<(), source::SourceError>> {
    tokio::task::spawn_blocking(move || {
        let src = match open {
            Some(src) => src,
            None => Source::open(&job.path)?,
        };
        let wal = pages::is_wal(&src)?;
        let follower = if wal { follow::lookup(&job.path) } else { None };
        while let Some(t) = queue.lock().ok().and_then(|mut q| q.pop_front()) {
            let target = crate::sql::qualified(&job.schema, &t.name);
            let previous = job.previous.lock().ok().and_then(|mut p| p.remove(&t.name));
            let old = previous.filter(|(ddl, _)| !job.full && ddl == &t.ddl).map(|(_, b)| b);
            let in_txn = wal && !t.without_rowid;
            let txn = if in_txn { Some(src.read_txn(&t.name)?) } else { None };
            let start = match (&follower, &txn) {
                (Some(h), Some(txn)) => Some(txn.follow(h.clone(), &t.name)?),
                _ => None,
            };
            let go_on = table_pass(&src, t, old, &target, in_txn, start, &tx);
            if let Some(txn) = txn {
                txn.end()?;
            }
            if !go_on {
                return Ok(());
            }
        }
        Ok(())
    })
}

/// One table: walk, plan, rows, end; `false` when the receiver is gone.
fn table_pass(
    src: &Source,
    t: TableInfo,
    old: Option<Stored>,
    target: &str,
    in_txn: bool,
    start: Option<follow::Start>,
    tx: &mpsc::Sender<Msg>,
) -> bool {
    let started = std::time::Instant::now();
    let cap = match Capture::begin(src, &t, old, target, in_txn, start) {
        Ok(c) => c,
        Err(e) => return walk_failed(t, &e, tx),
    };
    let walk_ms = started.elapsed().as_secs_f64() * 1e3;
    let plan =
        TablePlan { info: t.clone(), ranges: cap.ranges.clone(), capture: cap.how(), pages_read: cap.pages_read };
    if tx.blocking_send(Msg::Table(Box::new(plan))).is_err() {
        return false;
    }
    let Some(rows) = send_rows(src, &t, cap.ranges.clone(), cap.walked.as_ref(), in_txn, tx) else {
        return false;
    };
    tracing::debug!(table = %t.name, walk_ms, read_ms = started.elapsed().as_secs_f64() * 1e3 - walk_ms,
                    leaves = cap.walked.as_ref().map_or(0, |w| w.state.leaf_count()), "table read");
    let end = match cap.finish(&rows.suspect, rows.read_any, target) {
        Some(s) => TableEnd { pages: Some(s.pages), rows: Some(s.rows), unchanged: s.unchanged, keep: s.keep },
        None => TableEnd::default(),
    };
    tx.blocking_send(Msg::End(end)).is_ok()
}

/// What a table's rows were, once all sent.
struct RowsSent {
    /// Rowid intervals read after a writer's commit (rollback journal): re-read next time.
    suspect: Vec<(i64, i64)>,
    /// Any row at all was read.
    read_any: bool,
}

/// The walk failed: the table is read in full and fails at once; `false` when the
/// receiver is gone.
fn walk_failed(t: TableInfo, e: &source::SourceError, tx: &mpsc::Sender<Msg>) -> bool {
    let plan = TablePlan { info: t, ranges: None, capture: "full", pages_read: 0 };
    tx.blocking_send(Msg::Table(Box::new(plan))).is_ok()
        && tx.blocking_send(Msg::Failed(e.to_string())).is_ok()
        && tx.blocking_send(Msg::End(TableEnd::default())).is_ok()
}

/// Sends `t`'s rows (those in `ranges`, or all) slice by slice; `None` when the receiver
/// is gone. A read error is sent as `Failed` and ends the rows.
fn send_rows(
    src: &Source,
    t: &TableInfo,
    ranges: Option<Vec<(i64, i64)>>,
    walked: Option<&Walked>,
    in_txn: bool,
    tx: &mpsc::Sender<Msg>,
) -> Option<RowsSent> {
    let mut reader = match ranges {
        Some(r) => SliceReader::with_ranges(src, t, r),
        None => SliceReader::new(src, t),
    };
    if !in_txn {
        // Rollback journal: the writer's COMMIT waits for each slice's read lock. A busy
        // machine stretches a slice's CPU time several-fold in wall time: keep it short.
        reader.max_time = source::ROLLBACK_SLICE;
        reader.yield_to_writers = true;
    }
    let mut sent = RowsSent { suspect: Vec::new(), read_any: false };
    loop {
        if !in_txn {
            // Let a writer's transaction finish first, then start on a fresh scheduler time
            // slice: a reader preempted while it holds the lock makes the writer wait for as
            // long as it is off the CPU (source/pace.rs).
            src.before_slice();
        }
        let slice = reader.next_slice().and_then(|s| match (walked, s) {
            (Some(w), Some(s)) if !in_txn => {
                if pages::data_version(src)? != w.data_version
                    && let Some(iv) = s.scanned
                {
                    sent.suspect.push(iv);
                }
                Ok(Some(s))
            }
            (_, s) => Ok(s),
        });
        match slice {
            Ok(Some(s)) => {
                sent.read_any |= !s.rows.is_empty();
                tx.blocking_send(Msg::Slice(s)).ok()?;
            }
            Ok(None) => break,
            Err(e) => {
                let _ = tx.blocking_send(Msg::Failed(e.to_string()));
                break;
            }
        }
    }
    Some(sent)
}
