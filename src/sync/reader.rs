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

use crate::source::follow::{self, TableMemo};
use crate::source::pages::{self, Memo, Recorded, Walked};
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
}

/// Recorded `(source_ddl, page state)` of each table by name.
pub(super) type Previous = HashMap<String, (String, Stored)>;

/// A table's page state as `table_state` holds it: a base state (`pages`) and, when a sync
/// wrote only what changed since, a delta against it (`pages_delta`, `pages::delta`).
pub(super) struct Stored {
    pub base: Vec<u8>,
    pub delta: Option<Vec<u8>>,
}

impl Stored {
    /// The state as of the last sync; `None` when the delta does not fit the base (then
    /// there is no usable state: a full pass).
    fn state(&self, target: &str) -> Option<std::borrow::Cow<'_, [u8]>> {
        match &self.delta {
            None => Some(std::borrow::Cow::Borrowed(&self.base)),
            Some(d) => pages::delta::apply(&self.base, d, target).map(std::borrow::Cow::Owned),
        }
    }
}

/// How a sync records a table's new page state.
pub(super) enum StateWrite {
    /// The whole state, as the new base (no delta).
    Full(Vec<u8>),
    /// Only what changed since the recorded base, which stays.
    Delta(Vec<u8>),
}

impl StateWrite {
    /// A delta when there is a base to make it against and it is at most a quarter of the
    /// whole state; otherwise the whole state, which then becomes the base.
    fn choose(base: Option<&[u8]>, new: Vec<u8>, target: &str) -> StateWrite {
        match base.and_then(|b| pages::delta::between(b, &new, target)) {
            Some(d) if d.len() * 4 <= new.len() => StateWrite::Delta(d),
            _ => StateWrite::Full(new),
        }
    }
}

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

/// Reads tables taken from `queue` on a blocking thread with its own SQLite connection,
/// a slice at a time, until the queue is empty.
pub(super) fn spawn_reader(
    job: std::sync::Arc<ReaderJob>,
    queue: Queue,
    tx: mpsc::Sender<Msg>,
) -> tokio::task::JoinHandle<Result<(), source::SourceError>> {
    tokio::task::spawn_blocking(move || {
        let src = Source::open(&job.path)?;
        let wal = pages::is_wal(&src)?;
        let follower = if wal { follow::lookup(&job.path) } else { None };
        while let Some(t) = queue.lock().ok().and_then(|mut q| q.pop_front()) {
            let target = crate::sql::qualified(&job.schema, &t.name);
            let previous = job.previous.lock().ok().and_then(|mut p| p.remove(&t.name));
            let old = previous.filter(|(ddl, _)| !job.full && ddl == &t.ddl).map(|(_, b)| b);
            let in_txn = wal && !t.without_rowid;
            if in_txn {
                src.conn.execute_batch("BEGIN").map_err(src.err(&t.name))?;
            }
            let start = match &follower {
                Some(h) if in_txn => {
                    // The snapshot begins with the transaction's first read.
                    src.conn
                        .query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
                        .map_err(src.err(&t.name))?;
                    Some(follow::start(h.clone(), &src.conn, &t.name))
                }
                _ => None,
            };
            let go_on = table_pass(&src, t, old, &target, in_txn, start, &tx);
            if in_txn {
                src.conn.execute_batch("COMMIT").map_err(src.err("COMMIT"))?;
            }
            if !go_on {
                return Ok(());
            }
        }
        Ok(())
    })
}

/// A table's walk, and how it went.
#[derive(Default)]
struct WalkOut {
    walked: Option<Walked>,
    followed: bool,
    pages_read: u64,
    memo: Option<Memo>,
}

/// Walks `t`: only what the WAL follower names when it can vouch for the interval since
/// the walk that made the recorded state (`recorded`, same digest), else every leaf.
fn walk_table(
    src: &Source,
    t: &TableInfo,
    recorded: Option<&[u8]>,
    target: &str,
    in_txn: bool,
    start: &mut Option<follow::Start>,
) -> Result<WalkOut, source::SourceError> {
    if t.without_rowid {
        return Ok(WalkOut::default());
    }
    let before = src.pages_read();
    if let Some((changed, mut tm)) = start.as_mut().and_then(|s| s.since.take())
        && let Some(rec) = recorded.filter(|r| xxhash_rust::xxh3::xxh3_128(r) == tm.digest)
        && let Some(old) = Recorded::parse(rec, target)
        && let Some((w, read)) = pages::walk_followed(src, &t.name, &old, &changed, &mut tm.memo)?
    {
        return Ok(WalkOut { walked: Some(w), followed: true, pages_read: read, memo: Some(tm.memo) });
    }
    let mut memo = start.is_some().then(Memo::default);
    let walked = pages::walk_noting(src, &t.name, in_txn, memo.as_mut())?;
    Ok(WalkOut { walked, followed: false, pages_read: src.pages_read() - before, memo })
}

/// One table: walk, plan, rows, end; `false` when the receiver is gone.
fn table_pass(
    src: &Source,
    t: TableInfo,
    old: Option<Stored>,
    target: &str,
    in_txn: bool,
    mut start: Option<follow::Start>,
    tx: &mpsc::Sender<Msg>,
) -> bool {
    let started = std::time::Instant::now();
    // The recorded state as stored (or as its delta makes it); its digest is kept, to tell
    // an unchanged table at the end, and its base, to record the next state against.
    let recorded = old.as_ref().and_then(|s| s.state(target));
    let out = match walk_table(src, &t, recorded.as_deref(), target, in_txn, &mut start) {
        Ok(w) => w,
        Err(e) => return walk_failed(t, &e, tx),
    };
    let digest = recorded.as_deref().map(xxhash_rust::xxh3::xxh3_128);
    let ranges = changed_ranges(out.walked.as_ref(), recorded.as_deref(), target);
    let usable = recorded.is_some();
    // The recorded state is freed before any row is read.
    drop(recorded);
    let before = Before { digest, base: old.map(|s| s.base).filter(|_| usable) };
    let walk_ms = started.elapsed().as_secs_f64() * 1e3;
    let capture = match (&ranges, out.followed) {
        (None, _) => "full",
        (Some(_), true) => "followed",
        (Some(_), false) => "changed-pages",
    };
    let plan = TablePlan { info: t.clone(), ranges: ranges.clone(), capture, pages_read: out.pages_read };
    if tx.blocking_send(Msg::Table(Box::new(plan))).is_err() {
        return false;
    }
    let Some(rows) = send_rows(src, &t, ranges, out.walked.as_ref(), in_txn, tx) else {
        return false;
    };
    tracing::debug!(table = %t.name, walk_ms, read_ms = started.elapsed().as_secs_f64() * 1e3 - walk_ms,
                    leaves = out.walked.as_ref().map_or(0, |w| w.state.leaf_count()), "table read");
    let end = match out.walked {
        Some(w) => table_end(&t, target, w, &rows, &before, start.as_ref().zip(out.memo)),
        None => TableEnd::default(),
    };
    tx.blocking_send(Msg::End(end)).is_ok()
}

/// What a table's pass keeps of its recorded state once the walk is done.
struct Before {
    /// The recorded state's digest: an unchanged walk makes the same.
    digest: Option<u128>,
    /// The recorded base, which the next state may be a delta against (`StateWrite`).
    base: Option<Vec<u8>>,
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

/// The rowid ranges of the leaves that changed since the recorded state; `None` (a full
/// pass) without a walk or a usable recorded state, or when most leaves changed (a
/// VACUUM, a bulk rewrite): a plain full pass is cheaper then.
fn changed_ranges(walked: Option<&Walked>, recorded: Option<&[u8]>, target: &str) -> Option<Vec<(i64, i64)>> {
    let (w, old) = (walked?, Recorded::parse(recorded?, target)?);
    let c = pages::diff_recorded(&old, &w.state);
    (c.changed_leaves * 2 <= c.total_leaves).then_some(c.ranges)
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

/// The table's new page state (the walk's, with the suspect intervals), to record as a
/// delta or a new base, and whether the table is unchanged; notes for the WAL follower
/// what the next sync follows on from, should this state be recorded.
fn table_end(
    t: &TableInfo,
    target: &str,
    w: Walked,
    rows: &RowsSent,
    before: &Before,
    follow: Option<(&follow::Start, Memo)>,
) -> TableEnd {
    let mut state = w.state;
    state.add_suspect(&rows.suspect);
    let pages = state.encode(target);
    let digest = xxhash_rust::xxh3::xxh3_128(&pages);
    let unchanged = !rows.read_any && before.digest == Some(digest);
    if let Some((s, memo)) = follow
        && let Some((instance, mark)) = s.mark
    {
        follow::finish(&s.handle, &t.name, TableMemo { instance, mark, digest, memo });
    }
    let pages = StateWrite::choose(before.base.as_deref(), pages, target);
    TableEnd { pages: Some(pages), rows: Some(w.rows), unchanged }
}
