//! The reader's manners towards a writer, against real SQLite locks.

use std::time::{Duration, Instant};

use crate::source::{SliceReader, Source, discover};

fn db() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.db");
    let c = rusqlite::Connection::open(&p).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=DELETE;
         CREATE TABLE chat (id INTEGER PRIMARY KEY, body TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
         INSERT INTO chat SELECT i, printf('%.*c', 500, 'x') FROM n;",
    )
    .unwrap();
    (dir, p)
}

/// A connection in a write transaction: it holds SQLite's RESERVED lock until dropped.
fn writer(p: &std::path::Path) -> rusqlite::Connection {
    let w = rusqlite::Connection::open(p).unwrap();
    w.execute_batch("BEGIN IMMEDIATE; INSERT INTO chat (body) VALUES ('w');").unwrap();
    w
}

#[test]
fn sees_a_writer_in_a_write_transaction() {
    let (_d, p) = db();
    let src = Source::open(&p).unwrap();
    assert!(!src.writer_active());
    let w = writer(&p);
    assert!(src.writer_active());
    w.execute_batch("COMMIT").unwrap();
    assert!(!src.writer_active());
    // A reader's own lock is not a writer's.
    let r = rusqlite::Connection::open(&p).unwrap();
    r.execute_batch("BEGIN; SELECT count(*) FROM chat;").unwrap();
    assert!(!src.writer_active());
}

/// Rows per slice of a full read of `chat`.
fn slice_sizes(src: &Source, yield_to_writers: bool) -> Vec<usize> {
    let tables = discover(src).unwrap();
    let t = tables.iter().find(|t| t.name == "chat").unwrap();
    let mut r = SliceReader::new(src, t);
    r.max_time = Duration::from_secs(5);
    r.yield_to_writers = yield_to_writers;
    std::iter::from_fn(|| r.next_slice().unwrap().map(|s| s.rows.len())).collect()
}

#[test]
fn a_slice_ends_after_one_row_while_a_writer_waits() {
    let (_d, p) = db();
    let src = Source::open(&p).unwrap();
    let _w = writer(&p);
    assert_eq!(slice_sizes(&src, false), vec![300]);
    let yielding = slice_sizes(&src, true);
    assert_eq!(yielding.len(), 300, "{yielding:?}");
    assert!(yielding.iter().all(|n| *n == 1));
    assert_eq!(src.hold_stats().yielded, 300);
}

#[test]
fn a_slice_waits_for_the_writer_to_commit() {
    let (_d, p) = db();
    let src = Source::open(&p).unwrap();
    // No writer: no wait.
    src.before_slice();
    assert_eq!(src.hold_stats().deferrals, 0);

    let w = writer(&p);
    let committer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(60));
        w.execute_batch("COMMIT").unwrap();
    });
    let t = Instant::now();
    src.before_slice();
    let waited = t.elapsed();
    committer.join().unwrap();
    assert!(waited >= Duration::from_millis(50) && waited < super::MAX_DEFER, "{waited:?}");
    assert_eq!(src.hold_stats().deferrals, 1);

    // A writer that does not commit is waited for at most MAX_DEFER.
    let _w = writer(&p);
    let t = Instant::now();
    src.before_slice();
    let waited = t.elapsed();
    assert!(waited >= super::MAX_DEFER && waited < super::MAX_DEFER * 4, "{waited:?}");
}
