//! The restore's last phase: the source's other indexes and its triggers, built after the
//! rows, then the check of the file on two connections at once. `PRAGMA
//! integrity_check(table)` of each table (its b-trees, and every row against each of its
//! indexes: most of the check's time) and one `PRAGMA quick_check` of the whole file (the
//! freelist, and that every page belongs to exactly one b-tree) are shared out between
//! two threads; together they check all that `PRAGMA integrity_check` does.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};

use super::{Counts, RestoreError, TableState, is_unique_index};
use crate::sql::quote_ident;

/// Each checker's page cache: the check reads each page about once, so a bigger cache
/// gains nothing (BENCHMARKS.md, "Restore").
const CHECK_CACHE: &str = "PRAGMA cache_size = -8192;";

/// Connections that check at once: two cores' worth.
const CHECKERS: usize = 2;

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
/// them), switches the file to WAL mode, as Open WebUI runs it, and checks it. Returns
/// the check's result: "ok", or what it found.
pub(super) fn finish_and_check<F, E>(
    conn: &mut Connection,
    path: &Path,
    tables: &[TableState],
    counts: &Counts,
    err: &F,
) -> Result<String, RestoreError>
where
    F: Fn(&str) -> E,
    E: FnOnce(rusqlite::Error) -> RestoreError,
{
    let started = std::time::Instant::now();
    let txn = conn.transaction().map_err(err(""))?;
    for t in tables {
        for ddl in t.extra.iter().filter(|d| !is_unique_index(d)) {
            txn.execute_batch(ddl).map_err(err(&t.name))?;
        }
    }
    txn.commit().map_err(err(""))?;
    // The writer's page cache is not needed any more: freed, it leaves room for the two
    // checkers' under the restore's memory budget.
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA shrink_memory;").map_err(err(""))?;
    tracing::info!(ms = started.elapsed().as_millis(), "restore: indexes and triggers created");
    let started = std::time::Instant::now();
    let queue = Mutex::new(parts(tables, counts).into_iter());
    let found: Vec<Result<Vec<String>, RestoreError>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..CHECKERS).map(|_| s.spawn(|| check(path, &queue))).collect();
        let joined = workers.into_iter().map(std::thread::ScopedJoinHandle::join);
        joined.map(|r| r.unwrap_or_else(|_| Err(RestoreError::Other("a checking thread panicked".into())))).collect()
    });
    let mut problems = Vec::new();
    for f in found {
        problems.extend(f?);
    }
    let integrity = if problems.is_empty() { "ok".to_string() } else { problems.join("; ") };
    tracing::info!(ms = started.elapsed().as_millis(), %integrity, "restore: integrity checked");
    Ok(integrity)
}

/// The check's parts, the dearest first so that the longest starts soonest: the table
/// whose rows times indexes (each row is looked up in each index) is largest, then the
/// whole-file check, then the other tables by the same measure.
fn parts<'a>(tables: &'a [TableState], counts: &Counts) -> Vec<Part<'a>> {
    let cost = |t: &TableState| counts.get(&t.name).map_or(0, |c| c.rows) * (1 + t.extra.len() as u64);
    let mut order: Vec<&TableState> = tables.iter().collect();
    order.sort_by_key(|t| std::cmp::Reverse(cost(t)));
    let mut parts: Vec<Part<'a>> = order.iter().map(|t| Part::Table(&t.name)).collect();
    parts.insert(parts.len().min(1), Part::Whole);
    parts
}

/// Runs parts of the check from `queue` on a read-only connection of its own until none
/// is left: what they found, "ok" left out.
fn check<'a>(path: &Path, queue: &Mutex<impl Iterator<Item = Part<'a>>>) -> Result<Vec<String>, RestoreError> {
    let sqlite = |table: &str| {
        let (path, table) = (path.to_path_buf(), table.to_string());
        move |source| RestoreError::Sqlite { path, table, source }
    };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sqlite(""))?;
    conn.execute_batch(CHECK_CACHE).map_err(sqlite(""))?;
    let mut problems = Vec::new();
    // A poisoned lock means the other checker panicked: its join reports it.
    while let Some(part) = queue.lock().ok().and_then(|mut q| q.next()) {
        let (sql, table) = match part {
            Part::Table(t) => (format!("PRAGMA integrity_check({})", quote_ident(t)), t),
            Part::Whole => ("PRAGMA quick_check".to_string(), ""),
        };
        let found = messages(&conn, &sql).map_err(sqlite(table))?;
        let prefix = if table.is_empty() { String::new() } else { format!("table {table}: ") };
        problems.extend(found.into_iter().map(|m| format!("{prefix}{m}")));
    }
    Ok(problems)
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
        check(path, &Mutex::new(parts.into_iter())).unwrap()
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
    fn parts_put_the_dearest_table_first_and_the_whole_file_second() {
        let t = |name: &str, extra: usize| TableState {
            name: name.into(),
            ddl: String::new(),
            extra: vec![String::new(); extra],
        };
        let tables = [t("small", 0), t("many_rows", 1), t("many_indexes", 9)];
        let mut counts = Counts::new();
        for (name, rows) in [("small", 10), ("many_rows", 1000), ("many_indexes", 300)] {
            counts.insert(name.into(), super::super::TableRestored { rows, ..Default::default() });
        }
        let names: Vec<String> = parts(&tables, &counts)
            .into_iter()
            .map(|p| match p {
                Part::Table(t) => t.to_string(),
                Part::Whole => "*".into(),
            })
            .collect();
        assert_eq!(names, ["many_indexes", "*", "many_rows", "small"]);
    }
}
