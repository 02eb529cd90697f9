//! Reading a live Open WebUI SQLite database without slowing it down: opened read-only
//! with a busy timeout, read in short keyset slices with no read transaction held
//! between slices, never checkpointed.

pub mod btree;
mod discover;
mod fingerprint;
pub mod follow;
mod pace;
mod pagefile;
pub mod pages;
mod read;
pub mod wal;
mod walk;

pub use discover::{ColumnInfo, RowKey, TableInfo, discover};
pub use fingerprint::fingerprint;
pub use pace::{HoldStats, ROLLBACK_SLICE};
pub use read::{Slice, SliceReader, Value};

use std::path::{Path, PathBuf};

/// A SQLite database's companion file: `db` with `suffix` (`-wal`, `-shm`, `-journal`)
/// appended to its name.
pub fn companion(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open source database {path}: {source} (is spec.source.path right, and readable by owsyncd?)")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("source database {path} does not exist (check spec.source.path)")]
    Missing { path: PathBuf },
    #[error("cannot read {path} to fingerprint it: {source}")]
    Fingerprint { path: PathBuf, source: std::io::Error },
    #[error("reading {path}, table {table}: {source}")]
    Read { path: PathBuf, table: String, source: rusqlite::Error },
}

pub type Result<T, E = SourceError> = std::result::Result<T, E>;

/// How long a read waits on a writer's lock before giving up (SQLite's busy timeout).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite's page cache of a source handle, in KiB (negative: a size, not a page count).
const CACHE_KIB: i64 = -2048;

/// A read-only handle on a tenant's `webui.db`. Its connection stays inside `source`: other
/// modules read through a `ReadTxn`, `SliceReader`, the walk and the statements here.
pub struct Source {
    conn: Connection,
    path: PathBuf,
    pace: pace::Pace,
    /// Direct page reads for the page walk.
    pagefile: std::cell::RefCell<pagefile::PageFile>,
}

/// A read transaction on a `Source`: from its first read until `end` (or drop) the handle
/// reads one snapshot of the database. In WAL mode a reader never blocks the writer; in
/// rollback-journal mode it holds the read lock, so it lasts one short slice.
pub struct ReadTxn<'a> {
    src: &'a Source,
    table: String,
    open: bool,
}

impl ReadTxn<'_> {
    /// Starts the snapshot (it begins with the transaction's first read), places it for
    /// the WAL follower `handle` and takes `table`'s memo (`follow::start`).
    pub fn follow(&self, handle: follow::Handle, table: &str) -> Result<follow::Start> {
        let src = self.src;
        src.conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())).map_err(src.err(table))?;
        Ok(follow::start(handle, &src.conn, table))
    }

    /// Ends the transaction (COMMIT: it wrote nothing).
    pub fn end(mut self) -> Result<()> {
        self.open = false;
        self.src.conn.execute_batch("COMMIT").map_err(self.src.err(&self.table))
    }
}

impl Drop for ReadTxn<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.src.conn.execute_batch("COMMIT");
        }
    }
}

impl Source {
    /// Opens read-only. WAL databases need their `-shm` to be writable by us only in
    /// that SQLite may create it; we never write the database and never checkpoint
    /// (read-only connections cannot).
    pub fn open(path: &Path) -> Result<Source> {
        if !path.exists() {
            return Err(SourceError::Missing { path: path.to_path_buf() });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|source| SourceError::Open { path: path.to_path_buf(), source })?;
        conn.busy_handler(Some(pace::busy_handler))
            .map_err(|source| SourceError::Open { path: path.to_path_buf(), source })?;
        // A small page cache: reads run in slices, a walk reads each page once and a slice
        // descends the tree once, so it saves little, and a sync's readers at 8 MiB each
        // were a fifth of its peak RSS at 100k chats.
        conn.pragma_update(None, "cache_size", CACHE_KIB)
            .map_err(|source| SourceError::Open { path: path.to_path_buf(), source })?;
        Ok(Source { conn, path: path.to_path_buf(), pace: pace::Pace::default(), pagefile: Default::default() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Begins a read transaction (`table`: named in its errors).
    pub fn read_txn(&self, table: &str) -> Result<ReadTxn<'_>> {
        self.conn.execute_batch("BEGIN").map_err(self.err(table))?;
        Ok(ReadTxn { src: self, table: table.to_string(), open: true })
    }

    /// The highest rowid of `table`: one b-tree descent, a cheap estimate of its size. 0 when
    /// it cannot tell (empty, WITHOUT ROWID, a column named `rowid` holding text...).
    pub fn max_rowid(&self, table: &str) -> i64 {
        let sql = format!("SELECT max(rowid) FROM {}", crate::sql::quote_ident(table));
        self.conn.query_row(&sql, [], |r| r.get::<_, Option<i64>>(0)).ok().flatten().unwrap_or(0)
    }

    /// The number of rows of `table`: the count the WAL follower vouches for, when it can
    /// (`follow::vouched_rows`), else `count(*)`.
    pub fn row_count(&self, table: &str) -> Result<i64> {
        let sql = format!("SELECT count(*) FROM {}", crate::sql::quote_ident(table));
        if follow::lookup(&self.path).is_none() {
            return self.conn.query_row(&sql, [], |r| r.get(0)).map_err(self.err(table));
        }
        // One snapshot for the follower's answer and, failing it, the count.
        let txn = self.read_txn(table)?;
        self.conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())).map_err(self.err(table))?;
        let n = match follow::vouched_rows(self, table) {
            Some(n) => n,
            None => self.conn.query_row(&sql, [], |r| r.get(0)).map_err(self.err(table))?,
        };
        txn.end()?;
        Ok(n)
    }

    /// A statement on this handle's read-only connection (`table`: named in its errors).
    pub(crate) fn statement(&self, table: &str, sql: &str) -> Result<rusqlite::Statement<'_>> {
        self.conn.prepare(sql).map_err(self.err(table))
    }

    /// How long this handle's slices held SQLite's read lock so far.
    pub fn hold_stats(&self) -> HoldStats {
        self.pace.stats()
    }

    /// Pages read by this handle's walks so far (from the file or through SQLite).
    pub(crate) fn pages_read(&self) -> u64 {
        let pf = self.pagefile.borrow();
        pf.direct + pf.via_sqlite
    }

    pub(crate) fn err(&self, table: &str) -> impl FnOnce(rusqlite::Error) -> SourceError + '_ {
        let table = table.to_string();
        move |source| SourceError::Read { path: self.path.clone(), table, source }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        let pf = self.pagefile.borrow();
        if pf.direct + pf.via_sqlite > 0 {
            tracing::debug!(path = %self.path.display(), direct = pf.direct, reads = pf.reads, via_sqlite = pf.via_sqlite, "pages walked");
        }
        let s = self.pace.stats();
        if s.holds > 0 {
            tracing::debug!(
                path = %self.path.display(),
                holds = s.holds,
                total_ms = s.total.as_secs_f64() * 1e3,
                longest_ms = s.longest.as_secs_f64() * 1e3,
                longest_cpu_ms = s.longest_cpu.as_secs_f64() * 1e3,
                over_2_5_10_20_50ms = ?s.over,
                deferrals = s.deferrals,
                deferred_ms = s.deferred.as_secs_f64() * 1e3,
                yielded = s.yielded,
                "source read locks"
            );
        }
    }
}
