//! The page walker against databases SQLite itself built.

use super::*;
use crate::source::Source;
use crate::source::walk::usable_size;

fn db(mode: &str) -> (tempfile::TempDir, std::path::PathBuf, rusqlite::Connection) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.db");
    let c = rusqlite::Connection::open(&p).unwrap();
    c.execute_batch(&format!(
        "PRAGMA journal_mode={mode}; PRAGMA page_size=4096;
         CREATE TABLE chat (id TEXT PRIMARY KEY, body TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400)
         INSERT INTO chat SELECT 'c' || i, printf('%.*c', 200 + (i % 7) * 900, 'x') FROM n;"
    ))
    .unwrap();
    (dir, p, c)
}

fn rowids(c: &rusqlite::Connection) -> Vec<i64> {
    let mut s = c.prepare("SELECT rowid FROM chat ORDER BY rowid").unwrap();
    s.query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect()
}

fn walk_now(p: &std::path::Path, in_txn: bool) -> Walked {
    let src = Source::open(p).unwrap();
    if in_txn {
        src.conn.execute_batch("BEGIN").unwrap();
    }
    let w = walk(&src, "chat", in_txn).unwrap().expect("a walk");
    if in_txn {
        src.conn.execute_batch("COMMIT").unwrap();
    }
    w
}

#[test]
fn leaves_partition_the_rowids() {
    for (mode, in_txn) in [("WAL", true), ("DELETE", false)] {
        let (_d, p, c) = db(mode);
        let w = walk_now(&p, in_txn);
        let ids = rowids(&c);
        assert_eq!(w.rows, ids.len() as i64, "{mode}");
        assert!(w.state.leaves.len() > 20, "{mode}: {} leaves", w.state.leaves.len());
        for id in &ids {
            let n = w.state.leaves.iter().filter(|l| l.min <= *id && *id <= l.max).count();
            assert_eq!(n, 1, "{mode}: rowid {id} is in {n} leaf ranges");
        }
        let enc = w.state.encode("\"s\".\"chat\"");
        assert_eq!(PageState::decode(&enc, "\"s\".\"chat\"").as_ref(), Some(&w.state));
        assert_eq!(PageState::decode(&enc, "\"t\".\"chat\""), None, "bound to its mirror table");
    }
}

#[test]
fn a_change_shows_up_only_in_its_own_leaf() {
    let (_d, p, c) = db("WAL");
    let before = walk_now(&p, true);
    assert!(diff(&before.state, &walk_now(&p, true).state).ranges.is_empty(), "nothing changed");
    // Same size, deep inside an overflow chain: the leaf itself may be byte-identical.
    let big: i64 =
        c.query_row("SELECT rowid FROM chat WHERE length(body) > 5000 LIMIT 1 OFFSET 50", [], |r| r.get(0)).unwrap();
    c.execute("UPDATE chat SET body = substr(body, 1, 5000) || 'y' || substr(body, 5002) WHERE rowid = ?1", [big])
        .unwrap();
    let ch = diff(&before.state, &walk_now(&p, true).state);
    assert!(ch.ranges.iter().any(|(a, b)| *a <= big && big <= *b), "{ch:?} misses rowid {big}");
    let covered: i64 = ch.ranges.iter().map(|(a, b)| b - a + 1).sum();
    assert!(covered < 40, "an overflow-only edit re-reads {covered} rowids");
    // A delete of many rows frees whole leaves: their old ranges come back.
    let before = walk_now(&p, true);
    c.execute("DELETE FROM chat WHERE rowid BETWEEN 100 AND 200", []).unwrap();
    let ch = diff(&before.state, &walk_now(&p, true).state);
    for id in 100..=200 {
        assert!(ch.ranges.iter().any(|(a, b)| *a <= id && id <= *b), "deleted rowid {id} not covered");
    }
}

#[test]
fn a_rollback_journal_walk_sees_a_consistent_tree() {
    let (_d, p, c) = db("DELETE");
    let a = walk_now(&p, false);
    c.execute("INSERT OR REPLACE INTO chat VALUES ('c5', 'new')", []).unwrap();
    let b = walk_now(&p, false);
    let ch = diff(&a.state, &b.state);
    let new_rowid: i64 = c.query_row("SELECT rowid FROM chat WHERE id = 'c5'", [], |r| r.get(0)).unwrap();
    assert!(new_rowid > 400);
    for id in [5, new_rowid] {
        assert!(ch.ranges.iter().any(|(x, y)| *x <= id && id <= *y), "rowid {id} not covered by {ch:?}");
    }
    let mut s = b.state.clone();
    s.add_suspect(&[(7, 9)]);
    let ch = diff(&s, &b.state);
    assert_eq!(ch.ranges, vec![(7, 9)], "suspect ranges are always re-read");
}

#[test]
fn merges_ranges() {
    assert_eq!(merge_ranges(vec![(5, 9), (1, 3), (4, 4), (20, 10), (12, 15)]), vec![(1, 9), (12, 15)]);
    assert_eq!(merge_ranges(vec![(i64::MAX - 1, i64::MAX), (0, 1)]), vec![(0, 1), (i64::MAX - 1, i64::MAX)]);
}

#[test]
fn a_state_of_the_older_encoding_is_not_trusted() {
    let (_d, p, _c) = db("WAL");
    let w = walk_now(&p, true);
    let mut enc = w.state.encode("\"s\".\"chat\"");
    assert_eq!(&enc[..4], b"OWP3");
    // The same bytes under the magic of the encoding before (no big-row hashes): the
    // table must take a full pass (decode gives nothing to diff against).
    enc[..4].copy_from_slice(b"OWP2");
    assert_eq!(PageState::decode(&enc, "\"s\".\"chat\""), None);
}

#[test]
fn the_page_geometry_comes_from_the_file_header() {
    let mut page1 = vec![0u8; 4096];
    page1[16..18].copy_from_slice(&4096u16.to_be_bytes());
    assert_eq!(usable_size(&page1), Some(4096));
    page1[20] = 32;
    assert_eq!(usable_size(&page1), Some(4064), "reserved bytes at the end of each page");
    let mut big = vec![0u8; 65536];
    big[16..18].copy_from_slice(&1u16.to_be_bytes());
    assert_eq!(usable_size(&big), Some(65536), "1 stands for 65536");
    page1[16..18].copy_from_slice(&8192u16.to_be_bytes());
    assert_eq!(usable_size(&page1), None, "a header that does not match the page read");
    assert_eq!(usable_size(&page1[..10]), None);
}

#[test]
fn unchanged_big_rows_of_a_changed_leaf_are_not_re_read() {
    let (_d, p, c) = db("WAL");
    let before = walk_now(&p, true);
    let enc = before.state.encode("\"s\".\"chat\"");
    assert_eq!(PageState::decode(&enc, "\"s\".\"chat\"").as_ref(), Some(&before.state), "round trip");
    // A leaf with at least two big rows (they spill to overflow pages).
    let leaf = before.state.leaves.iter().find(|l| l.big_rows.len() >= 2).expect("a leaf with two big rows");
    let (edited, kept) = (leaf.big_rows[0].0, leaf.big_rows[1].0);
    c.execute("UPDATE chat SET body = body || 'z' WHERE rowid = ?1", [edited]).unwrap();
    let ch = diff(&before.state, &walk_now(&p, true).state);
    let covers = |ch: &Changes, id: i64| ch.ranges.iter().any(|(a, b)| *a <= id && id <= *b);
    assert!(covers(&ch, edited), "the edited row {edited} is re-read: {ch:?}");
    assert!(!covers(&ch, kept), "its unchanged neighbour {kept} is not: {ch:?}");
    // A big row deleted: its rowid is covered (so the mirror tombstones it).
    let before = walk_now(&p, true);
    c.execute("DELETE FROM chat WHERE rowid = ?1", [kept]).unwrap();
    let ch = diff(&before.state, &walk_now(&p, true).state);
    assert!(covers(&ch, kept), "the deleted row {kept} is covered: {ch:?}");
    // A big row read while the source moved is re-read even if its bytes match.
    let now = walk_now(&p, true);
    let mut old = now.state.clone();
    old.add_suspect(&[(edited, edited)]);
    assert!(covers(&diff(&old, &now.state), edited), "a suspect big row is re-read");
}

#[test]
fn points_are_cut_out_of_ranges() {
    assert_eq!(without_points(vec![(1, 10)], &[1, 5, 10]), vec![(2, 4), (6, 9)]);
    assert_eq!(without_points(vec![(1, 1), (3, 4), (7, 9)], &[1, 4, 8]), vec![(3, 3), (7, 7), (9, 9)]);
    assert_eq!(without_points(vec![(5, 7)], &[]), vec![(5, 7)]);
    assert_eq!(without_points(vec![(5, 7)], &[2, 6, 20]), vec![(5, 5), (7, 7)]);
}
