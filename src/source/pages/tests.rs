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
        assert!(w.state.leaf_count() > 20, "{mode}: {} leaves", w.state.leaf_count());
        for id in &ids {
            let n = w.state.leaves().filter(|l| l.min <= *id && *id <= l.max).count();
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
    let leaf = before.state.leaves().find(|l| l.big_rows.len() >= 2).expect("a leaf with two big rows");
    let rows: Vec<(i64, u64)> = leaf.big_rows.iter().collect();
    let (edited, kept) = (rows[0].0, rows[1].0);
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

/// The comparison as it was before states were compact (a HashMap per page, a HashMap of
/// the recorded big rows): the merge must give the same answer on consistent states.
fn reference_diff(old: &PageState, new: &PageState) -> Changes {
    use std::collections::{HashMap, HashSet};
    let old: Vec<Leaf<'_>> = old.leaves().collect();
    let new: Vec<Leaf<'_>> = new.leaves().collect();
    let by_pgno: HashMap<u32, &Leaf<'_>> = old.iter().map(|l| (l.pgno, l)).collect();
    let (mut ranges, mut changed_leaves, mut kept) = (Vec::new(), 0, HashSet::new());
    for l in &new {
        match by_pgno.get(&l.pgno) {
            Some(o) if o.hash == l.hash && l.pgno != SUSPECT_PGNO => {
                kept.insert(l.pgno);
            }
            other => {
                changed_leaves += 1;
                ranges.push((l.min, l.max));
                if let Some(o) = other {
                    ranges.push((o.min, o.max));
                    kept.insert(l.pgno);
                }
            }
        }
    }
    for o in &old {
        if !kept.contains(&o.pgno) || o.pgno == SUSPECT_PGNO {
            ranges.push((o.min, o.max));
        }
    }
    let suspect: Vec<(i64, i64)> = old.iter().filter(|o| o.pgno == SUSPECT_PGNO).map(|o| (o.min, o.max)).collect();
    let recorded: HashMap<i64, u64> =
        old.iter().filter(|o| o.pgno != SUSPECT_PGNO).flat_map(|o| o.big_rows.iter()).collect();
    let unchanged = |l: &Leaf<'_>| l.pgno != SUSPECT_PGNO && by_pgno.get(&l.pgno).is_some_and(|o| o.hash == l.hash);
    let mut same: Vec<i64> = new
        .iter()
        .filter(|l| !unchanged(l))
        .flat_map(|l| l.big_rows.iter())
        .filter(|(r, h)| recorded.get(r) == Some(h) && !suspect.iter().any(|(a, b)| a <= r && r <= b))
        .map(|(r, _)| r)
        .collect();
    same.sort_unstable();
    Changes { ranges: without_points(merge_ranges(ranges), &same), changed_leaves, total_leaves: new.len() }
}

/// A small deterministic generator (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type ModelLeaf = (u32, [u8; 16], i64, i64, Vec<(i64, u64)>);
type Model = Vec<ModelLeaf>;

fn state_of(leaves: &Model, suspect: &[(i64, i64)]) -> PageState {
    let mut s = PageState::default();
    for (pgno, hash, min, max, rows) in leaves {
        s.push_leaf(*pgno, *hash, *min, *max, rows);
    }
    s.sort();
    if !suspect.is_empty() {
        s.add_suspect(suspect);
    }
    s
}

/// Two consistent walks of one table: leaves kept (same page, same bytes), edited (new
/// hash, some big rows rewritten or dropped), moved to another page, split, freed or
/// added; big rows keep their hash unless rewritten.
fn two_walks(rng: &mut Rng) -> (Model, Model) {
    let n = 1 + rng.below(60) as usize;
    let mut pgnos: Vec<u32> = (2..2 + 3 * n as u32).collect();
    for i in (1..pgnos.len()).rev() {
        pgnos.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut free = pgnos.split_off(n).into_iter();
    let hash = |rng: &mut Rng| {
        let mut h = [0u8; 16];
        h[..8].copy_from_slice(&rng.next().to_be_bytes());
        h
    };
    let mut old: Model = Vec::new();
    for (k, pgno) in pgnos.into_iter().enumerate() {
        let base = k as i64 * 100;
        let rows: Vec<(i64, u64)> = (0..rng.below(4) as i64).map(|j| (base + 1 + j * 7, rng.below(3))).collect();
        let (min, max) = if rng.below(20) == 0 { (1, 0) } else { (base, base + 50) };
        let rows = if min > max { Vec::new() } else { rows };
        old.push((pgno, hash(rng), min, max, rows));
    }
    let mut new: Model = Vec::new();
    for (pgno, h, min, max, rows) in &old {
        match rng.below(10) {
            0..=5 => new.push((*pgno, *h, *min, *max, rows.clone())),
            6 | 7 => {
                let rows = rows
                    .iter()
                    .filter_map(|(r, x)| match rng.below(8) {
                        0 | 1 => None,
                        2..=4 => Some((*r, *x)),
                        _ => Some((*r, x + 10)),
                    })
                    .collect();
                let p = if rng.below(3) == 0 { free.next().unwrap_or(*pgno) } else { *pgno };
                new.push((p, hash(rng), *min, max + rng.below(3) as i64, rows));
            }
            8 if min < max => {
                let mid = min + 25;
                let (lo, hi): (Vec<_>, Vec<_>) = rows.iter().partition(|(r, _)| *r <= mid);
                new.push((*pgno, hash(rng), *min, mid, lo));
                if let Some(p) = free.next() {
                    new.push((p, hash(rng), mid + 1, *max, hi));
                }
            }
            _ => {}
        }
    }
    if let Some(p) = free.next() {
        let base = old.len() as i64 * 100 + 1000;
        new.push((p, hash(rng), base, base + 9, vec![(base + 3, 1)]));
    }
    (old, new)
}

#[test]
fn the_merge_gives_what_the_hash_map_comparison_gave() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut spared = 0;
    for case in 0..3000 {
        let (old, new) = two_walks(&mut rng);
        let suspect: Vec<(i64, i64)> = if rng.below(4) == 0 {
            let a = rng.below(old.len() as u64 * 100 + 1) as i64;
            vec![(a, a + rng.below(30) as i64)]
        } else {
            vec![]
        };
        let (o, n) = (state_of(&old, &suspect), state_of(&new, &[]));
        let want = reference_diff(&o, &n);
        assert_eq!(diff(&o, &n), want, "case {case}: {old:?} -> {new:?}, suspect {suspect:?}");
        let enc = o.encode("\"s\".\"t\"");
        let rec = Recorded::parse(&enc, "\"s\".\"t\"").expect("parses");
        assert_eq!(rec.leaf_count(), o.leaf_count());
        assert_eq!(diff_recorded(&rec, &n), want, "case {case}: from the recorded bytes");
        // The walk hands leaves in tree order, not page order: the same after `sort`.
        let mut shuffled = new.clone();
        shuffled.reverse();
        assert_eq!(diff(&o, &state_of(&shuffled, &[])), want, "case {case}: push order");
        // Big rows of a changed leaf left out of the ranges: the sparing is exercised.
        let covered = |r: i64| want.ranges.iter().any(|(a, b)| *a <= r && r <= *b);
        let changed = |l: &ModelLeaf| !old.iter().any(|o| o.0 == l.0 && o.1 == l.1);
        spared += usize::from(new.iter().filter(|l| changed(l)).flat_map(|l| l.4.iter()).any(|(r, _)| !covered(*r)));
    }
    assert!(spared > 300, "only {spared} cases spared a big row of a changed leaf");
}

#[test]
fn suspect_ranges_and_big_rows_in_a_merge() {
    let h = |b: u8| [b; 16];
    let old = state_of(
        &vec![(2, h(1), 1, 10, vec![(3, 30), (5, 50)]), (3, h(2), 11, 20, vec![(12, 120)]), (4, h(3), 21, 30, vec![])],
        &[(25, 27)],
    );
    // Page 2 rewritten (row 3 unchanged, row 5 edited), page 3 unchanged, page 4 freed and
    // its rows now on new page 9 with row 26 a big row whose hash was never recorded.
    let new = state_of(
        &vec![
            (2, h(9), 1, 10, vec![(3, 30), (5, 51)]),
            (3, h(2), 11, 20, vec![(12, 120)]),
            (9, h(4), 21, 30, vec![(26, 7)]),
        ],
        &[],
    );
    let c = diff(&old, &new);
    assert_eq!(c.changed_leaves, 2);
    assert_eq!(c.total_leaves, 3);
    assert_eq!(
        c.ranges,
        vec![(1, 2), (4, 10), (21, 30)],
        "row 3 spared, page 3 untouched, page 4/9 and the suspect range re-read"
    );
    assert_eq!(c, reference_diff(&old, &new));
    // A big row recorded with the same hash but inside a suspect range is re-read.
    let old = state_of(&vec![(2, h(1), 1, 10, vec![(3, 30)])], &[(3, 3)]);
    let new = state_of(&vec![(2, h(9), 1, 10, vec![(3, 30)])], &[]);
    assert_eq!(diff(&old, &new).ranges, vec![(1, 10)]);
}

#[test]
fn a_recorded_state_out_of_page_order_is_not_trusted() {
    let h = [7u8; 16];
    let mut s = PageState::default();
    s.push_leaf(5, h, 1, 2, &[]);
    s.push_leaf(3, h, 3, 4, &[(3, 1)]);
    let unsorted = s.encode("t");
    assert!(Recorded::parse(&unsorted, "t").is_none(), "pages out of order");
    s.sort();
    s.add_suspect(&[(9, 9), (1, 1)]);
    let ok = s.encode("t");
    assert_eq!(Recorded::parse(&ok, "t").map(|r| r.leaf_count()), Some(4), "suspects first, then pages in order");
    assert_eq!(PageState::decode(&ok, "t").as_ref(), Some(&s));
    assert!(Recorded::parse(&ok[..ok.len() - 1], "t").is_none(), "truncated");
    let mut dup = PageState::default();
    dup.push_leaf(3, h, 1, 2, &[]);
    dup.push_leaf(3, h, 3, 4, &[]);
    dup.sort();
    assert!(Recorded::parse(&dup.encode("t"), "t").is_none(), "a page twice");
}
