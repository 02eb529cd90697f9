//! What a followed walk of one changed chat costs on the source side, step by step (issue 13
//! item 3; a measurement, not part of CI): on a copy of a bench database
//! (`OWSYNC_COSTS_DB`, e.g. `target/owsync-bench/cache/webui-u1000-c100-m6-s42.db`), run with
//! `cargo test --release --lib costs_of_a_followed_walk -- --ignored --nocapture`.

use std::time::Instant;

use crate::fixtures::{MutateOptions, OpKind, mutate};
use crate::source::Source;
use crate::source::pages::{Memo, Recorded, delta, diff_recorded, walk_followed, walk_noting};
use crate::source::wal::{WalFollower, snapshot_pos};

const TABLES: [&str; 2] = ["chat", "chat_message"];

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

#[test]
#[ignore = "a measurement: run by hand (see the module doc)"]
fn costs_of_a_followed_walk() {
    let Some(from) = std::env::var_os("OWSYNC_COSTS_DB") else { return };
    let dir = tempfile::tempdir_in(std::env::var_os("OWSYNC_COSTS_TMP").unwrap_or_else(|| "/tmp".into())).unwrap();
    let p = dir.path().join("webui.db");
    std::fs::copy(&from, &p).unwrap();
    let writer = rusqlite::Connection::open(&p).unwrap();
    writer.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())).unwrap();
    let one = |seed| {
        let o = MutateOptions { ops: 1, seed, only: Some(vec![OpKind::AppendTurn]), ..Default::default() };
        mutate(&p, &o).unwrap();
    };
    one(1);
    let mut f = WalFollower::new(&p);
    f.poll().unwrap();
    let src = Source::open(&p).unwrap();
    let mut prev = Vec::new();
    let txn = src.read_txn("x").unwrap();
    src.conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())).unwrap();
    let mark = f.mark_at(&snapshot_pos(&src.conn).unwrap()).unwrap();
    for t in TABLES {
        let mut memo = Memo::default();
        let t0 = Instant::now();
        let w = walk_noting(&src, t, true, Some(&mut memo)).unwrap().unwrap();
        eprintln!("{t}: full walk {:.1} ms, {} leaves", ms(t0), w.state.leaf_count());
        prev.push((w.state.encode(t), memo));
    }
    txn.end().unwrap();
    let mut mark = mark;
    for round in 0..5 {
        one(100 + round);
        f.poll().unwrap();
        let txn = src.read_txn("x").unwrap();
        src.conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())).unwrap();
        let next = f.mark_at(&snapshot_pos(&src.conn).unwrap()).unwrap();
        let changed = f.changed_since(mark).unwrap();
        for (t, (bytes, memo)) in TABLES.iter().zip(prev.iter_mut()) {
            let t0 = Instant::now();
            let parsed = Recorded::parse(bytes, t).unwrap();
            let parse = ms(t0);
            let t1 = Instant::now();
            let (w, read) = walk_followed(&src, t, &parsed, &changed, memo).unwrap().unwrap();
            let walk = ms(t1);
            let t2 = Instant::now();
            let c = diff_recorded(&parsed, &w.state);
            let diff = ms(t2);
            let t3 = Instant::now();
            let enc = w.state.encode(t);
            let encode = ms(t3);
            let t4 = Instant::now();
            let digest = xxhash_rust::xxh3::xxh3_128(&enc);
            let hash = ms(t4);
            let t5 = Instant::now();
            let d = delta::between(bytes, &enc, t).unwrap();
            let between = ms(t5);
            let t6 = Instant::now();
            let applied = delta::apply(bytes, &d, t).unwrap();
            let apply = ms(t6);
            assert_eq!(applied, enc);
            eprintln!(
                "round {round} {t}: {} pages named, {read} read; followed walk {walk:.2} ms, parse {parse:.2}, diff \
                 {diff:.2} ({} leaves changed of {}), encode {encode:.2} ({} KB), digest {hash:.2}, delta between \
                 {between:.2} ({} B), apply {apply:.2} ms; memo {} owners, {} cells",
                changed.len(),
                c.changed_leaves,
                c.total_leaves,
                enc.len() / 1000,
                d.len(),
                memo.owners.len(),
                memo.cells.len(),
            );
            std::hint::black_box(digest);
            *bytes = enc;
        }
        txn.end().unwrap();
        mark = next;
    }
    drop(writer);
}
