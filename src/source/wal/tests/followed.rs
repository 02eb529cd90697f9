//! A followed walk (only the pages the follower names, and the interior pages new to the
//! tree) makes the same page state, row count and tree as a full walk, over a seeded
//! random writer.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::super::{Mark, WalFollower, snapshot_pos};
use super::prop::step;
use super::setup;
use crate::source::Source;
use crate::source::pages::{Memo, Recorded, walk_followed, walk_noting};
use crate::source::walk::rows_followed;

#[test]
fn a_followed_walk_equals_a_full_walk() {
    let seed =
        std::env::var("OWSYNC_WAL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| rand::rng().random());
    let rounds: u64 = std::env::var("OWSYNC_WAL_STEPS").ok().and_then(|v| v.parse().ok()).unwrap_or(600) / 5;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (_d, p, mut c) = setup();
    let mut f = WalFollower::new(&p);
    let mut prev: Option<(Mark, Vec<u8>, Memo, i64)> = None;
    let (mut followed, mut read_followed, mut read_full, mut vouched) = (0, 0u64, 0u64, 0);
    for round in 0..rounds {
        for _ in 0..rng.random_range(1..6) {
            step(&mut rng, &mut c, &p);
        }
        let src = Source::open(&p).unwrap();
        src.conn.execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema").unwrap();
        let pos = snapshot_pos(&src.conn);
        f.poll().unwrap();
        let mark = pos.and_then(|pos| f.mark_at(&pos));
        let mut memo = Memo::default();
        let before = src.pagefile.borrow().direct + src.pagefile.borrow().via_sqlite;
        let full = walk_noting(&src, "t", true, Some(&mut memo)).unwrap().expect("a walk");
        let full_read = src.pagefile.borrow().direct + src.pagefile.borrow().via_sqlite - before;
        let mut next = (full.state.encode("x"), memo);
        if let Some((m, bytes, mut memo, rows)) = prev.take()
            && let Some(changed) = f.changed_since(m)
        {
            // No page of the table written: its row count is the last walk's
            // (`follow::vouched_rows`).
            if !changed.iter().any(|p| memo.notes(*p)) {
                assert_eq!(full.rows, rows, "seed {seed}, round {round}: vouched rows differ");
                vouched += 1;
            }
            let counted = rows_followed(&src, "t", &changed, &memo).unwrap().expect("rows followed");
            assert_eq!(counted, full.rows, "seed {seed}, round {round}: rows followed differ");
            let old = Recorded::parse(&bytes, "x").unwrap();
            let (w, read) = walk_followed(&src, "t", &old, &changed, &mut memo).unwrap().expect("a followed walk");
            assert_eq!(w.state, full.state, "seed {seed}, round {round}: followed state differs");
            assert_eq!(w.rows, full.rows, "seed {seed}, round {round}: followed rows differ");
            let full_memo = &next.1;
            assert_eq!(memo.interior, full_memo.interior, "seed {seed}, round {round}: followed tree differs");
            assert_eq!(memo.parent, full_memo.parent, "seed {seed}, round {round}: followed parents differ");
            assert_eq!(memo.cells, full_memo.cells, "seed {seed}, round {round}: followed leaves differ");
            assert_eq!((memo.root, memo.rows), (full_memo.root, full.rows), "seed {seed}, round {round}");
            followed += 1;
            read_followed += read;
            read_full += full_read;
            next = (w.state.encode("x"), memo);
        }
        src.conn.execute_batch("COMMIT").unwrap();
        prev = mark.map(|m| (m, next.0, next.1, full.rows));
    }
    eprintln!(
        "seed {seed}: {rounds} rounds, {followed} followed ({vouched} with no page of the table written), pages \
         read {read_followed} vs {read_full} walking all"
    );
    assert!(followed * 4 >= rounds, "seed {seed}: too few followed walks");
}
