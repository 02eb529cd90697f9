//! The restore's last phase: the source's other indexes and its triggers, built after the
//! rows, and the check of the file, on two cores. `PRAGMA integrity_check(table)` of each
//! table (its b-trees, and every row against each of its indexes: most of the check's
//! time) and one `PRAGMA quick_check` of the whole file (the freelist, and that every page
//! belongs to exactly one b-tree) together check what `PRAGMA integrity_check` does.
//! The dearest table's indexes are built first; then the file goes to WAL mode and a
//! second connection checks that table while the writer builds the others' indexes; the
//! remaining parts of the check are shared out between the two once all are built.

use std::path::Path;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};

use rusqlite::{Connection, OpenFlags};

use super::{Counts, RestoreError, TableState, is_unique_index};
use crate::sql::quote_ident;

/// Each checker's page cache: the check reads each page about once, so a bigger cache
/// gains nothing (BENCHMARKS.md, "Restore").
const CHECK_CACHE: &str = "PRAGMA cache_size = -8192;";

/// One part of the check.
#[derive(Debug, Clone, Copy)]
enum Part<'a> {
    /// `PRAGMA integrity_check(table)`.
    Table(&'a str),
    /// `PRAGMA quick_check`.
    Whole,
}

/// Builds the other indexes and the triggers of `tables` (after the rows: an index built
/// from the rows costs less than one filled row by row, and triggers must not fire on
/// them), checks the file, and leaves it in WAL mode, as Open WebUI runs it, with its WAL
/// checkpointed into it. Returns the check's result: "ok", or what it found.
pub(super) fn finish_and_check(
    conn: &mut Connection,
    path: &Path,
    tables: &[TableState],
    counts: &Counts,
) -> Result<String, RestoreError> {
    let err = || RestoreError::sqlite(path, "");
    let started = std::time::Instant::now();
    let order = by_check_cost(tables, counts);
    // The dearest table's indexes go into the file itself, before WAL mode: its check,
    // the longest, then reads no page through the WAL.
    if let Some(first) = order.first() {
        build(conn, path, first)?;
    }
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;").map_err(err())?;
    let (tx, rx) = channel::<Part>();
    let rx = Mutex::new(rx);
    let (mine, other) = std::thread::scope(|s| {
        let other = s.spawn(|| open_checker(path).and_then(|c| check(&c, path, &rx)));
        let mine = build_rest(conn, path, &order, &tx);
        tracing::info!(ms = started.elapsed().as_millis(), "restore: indexes and triggers created");
        drop(tx);
        // The writer's page cache is not needed any more: freed, it leaves room for the
        // other checker's under the restore's memory budget.
        let mine = mine
            .and_then(|()| conn.execute_batch(&format!("PRAGMA shrink_memory; {CHECK_CACHE}")).map_err(err()))
            .and_then(|()| check(conn, path, &rx));
        let other = other.join().unwrap_or_else(|_| Err(RestoreError::Other("the checking thread panicked".into())));
        (mine, other)
    });
    let mut problems = mine?;
    problems.extend(other?);
    let integrity = if problems.is_empty() { "ok".to_string() } else { problems.join("; ") };
    tracing::info!(ms = started.elapsed().as_millis(), %integrity, "restore: integrity checked");
    checkpoint(conn).map_err(err())?;
    tracing::debug!(ms = started.elapsed().as_millis(), "restore: WAL checkpointed");
    Ok(integrity)
}

/// The tables, the dearest to check first: its rows times its indexes (each row is
/// looked up in each index), so that the check's longest part starts soonest.
fn by_check_cost<'a>(tables: &'a [TableState], counts: &Counts) -> Vec<&'a TableState> {
    let cost = |t: &TableState| counts.get(&t.table).map_or(0, |c| c.rows) * (1 + t.extra.len() as u64);
    let mut order: Vec<&TableState> = tables.iter().collect();
    order.sort_by_key(|t| std::cmp::Reverse(cost(t)));
    order
}

/// Builds one table's other indexes and its triggers, in one transaction.
fn build(conn: &mut Connection, path: &Path, t: &TableState) -> Result<(), RestoreError> {
    let err = || RestoreError::sqlite(path, &t.table);
    let txn = conn.transaction().map_err(err())?;
    for ddl in t.extra.iter().filter(|d| !is_unique_index(d)) {
        txn.execute_batch(ddl).map_err(err())?;
    }
    txn.commit().map_err(err())
}

/// Hands the first table (built already) to the checkers, builds the others one by one,
/// handing each over once committed, and last the whole-file check.
fn build_rest<'a>(
    conn: &mut Connection,
    path: &Path,
    order: &[&'a TableState],
    tx: &Sender<Part<'a>>,
) -> Result<(), RestoreError> {
    for (i, t) in order.iter().enumerate() {
        if i > 0 {
            let t0 = std::time::Instant::now();
            build(conn, path, t)?;
            tracing::debug!(table = t.table, ms = t0.elapsed().as_secs_f64() * 1e3, "restore: indexes built");
        }
        // The other checker gone means it failed: its error is the one reported.
        let _ = tx.send(Part::Table(&t.table));
    }
    let _ = tx.send(Part::Whole);
    Ok(())
}

/// A read-only connection of its own for the second checker.
fn open_checker(path: &Path) -> Result<Connection, RestoreError> {
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(RestoreError::sqlite(path, ""))?;
    conn.execute_batch(CHECK_CACHE).map_err(RestoreError::sqlite(path, ""))?;
    Ok(conn)
}

/// Runs the parts of the check received on `conn` until the writer is done and none is
/// left: what they found, "ok" left out. Waiting for a part holds the lock, which the
/// writer takes only once it has sent the last part.
fn check(conn: &Connection, path: &Path, rx: &Mutex<Receiver<Part<'_>>>) -> Result<Vec<String>, RestoreError> {
    let mut problems = Vec::new();
    // A poisoned lock means the other checker panicked: its join reports it.
    while let Some(part) = rx.lock().ok().and_then(|r| r.recv().ok()) {
        let (sql, table) = match part {
            Part::Table(t) => (format!("PRAGMA integrity_check({})", quote_ident(t)), t),
            Part::Whole => ("PRAGMA quick_check".to_string(), ""),
        };
        let t0 = std::time::Instant::now();
        let found = messages(conn, &sql).map_err(RestoreError::sqlite(path, table))?;
        tracing::debug!(?part, ms = t0.elapsed().as_secs_f64() * 1e3, "restore: checked");
        let prefix = if table.is_empty() { String::new() } else { format!("table {table}: ") };
        problems.extend(found.into_iter().map(|m| format!("{prefix}{m}")));
    }
    Ok(problems)
}

/// Copies the WAL into the file and empties it: the restored file is renamed into place
/// alone, so nothing may be left in its WAL.
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    let (busy, log, done): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    if busy != 0 || log != done {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some(format!("the WAL was not checkpointed ({done} of {log} frames)")),
        ));
    }
    Ok(())
}

/// The rows of a check pragma other than a lone "ok".
fn messages(conn: &Connection, sql: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(sql)?;
    let rows: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(rows.into_iter().filter(|m| m != "ok").collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file whose index `t_b` claims to index column `b` while its entries hold `a`'s
    /// values: what `PRAGMA quick_check` does not look at, and the per-table check must.
    fn file_with_a_wrong_index(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("wrong-index.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE t (a INTEGER, b INTEGER); CREATE INDEX t_b ON t (a);
             WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 200)
             INSERT INTO t SELECT v, -v FROM n;
             CREATE TABLE ok (x TEXT PRIMARY KEY); INSERT INTO ok VALUES ('x'), ('y');",
        )
        .unwrap();
        c.execute_batch(
            "PRAGMA writable_schema = ON;
             UPDATE sqlite_schema SET sql = 'CREATE INDEX t_b ON t (b)' WHERE name = 't_b';
             PRAGMA writable_schema = OFF;",
        )
        .unwrap();
        path
    }

    fn run(path: &Path, parts: Vec<Part<'_>>) -> Vec<String> {
        let (tx, rx) = channel();
        for p in parts {
            tx.send(p).unwrap();
        }
        drop(tx);
        check(&open_checker(path).unwrap(), path, &Mutex::new(rx)).unwrap()
    }

    #[test]
    fn the_per_table_check_finds_what_the_whole_file_check_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with_a_wrong_index(dir.path());
        assert!(run(&path, vec![Part::Whole]).is_empty(), "quick_check does not compare an index with its rows");
        let found = run(&path, vec![Part::Table("ok"), Part::Whole, Part::Table("t")]);
        assert!(!found.is_empty(), "integrity_check(t) must find the index that does not match its rows");
        assert!(found.iter().all(|m| m.starts_with("table t: ")), "{found:?}");
        assert!(run(&path, vec![Part::Table("ok")]).is_empty());
    }

    #[test]
    fn the_dearest_table_to_check_comes_first() {
        let t = |name: &str, extra: usize| TableState {
            table: name.into(),
            ddl: String::new(),
            extra: vec![String::new(); extra],
        };
        let tables = [t("small", 0), t("many_rows", 1), t("many_indexes", 9)];
        let mut counts = Counts::new();
        for (name, rows) in [("small", 10), ("many_rows", 1000), ("many_indexes", 300)] {
            counts.insert(name.into(), super::super::TableRestored { rows, ..Default::default() });
        }
        let names: Vec<&str> = by_check_cost(&tables, &counts).iter().map(|t| t.table.as_str()).collect();
        assert_eq!(names, ["many_indexes", "many_rows", "small"]);
    }
}
