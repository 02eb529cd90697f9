//! The follower against real SQLite writers: each way it can lose track, and that whenever
//! it vouches for an interval, every page whose bytes changed is named.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::{Lost, Mark, SnapshotPos, WalFollower, snapshot_pos};

mod costs;
mod followed;
mod prop;

pub(super) fn writer(p: &Path) -> Connection {
    let c = Connection::open(p).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; PRAGMA busy_timeout=5000;").unwrap();
    c
}

pub(super) fn setup() -> (tempfile::TempDir, PathBuf, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.db");
    let c = Connection::open(&p).unwrap();
    c.execute_batch("PRAGMA page_size=1024; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;").unwrap();
    c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, body TEXT)").unwrap();
    (dir, p, c)
}

/// Every page of the database as a read transaction sees it, and where that snapshot
/// ends in the WAL (`None` in rollback-journal mode).
pub(super) type Images = Vec<Vec<u8>>;

pub(super) fn snapshot(p: &Path) -> (Option<SnapshotPos>, Images) {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let c = Connection::open_with_flags(p, flags).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    c.execute_batch("BEGIN").unwrap();
    let mut s = c.prepare("SELECT data FROM sqlite_dbpage ORDER BY pgno").unwrap();
    let images: Images = s.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    drop(s);
    let pos = snapshot_pos(&c);
    c.execute_batch("COMMIT").unwrap();
    (pos, images)
}

/// Pages (1-based) of `new` that are not byte for byte the same in `old`.
pub(super) fn changed(old: &Images, new: &Images) -> Vec<u32> {
    (0..new.len()).filter(|&i| old.get(i) != new.get(i)).map(|i| i as u32 + 1).collect()
}

/// A base point: a snapshot, placed by the follower (polled after it).
fn base(f: &mut WalFollower, p: &Path) -> (Option<Mark>, Images) {
    let (pos, img) = snapshot(p);
    f.poll().unwrap();
    (pos.and_then(|pos| f.mark_at(&pos)), img)
}

/// Checks the follower against page images since `base`; `Some(pages)` when it vouched.
fn vouched(f: &mut WalFollower, p: &Path, base: &(Option<Mark>, Images)) -> Option<Vec<u32>> {
    let (_, img) = snapshot(p);
    f.poll().unwrap();
    let named = f.changed_since(base.0?)?;
    for pg in changed(&base.1, &img) {
        assert!(named.binary_search(&pg).is_ok(), "page {pg} changed but was not named: {named:?}");
    }
    Some(named)
}

fn insert(c: &Connection, from: i64, n: i64, size: usize) {
    c.execute(
        "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1 + ?2 - 1)
         INSERT OR REPLACE INTO t (id, k, body) SELECT i, 'k' || i, printf('%.*c', ?3, 'x') FROM n",
        rusqlite::params![from, n, size as i64],
    )
    .unwrap();
}

#[test]
fn commits_are_followed_and_rolled_back_frames_are_not_counted() {
    let (_d, p, c) = setup();
    insert(&c, 1, 50, 100);
    let mut f = WalFollower::new(&p);
    let b = base(&mut f, &p);
    assert!(b.0.is_some());
    insert(&c, 10, 5, 3000);
    let named = vouched(&mut f, &p, &b).expect("vouched");
    assert!(!named.is_empty());
    // A transaction that spills frames and rolls back; a later commit overwrites them.
    c.execute_batch("PRAGMA cache_size=2; BEGIN").unwrap();
    insert(&c, 100, 400, 500);
    f.poll().unwrap();
    let b2 = base(&mut f, &p);
    c.execute_batch("ROLLBACK; PRAGMA cache_size=-2000").unwrap();
    f.poll().unwrap();
    insert(&c, 1, 1, 10);
    vouched(&mut f, &p, &b2).expect("vouched across a rollback");
    vouched(&mut f, &p, &b).expect("vouched across a rollback");
    assert_eq!(f.losses, 0);
}

#[test]
fn a_reset_after_a_checkpoint_is_followed() {
    let (_d, p, c) = setup();
    insert(&c, 1, 200, 300);
    let mut f = WalFollower::new(&p);
    let b = base(&mut f, &p);
    c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).unwrap();
    // The next write restarts the WAL (new salts) and overwrites its first frames.
    insert(&c, 5, 2, 50);
    vouched(&mut f, &p, &b).expect("a reset seen after every frame was read");
    assert_eq!(f.losses, 0);
}

/// A connection that opened the WAL without recovering it writes its own checkpoint count
/// (from 0) into the header of the generation it starts: only salt-1 tells one reset.
#[test]
fn a_reset_by_another_connection_is_followed() {
    let (_d, p, c) = setup();
    insert(&c, 1, 200, 300);
    // A first reset by `c`: its header says checkpoint 1.
    c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).unwrap();
    insert(&c, 1, 200, 300);
    let other = writer(&p);
    let mut f = WalFollower::new(&p);
    let b = base(&mut f, &p);
    c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).unwrap();
    insert(&other, 5, 2, 50);
    vouched(&mut f, &p, &b).expect("a reset by another connection");
    assert_eq!(f.losses, 0);
}

#[test]
fn a_reset_over_frames_not_read_is_a_loss() {
    let (_d, p, c) = setup();
    insert(&c, 1, 20, 300);
    let mut f = WalFollower::new(&p);
    let b = base(&mut f, &p);
    // Unread commits, a checkpoint, then a reset that writes past the last frame read.
    insert(&c, 100, 50, 300);
    c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).unwrap();
    insert(&c, 200, 100, 300);
    assert_eq!(vouched(&mut f, &p, &b), None);
    assert_eq!(f.last_lost, Some(Lost::UnprovenReset));
}

#[test]
fn unread_frames_cut_off_by_journal_size_limit_are_a_loss() {
    let (_d, p, c) = setup();
    insert(&c, 1, 5, 100);
    let mut f = WalFollower::new(&p);
    let b = base(&mut f, &p);
    // The WAL grows well past what was read; after a checkpoint, the first commit of the
    // new generation truncates it to the limit (not a whole number of frames).
    insert(&c, 100, 300, 300);
    c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).unwrap();
    c.execute_batch("PRAGMA journal_size_limit=100000").unwrap();
    insert(&c, 1, 1, 10);
    assert_eq!(vouched(&mut f, &p, &b), None);
    assert_eq!(f.last_lost, Some(Lost::UnprovenReset));
}

#[test]
fn a_truncate_checkpoint_is_a_loss() {
    let (_d, p, c) = setup();
    insert(&c, 1, 20, 300);
    let mut f = WalFollower::new(&p);
    let b = base(&mut f, &p);
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    insert(&c, 1, 1, 10);
    assert_eq!(vouched(&mut f, &p, &b), None);
    assert_eq!(f.last_lost, Some(Lost::WalTruncated));
    // It follows on from there.
    let b = base(&mut f, &p);
    insert(&c, 2, 1, 10);
    vouched(&mut f, &p, &b).expect("vouched after the loss");
}

#[test]
fn the_last_connection_closing_is_a_loss() {
    let (_d, p, c) = setup();
    insert(&c, 1, 20, 300);
    let mut f = WalFollower::new(&p);
    let b = base(&mut f, &p);
    drop(c);
    assert!(!Path::new(&format!("{}-wal", p.display())).exists());
    f.poll().unwrap();
    assert_eq!(f.last_lost, Some(Lost::WalGone));
    let c = writer(&p);
    insert(&c, 1, 1, 10);
    assert_eq!(vouched(&mut f, &p, &b), None);
}

#[test]
fn the_main_file_replaced_is_a_loss() {
    let (d, p, c) = setup();
    insert(&c, 1, 20, 300);
    let mut f = WalFollower::new(&p);
    let b = base(&mut f, &p);
    let other = d.path().join("y.db");
    c.execute("VACUUM INTO ?1", [other.to_str().unwrap()]).unwrap();
    drop(c);
    std::fs::rename(&other, &p).unwrap();
    let c = writer(&p);
    insert(&c, 1, 1, 10);
    assert_eq!(vouched(&mut f, &p, &b), None);
    assert_eq!(f.last_lost, Some(Lost::MainReplaced));
}

#[test]
fn a_new_follower_places_no_older_mark_and_rollback_journal_mode_has_none() {
    let (_d, p, c) = setup();
    insert(&c, 1, 20, 300);
    let mut f = WalFollower::new(&p);
    let b = base(&mut f, &p);
    let g = WalFollower::new(&p);
    assert_ne!(f.instance(), g.instance());
    assert_eq!(g.changed_since(b.0.unwrap()), None);
    c.execute_batch("PRAGMA journal_mode=DELETE").unwrap();
    let (pos, _) = snapshot(&p);
    assert_eq!(pos, None);
    f.poll().unwrap();
    assert_eq!(f.changed_since(b.0.unwrap()), None);
}

/// The writer's RESTART and TRUNCATE checkpoints are never kept waiting by the follower.
#[test]
fn checkpoints_complete_while_the_follower_runs() {
    let (_d, p, c) = setup();
    c.execute_batch("PRAGMA busy_timeout=0").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s, q) = (stop.clone(), p.clone());
    let polls = std::thread::spawn(move || {
        let mut f = WalFollower::new(&q);
        let mut n = 0u64;
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            f.poll().unwrap();
            n += 1;
        }
        n
    });
    for round in 0..60 {
        insert(&c, round * 10, 40, 600);
        let mode = if round % 2 == 0 { "RESTART" } else { "TRUNCATE" };
        let (busy, log, done): (i64, i64, i64) = c
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap();
        assert_eq!(busy, 0, "{mode} checkpoint kept waiting");
        assert_eq!(log, done);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(polls.join().unwrap() > 0);
}
