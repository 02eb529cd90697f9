//! A followed walk (only the pages the follower names, and interior pages) makes the same
//! page state and row count as a full walk, over a seeded random writer.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::super::{Mark, WalFollower, snapshot_pos};
use super::prop::step;
use super::setup;
use crate::source::Source;
use crate::source::pages::{Memo, Recorded, walk_followed, walk_noting};

#[test]
fn a_followed_walk_equals_a_full_walk() {
    let seed =
        std::env::var("OWSYNC_WAL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| rand::rng().random());
    let rounds: u64 = std::env::var("OWSYNC_WAL_STEPS").ok().and_then(|v| v.parse().ok()).unwrap_or(600) / 5;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (_d, p, mut c) = setup();
    let mut f = WalFollower::new(&p);
    let mut prev: Option<(Mark, Vec<u8>, Memo)> = None;
    let (mut followed, mut read_followed, mut read_full) = (0, 0u64, 0u64);
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
        if let Some((m, bytes, mut memo)) = prev.take()
            && let Some(changed) = f.changed_since(m)
        {
            let old = Recorded::parse(&bytes, "x").unwrap();
            let (w, read) = walk_followed(&src, "t", &old, &changed, &mut memo).unwrap().expect("a followed walk");
            assert_eq!(w.state, full.state, "seed {seed}, round {round}: followed state differs");
            assert_eq!(w.rows, full.rows, "seed {seed}, round {round}: followed rows differ");
            followed += 1;
            read_followed += read;
            read_full += full_read;
            next = (w.state.encode("x"), memo);
        }
        src.conn.execute_batch("COMMIT").unwrap();
        prev = mark.map(|m| (m, next.0, next.1));
    }
    eprintln!(
        "seed {seed}: {rounds} rounds, {followed} followed, pages read {read_followed} vs {read_full} walking all"
    );
    assert!(followed * 4 >= rounds, "seed {seed}: too few followed walks");
}
