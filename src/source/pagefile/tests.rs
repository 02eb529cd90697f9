//! Direct page reads against walks made through SQLite alone, on databases SQLite wrote:
//! the same page state, whatever the WAL holds.

use crate::source::Source;
use crate::source::walk::{Walked, walk};

fn db(mode: &str) -> (tempfile::TempDir, std::path::PathBuf, rusqlite::Connection) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.db");
    let c = rusqlite::Connection::open(&p).unwrap();
    c.execute_batch(&format!(
        "PRAGMA journal_mode={mode}; PRAGMA page_size=4096; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE chat (id TEXT PRIMARY KEY, body TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600)
         INSERT INTO chat SELECT 'c' || i, printf('%.*c', 100 + (i % 9) * 1500, 'x') FROM n;"
    ))
    .unwrap();
    // The rows in the file, not only in the WAL (the journal_mode pragma answers a row).
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).ok();
    (dir, p, c)
}

/// Walks `chat` in one read transaction of `src` (WAL) or in slices (rollback journal).
fn walk_with(src: &Source, direct: bool, in_txn: bool) -> Walked {
    src.pagefile.borrow_mut().allowed = direct;
    walk(src, "chat", in_txn).unwrap().expect("a walk")
}

fn counts(src: &Source) -> (u64, u64) {
    let pf = src.pagefile.borrow();
    (pf.direct, pf.via_sqlite)
}

/// Changes rows in place (same size: overflow pages only), grows and deletes some.
fn churn(c: &rusqlite::Connection, round: i64) {
    c.execute_batch(&format!(
        "UPDATE chat SET body = replace(body, 'x', '{0}') WHERE rowid % 7 = {1};
         UPDATE chat SET body = body || 'grown' WHERE rowid % 11 = {1};
         DELETE FROM chat WHERE rowid % 53 = {1};
         INSERT INTO chat SELECT 'n{round}-' || rowid, body FROM chat WHERE rowid % 13 = {1};",
        char::from(b'a' + round as u8),
        round % 7
    ))
    .unwrap();
}

#[test]
fn wal_pages_are_read_through_sqlite_and_the_rest_from_the_file() {
    let (_d, p, c) = db("WAL");
    // The writer stays open, so the WAL and its frames stay (no checkpoint on close).
    for round in 0..4 {
        churn(&c, round);
        if round == 2 {
            // A checkpoint copies the frames into the file; the next write restarts the WAL
            // (new salts), leaving stale frames of the old generation behind it.
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
            churn(&c, 10);
        }
        let src = Source::open(&p).unwrap();
        src.conn.execute_batch("BEGIN").unwrap();
        let through_sqlite = walk_with(&src, false, true);
        let (_, via0) = counts(&src);
        let mixed = walk_with(&src, true, true);
        src.conn.execute_batch("COMMIT").unwrap();
        let (direct, via) = counts(&src);
        assert_eq!(mixed.state, through_sqlite.state, "round {round}");
        assert_eq!(mixed.rows, through_sqlite.rows, "round {round}");
        assert!(direct > 0, "round {round}: pages read from the file");
        assert!(via - via0 > 0, "round {round}: pages with WAL frames read through SQLite");
    }
}

#[test]
fn a_walk_keeps_its_snapshot_while_a_writer_commits_and_checkpoints() {
    let (_d, p, c) = db("WAL");
    churn(&c, 1);
    let src = Source::open(&p).unwrap();
    src.conn.execute_batch("BEGIN").unwrap();
    let before = walk_with(&src, true, true);
    // Commits after the snapshot, then a checkpoint that copies what it may into the file.
    for round in 2..5 {
        churn(&c, round);
        c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).unwrap();
        let again = walk_with(&src, true, true);
        assert_eq!(again.state, before.state, "round {round}: the snapshot's pages, not the new ones");
    }
    src.conn.execute_batch("COMMIT").unwrap();
    let after = walk_with(&src, true, true);
    assert_ne!(after.state, before.state, "a new snapshot sees the commits");
    let src2 = Source::open(&p).unwrap();
    src2.conn.execute_batch("BEGIN").unwrap();
    assert_eq!(walk_with(&src2, false, true).state, after.state);
    src2.conn.execute_batch("COMMIT").unwrap();
}

#[test]
fn rollback_journal_pages_come_from_the_file() {
    let (_d, p, c) = db("DELETE");
    churn(&c, 3);
    let src = Source::open(&p).unwrap();
    let through_sqlite = walk_with(&src, false, false);
    let mixed = walk_with(&src, true, false);
    assert_eq!(mixed.state, through_sqlite.state);
    let pf = src.pagefile.borrow();
    assert!(pf.direct > 0 && pf.reads < pf.direct, "read ahead: {} reads for {} pages", pf.reads, pf.direct);
}

/// Frames of a transaction that spilled to the WAL and rolled back are overwritten by the
/// next commit's frames, at the same places: a page that commit wrote must not be read
/// from the file by a connection that saw the rolled-back frames at an earlier snapshot,
/// whether the commit is shorter than what rolled back (its last frame tells) or longer
/// (the last frame scanned was overwritten).
#[test]
fn frames_rewritten_after_a_rollback_are_read_again() {
    for (spilled, commit) in [(400, "churn"), (30, "UPDATE chat SET body = body || 'z'")] {
        let (_d, p, c) = db("WAL");
        c.execute_batch("CREATE TABLE big (b TEXT); PRAGMA cache_size = 5;").unwrap();
        let src = Source::open(&p).unwrap();
        src.conn.execute_batch("BEGIN").unwrap();
        walk_with(&src, true, true);
        src.conn.execute_batch("COMMIT").unwrap();
        // A transaction larger than the writer's cache spills frames of `big`'s new pages.
        c.execute_batch(&format!(
            "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {spilled})
             INSERT INTO big SELECT printf('%.*c', 3000, 'b') FROM n;"
        ))
        .unwrap();
        src.conn.execute_batch("BEGIN").unwrap();
        walk_with(&src, true, true);
        src.conn.execute_batch("COMMIT").unwrap();
        c.execute_batch("ROLLBACK").unwrap();
        // Now the frames the rollback left are overwritten with chat's changed pages.
        match commit {
            "churn" => churn(&c, 4),
            sql => c.execute_batch(sql).unwrap(),
        }
        src.conn.execute_batch("BEGIN").unwrap();
        let mixed = walk_with(&src, true, true);
        let through_sqlite = walk_with(&src, false, true);
        src.conn.execute_batch("COMMIT").unwrap();
        assert!(mixed.state == through_sqlite.state, "{commit}: a page of the new commit was read from the file");
    }
}
