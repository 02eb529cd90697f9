//! Following a WAL-mode database's `-wal` file between syncs: which pages did the commits
//! since a sync's snapshot write? The follower reads the WAL's header and frames as they
//! are appended (<https://www.sqlite.org/fileformat2.html>, section 4) and keeps, per
//! committed transaction, the pages it wrote. A frame counts only as SQLite's recovery
//! would count it: its salts are the header's and the cumulative checksum (over the first
//! 8 bytes of each frame header and the page, in the byte order the magic names) continues
//! from the previous frame's; a transaction counts once its commit frame (non-zero database
//! size) does. Frames of a transaction that rolls back are never counted, and when a later
//! commit overwrites them, its checksums continue from the last commit read.
//!
//! It opens the `-wal` with a plain read-only descriptor per poll (SQLite holds no POSIX
//! lock on it, so closing ours drops none of SQLite's), only `stat`s the main file, and never
//! opens a SQLite connection: no read transaction, no lock, no checkpoint, nothing that could
//! delay Open WebUI's writer, its checkpoints or a WAL reset.
//!
//! Positions: every commit read gets a sequence number (`Mark`); so does the start of each
//! WAL generation. `changed_since(m)` names the pages of every commit after `m`, or `None`
//! when the follower cannot vouch that it read all of them ("may have missed something":
//! the caller then walks every page). `mark_at` turns a sync's snapshot (`SnapshotPos`,
//! from `sqlite3_snapshot_get`) into a mark, checking the commit's checksum against the
//! one SQLite recorded. What breaks continuity (each sets the floor below which no mark is
//! vouched for): the main file replaced (another inode) or gone; the `-wal` deleted,
//! re-created (another inode) or truncated (smaller than when last read: TRUNCATE
//! checkpoints, `journal_size_limit`); a header not understood; a WAL reset (new salts)
//! that is not exactly one reset of the generation read (salt-1 one more: a WAL made anew
//! has random salts; the checkpoint sequence is not used, as a connection that did not
//! recover the WAL writes its own count there), or after which the frames past the last one
//! read cannot be proven to end the old generation (the last commit frame read no longer
//! the same; the first frame past the old generation's valid ones already of the new
//! generation; the file ending there at a size that is not whole frames, as a truncation
//! to `journal_size_limit` leaves it); and a log grown past `MAX_LOGGED` pages. Rolled-back
//! frames later overwritten need no rule: they never count. A follower that was not running
//! (owsyncd restarted) is another instance and knows no earlier mark; rollback-journal mode
//! has no WAL and no snapshot position, so nothing is ever vouched for.

mod generation;

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use generation::{Generation, Header};

/// A position in the follower's log: everything committed up to here.
pub type Mark = u64;

/// Pages kept in the log at most; older commits are forgotten (marks before them lapse).
pub const MAX_LOGGED: usize = 1 << 22;

pub(super) const WAL_HEADER: u64 = 32;
pub(super) const FRAME_HEADER: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Where a read transaction's snapshot ends in the WAL, as SQLite's wal-index header has it
/// (`sqlite3_snapshot_get` copies that header: <https://www.sqlite.org/walformat.html>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPos {
    /// The WAL header's salt-1 and salt-2, as stored (big-endian bytes).
    pub salts: [u8; 8],
    /// The last frame the snapshot sees (0: none of this generation).
    pub mx_frame: u32,
    /// The checksum after that frame.
    pub cksum: (u32, u32),
}

impl SnapshotPos {
    /// From the 48 bytes of a `sqlite3_snapshot` (a copy of the wal-index header: native
    /// byte order but for the salts, which are the WAL header's bytes).
    pub fn from_wal_index_header(h: &[u8; 48]) -> SnapshotPos {
        let u = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let mut salts = [0u8; 8];
        salts.copy_from_slice(&h[32..40]);
        SnapshotPos { salts, mx_frame: u(16), cksum: (u(24), u(28)) }
    }
}

/// One committed transaction of the WAL.
#[derive(Debug)]
struct Commit {
    mark: Mark,
    salts: [u8; 8],
    /// Its commit frame (1-based) in its generation.
    end_frame: u32,
    cksum: (u32, u32),
    pages: Vec<u32>,
}

/// Why the follower last lost track (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    Restarted,
    MainReplaced,
    WalGone,
    WalRecreated,
    WalTruncated,
    HeaderNotUnderstood,
    UnprovenReset,
    LogFull,
}

/// The follower of one database's WAL (see the module doc).
pub struct WalFollower {
    /// Tells this follower's marks from another's (a restarted daemon's follower knows none).
    instance: u64,
    db: PathBuf,
    wal: PathBuf,
    db_id: Option<(u64, u64)>,
    wal_id: Option<(u64, u64)>,
    /// The generation being read; `None` while there is no (valid) WAL header.
    current: Option<Generation>,
    /// Mark of the start of the current generation, or of the WAL-less state.
    base: Mark,
    /// Generation starts still in the log: (salts, mark).
    bases: VecDeque<([u8; 8], Mark)>,
    log: VecDeque<Commit>,
    logged: usize,
    next: Mark,
    /// No mark below this is vouched for.
    floor: Mark,
    /// The `-wal`'s size when last read.
    last_size: u64,
    /// Why continuity was last broken.
    pub last_lost: Option<Lost>,
    /// Times continuity was broken.
    pub losses: u64,
}

impl WalFollower {
    /// A follower of the database at `db` (its WAL is `db` + `-wal`). It knows nothing yet:
    /// the first `poll` reads the WAL as it is, and no mark before that is vouched for.
    pub fn new(db: &Path) -> WalFollower {
        static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        WalFollower {
            instance: INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            db: db.to_path_buf(),
            wal: super::companion(db, "-wal"),
            db_id: None,
            wal_id: None,
            current: None,
            base: 1,
            bases: VecDeque::new(),
            log: VecDeque::new(),
            logged: 0,
            next: 2,
            floor: 1,
            last_size: 0,
            last_lost: Some(Lost::Restarted),
            losses: 0,
        }
    }

    /// Which follower a mark belongs to.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    pub fn db_path(&self) -> &Path {
        &self.db
    }

    /// The mark of everything read so far.
    pub fn head(&self) -> Mark {
        self.next - 1
    }

    fn alloc(&mut self) -> Mark {
        self.next += 1;
        self.next - 1
    }

    /// Continuity broken: no mark before now is vouched for.
    fn lose(&mut self, why: Lost) {
        tracing::debug!(wal = %self.wal.display(), ?why, "WAL follower lost track");
        self.log.clear();
        self.bases.clear();
        self.logged = 0;
        self.current = None;
        self.base = self.alloc();
        self.floor = self.base;
        self.last_lost = Some(why);
        self.losses += 1;
    }

    /// Reads what was appended to the WAL since the last poll.
    pub fn poll(&mut self) -> Result<(), WalError> {
        let path = self.wal.clone();
        let io = move |source| WalError::Io { path: path.clone(), source };
        match std::fs::metadata(&self.db) {
            Ok(m) => {
                let id = (m.dev(), m.ino());
                if self.db_id.is_some_and(|d| d != id) {
                    self.lose(Lost::MainReplaced);
                    self.wal_id = None;
                    self.last_size = 0;
                }
                self.db_id = Some(id);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.db_id.take().is_some() {
                    self.lose(Lost::MainReplaced);
                }
                return Ok(());
            }
            Err(e) => return Err(io(e)),
        }
        let file = match File::open(&self.wal) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.wal_gone();
                return Ok(());
            }
            Err(e) => return Err(io(e)),
        };
        let meta = file.metadata().map_err(&io)?;
        let id = (meta.dev(), meta.ino());
        if self.wal_id.is_some_and(|w| w != id) {
            self.lose(Lost::WalRecreated);
        }
        self.wal_id = Some(id);
        let size = meta.len();
        if size < self.last_size {
            self.lose(Lost::WalTruncated);
        }
        self.last_size = size;
        self.read(&file, size).map_err(io)
    }

    /// The `-wal` is not there: the last connection closed (after a checkpoint), or the
    /// database left WAL mode. What was committed since the last poll is not known.
    fn wal_gone(&mut self) {
        if self.current.is_some() || self.wal_id.is_some() {
            self.lose(Lost::WalGone);
        }
        self.wal_id = None;
        self.last_size = 0;
    }

    fn read(&mut self, file: &File, size: u64) -> std::io::Result<()> {
        let Some(hdr) = Header::read(file, size)? else {
            // No header (empty, being written) or one this code does not understand.
            if self.current.is_some() {
                self.lose(Lost::HeaderNotUnderstood);
            }
            return Ok(());
        };
        match self.current.take() {
            Some(g) if g.hdr.salts == hdr.salts => self.current = Some(g),
            Some(g) => {
                let proven = g.hdr.next_salt1() == hdr.salt1() && self.finish_old(file, size, g, &hdr)?;
                if !proven {
                    self.lose(Lost::UnprovenReset);
                }
                self.start(hdr);
            }
            // Nothing is logged (a first poll, or track was lost): follow from here.
            None => self.start_from_base(hdr),
        }
        self.read_frames(file, size)
    }

    /// A new generation after a reset (or after losing track): it starts at a new mark.
    fn start(&mut self, hdr: Header) {
        self.base = self.alloc();
        self.start_from_base(hdr);
    }

    /// A generation whose start is the current base (the WAL-less state it follows).
    fn start_from_base(&mut self, hdr: Header) {
        self.bases.push_back((hdr.salts, self.base));
        self.current = Some(Generation::new(hdr));
    }

    /// After a reset: reads what is left of the old generation past the last frame read,
    /// and tells whether that provably is all of it (see the module doc).
    fn finish_old(&mut self, file: &File, size: u64, mut g: Generation, new: &Header) -> std::io::Result<bool> {
        if !g.last_frame_intact(file)? {
            return Ok(false);
        }
        let end = g.read_commits(file, size, |c| self.push(c))?;
        Ok(match end {
            // The first frame past the old generation's end is still there and not of the
            // new generation: the old one ended before it.
            generation::End::Invalid { salts } => salts != new.salts,
            // The file ends there and is whole frames long: nothing was cut off it (a
            // truncation to a `journal_size_limit` leaves a size that is not, but for a
            // limit of exactly 32 + n * (page size + 24) bytes).
            generation::End::Eof => (size - WAL_HEADER).is_multiple_of(g.frame_len()),
        })
    }

    fn read_frames(&mut self, file: &File, size: u64) -> std::io::Result<()> {
        let Some(mut g) = self.current.take() else { return Ok(()) };
        g.read_commits(file, size, |c| self.push(c))?;
        self.current = Some(g);
        Ok(())
    }

    /// Logs one commit read.
    fn push(&mut self, c: generation::Read) {
        let mark = self.alloc();
        self.logged += c.pages.len();
        self.log.push_back(Commit { mark, salts: c.salts, end_frame: c.end_frame, cksum: c.cksum, pages: c.pages });
        while self.logged > MAX_LOGGED {
            let Some(old) = self.log.pop_front() else { break };
            self.logged -= old.pages.len();
            self.floor = self.floor.max(old.mark);
            self.last_lost = Some(Lost::LogFull);
        }
        while self.bases.len() > 1 && self.bases.get(1).is_some_and(|b| b.1 <= self.floor) {
            self.bases.pop_front();
        }
    }

    /// The mark of a sync's snapshot, after a `poll` that followed the snapshot's start;
    /// `None` when this follower cannot place it.
    pub fn mark_at(&self, pos: &SnapshotPos) -> Option<Mark> {
        let mark = if pos.mx_frame == 0 {
            // The start of a generation the follower read from its first frame. One whose
            // header is not written yet cannot be placed: between this snapshot and the
            // first header seen, a generation may have come and gone (written, then
            // truncated or deleted) without a trace in an empty or absent `-wal`.
            self.bases.iter().rev().find(|b| b.0 == pos.salts)?.1
        } else {
            let c = self.log.iter().rev().find(|c| c.salts == pos.salts && c.end_frame == pos.mx_frame)?;
            if c.cksum != pos.cksum {
                return None;
            }
            c.mark
        };
        (mark >= self.floor).then_some(mark)
    }

    /// The pages of every commit after `mark`, sorted, or `None` when the follower cannot
    /// vouch that it read them all.
    pub fn changed_since(&self, mark: Mark) -> Option<Vec<u32>> {
        if mark < self.floor || mark > self.head() {
            return None;
        }
        let start = self.log.partition_point(|c| c.mark <= mark);
        let mut pages: Vec<u32> = self.log.range(start..).flat_map(|c| c.pages.iter().copied()).collect();
        pages.sort_unstable();
        pages.dedup();
        Some(pages)
    }

    /// Forgets commits before `mark` (no sync will ask about an older mark); the commit at
    /// `mark` stays, so that a snapshot there can still be placed.
    pub fn forget_until(&mut self, mark: Mark) {
        while self.log.front().is_some_and(|c| c.mark < mark) {
            if let Some(c) = self.log.pop_front() {
                self.logged -= c.pages.len();
            }
        }
        self.floor = self.floor.max(mark.min(self.head()));
        while self.bases.len() > 1 && self.bases.get(1).is_some_and(|b| b.1 <= self.floor) {
            self.bases.pop_front();
        }
    }
}

/// Where the snapshot of `conn`'s open read transaction ends in the WAL; `None` outside a
/// read transaction, in rollback-journal mode, or on any error. Takes no lock: it copies
/// what the connection read when its transaction began.
pub fn snapshot_pos(conn: &rusqlite::Connection) -> Option<SnapshotPos> {
    use rusqlite::ffi;
    let mut snap: *mut ffi::sqlite3_snapshot = std::ptr::null_mut();
    // SAFETY: `handle()` is this open connection's, used on its thread; on success SQLite
    // allocates one `sqlite3_snapshot` into `snap`, which is freed below.
    let rc = unsafe { ffi::sqlite3_snapshot_get(conn.handle(), c"main".as_ptr(), &raw mut snap) };
    if rc != ffi::SQLITE_OK || snap.is_null() {
        return None;
    }
    // SAFETY: a non-null snapshot SQLite just allocated; copied, then freed once.
    let hidden = unsafe { (*snap).hidden };
    // SAFETY: as above; not used after this.
    unsafe { ffi::sqlite3_snapshot_free(snap) };
    Some(SnapshotPos::from_wal_index_header(&hidden))
}

#[cfg(test)]
mod tests;
